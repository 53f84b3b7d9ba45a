"""Colours for cells, computed as RGBA arrays (no napari): categorical palettes with a
legend and continuous colormaps with contrast limits. Assigning such an array to a
Points layer's ``face_color`` is the fast path (no per-point colour parsing).

Categorical colours follow the scverse convention (scanpy, squidpy, napari-spatialdata):
``adata.uns['<key>_colors']`` lists one colour per category of ``obs[key]``, in the
categories' order (for a non-categorical column: its sorted values, as scanpy makes the
categories; for a boolean one: ``'False'``, ``'True'``). :func:`uns_colors` reads them
(what scanpy will use: a list at least as long as the categories, each a matplotlib
colour) and :func:`write_uns_colors` writes what was shown, so scanpy's and squidpy's
plots and ours agree whichever draws first."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "PALETTE",
    "categorical_colors",
    "colormap_lut",
    "continuous_colors",
    "scanpy_categories",
    "to_hex",
    "uns_colors",
    "write_uns_colors",
]

# 20 distinct colours (tab20-like ordering, dark first) then golden-angle hues
PALETTE = (
    np.array(
        [
            [31, 119, 180],
            [255, 127, 14],
            [44, 160, 44],
            [214, 39, 40],
            [148, 103, 189],
            [140, 86, 75],
            [227, 119, 194],
            [127, 127, 127],
            [188, 189, 34],
            [23, 190, 207],
            [174, 199, 232],
            [255, 187, 120],
            [152, 223, 138],
            [255, 152, 150],
            [197, 176, 213],
            [196, 156, 148],
            [247, 182, 210],
            [199, 199, 199],
            [219, 219, 141],
            [158, 218, 229],
        ],
        dtype=float,
    )
    / 255.0
)


def _palette(n: int) -> np.ndarray:
    if n <= len(PALETTE):
        return PALETTE[:n]
    import colorsys

    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9) for i in range(n - len(PALETTE))]
    return np.vstack([PALETTE, np.array(extra)])


def categorical_colors(
    values, categories=None, colors: dict | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """RGBA (n, 4) float32 for categorical ``values`` and the legend ``{category: rgba}``.

    ``colors`` may fix some categories' colours (e.g. atlas colours for regions).
    Missing values are grey. Works per category (codes), so a million cells cost one
    table lookup.
    """
    if isinstance(values, pd.Series):
        values = values.array
    if isinstance(values, pd.Categorical):
        cat = values
    else:
        cat = pd.Categorical(np.asarray(values, dtype=object))
    own = [str(c) for c in cat.categories]
    cats = [str(c) for c in categories] if categories is not None else sorted(set(own))
    pal = _palette(len(cats))
    legend = {}
    for i, c in enumerate(cats):
        rgb = colors.get(c) if colors and c in colors else pal[i]
        legend[c] = np.array([*np.asarray(rgb, float)[:3], 1.0], dtype=np.float32)
    table = np.vstack([np.array([0.6, 0.6, 0.6, 1.0], np.float32)] + [legend[c] for c in cats])
    # this column's category i -> row of ``table`` (0 = grey for missing / unknown)
    pos = {c: i + 1 for i, c in enumerate(cats)}
    remap = np.array([0] + [pos.get(c, 0) for c in own], dtype=np.int64)
    return table[remap[np.asarray(cat.codes, dtype=np.int64) + 1]], legend


def colormap_lut(name: str = "viridis", n: int = 256) -> np.ndarray:
    """(n, 4) float32 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return colormaps[name](np.linspace(0, 1, n)).astype(np.float32)


def continuous_colors(
    values, clim: tuple[float, float] | None = None, cmap: str = "viridis"
) -> tuple[np.ndarray, tuple[float, float]]:
    """RGBA (n, 4) float32 for numeric ``values`` through ``cmap`` between contrast
    limits ``clim`` (default: 1st and 99th percentile). NaN is grey."""
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    if clim is None:
        if finite.any():
            lo, hi = np.percentile(v[finite], [1, 99])
        else:
            lo, hi = 0.0, 1.0
        clim = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    lo, hi = clim
    lut = colormap_lut(cmap)
    idx = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    idx = np.where(finite, idx, 0) * (len(lut) - 1)
    out = lut[idx.astype(np.int32)]
    out[~finite] = (0.6, 0.6, 0.6, 1.0)
    return out, (float(lo), float(hi))


# ---------------------------------------------------------------------- scverse colours
def scanpy_categories(values) -> list[str]:
    """The categories, in order, that scanpy gives ``values`` (an obs column): a
    categorical's own (used or not), ``['False', 'True']`` for booleans, else the sorted
    distinct values (``pd.Categorical``'s order), as strings."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        return [str(c) for c in s.cat.categories]
    if s.dtype == bool:
        return [str(c) for c in pd.Categorical(s.astype(str)).categories]
    return [str(c) for c in pd.Categorical(s.dropna()).categories]


def to_hex(rgba) -> str:
    """``'#rrggbb'`` of an RGB(A) float colour (alpha dropped, as scanpy writes them)."""
    rgb = np.clip(np.asarray(rgba, dtype=float)[:3], 0.0, 1.0)
    return "#" + "".join(f"{int(round(v * 255)):02x}" for v in rgb)


def uns_colors(adata, key: str) -> dict[str, np.ndarray] | None:
    """``{category: rgba}`` from ``adata.uns['<key>_colors']``, or None when it is absent
    or scanpy would not use it (fewer colours than categories, or one that is not a
    colour)."""
    from matplotlib.colors import is_color_like, to_rgba

    raw = adata.uns.get(f"{key}_colors") if key in adata.obs.columns else None
    if raw is None or isinstance(raw, (str, bytes)):
        return None
    raw = list(np.ravel(np.asarray(raw, dtype=object)))
    cats = scanpy_categories(adata.obs[key])
    if len(raw) < len(cats) or not all(is_color_like(c) for c in raw[: len(cats)]):
        return None
    return {c: np.asarray(to_rgba(v), dtype=np.float32) for c, v in zip(cats, raw)}


def write_uns_colors(adata, key: str, legend: dict) -> bool:
    """Write ``adata.uns['<key>_colors']`` (hex, in :func:`scanpy_categories` order) from
    ``legend`` (``{category: rgb(a)}``); categories not in it keep their valid colour
    from ``uns`` or get the palette's. Returns True when ``uns`` changed (never for a view
    or a column that is not in ``obs``)."""
    if key not in adata.obs.columns or getattr(adata, "is_view", False):
        return False
    cats = scanpy_categories(adata.obs[key])
    if not cats:
        return False
    known = dict(uns_colors(adata, key) or {})
    known.update({str(k): v for k, v in legend.items()})
    _, full = categorical_colors(np.asarray(cats, dtype=object), categories=cats, colors=known)
    new = [to_hex(full[c]) for c in cats]
    old = adata.uns.get(f"{key}_colors")
    if old is not None and list(np.ravel(np.asarray(old, dtype=object)))[: len(new)] == new:
        return False
    adata.uns[f"{key}_colors"] = new
    return True
