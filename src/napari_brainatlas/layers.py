"""AnnData sections -> napari layer data tuples, and back (no napari import here).

A section is shown as a Points layer in micrometres: ``data`` rows are (y, x) =
``obsm['spatial'][:, ::-1]``, ``features`` hold ``cell_id`` plus every ``obs`` column
(categoricals kept), ``metadata`` holds the AnnData itself (``{'adata', 'section'}``) so
widgets and the writer can reach the expression matrix. Every cell is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .colors import categorical_colors, continuous_colors, uns_colors, write_uns_colors
from .io.backed import gene_values

__all__ = [
    "GREY",
    "HOVER_KEY",
    "atlas_layer_data",
    "cell_size_um",
    "color_values",
    "default_color_by",
    "label_colors_across",
    "label_columns",
    "layer_to_anndata",
    "numeric_columns",
    "present_values",
    "section_features",
    "section_layer_data",
    "tile_offsets",
]

#: metadata key listing feature columns added for hover only (not written back to obs)
HOVER_KEY = "hover_columns"
#: colour of cells that lack the chosen gene / value
GREY = np.array([0.6, 0.6, 0.6, 1.0], dtype=np.float32)
#: preferred label columns for the default colouring, in order
PREFERRED_LABELS = (
    "region",
    "celltype",
    "ClusterName",
    "Region",
    "cell_type",
    "celltype_main",
    "leiden",
    "louvain",
    "cluster",
    "region_fine",
)
MAX_CATEGORIES = 200
VISIUM_SPOT_UM = 55.0
#: smallest on-screen point size (px), so a zoomed-out section still shows its colours
MIN_CANVAS_PX = 4


def label_columns(adata: AnnData, max_categories: int = MAX_CATEGORIES) -> list[str]:
    """obs columns usable as labels: categorical/string/bool ones with few enough values
    (``section`` excluded, it is one value per section)."""
    out = []
    for c in adata.obs.columns:
        if c == "section":
            continue
        s = adata.obs[c]
        kind = s.dtype.kind if not isinstance(s.dtype, pd.CategoricalDtype) else "C"
        labelish = kind in ("C", "O", "b", "U", "S") or pd.api.types.is_string_dtype(s.dtype)
        if labelish and s.nunique(dropna=True) <= max_categories:
            out.append(str(c))
    return out


def numeric_columns(adata: AnnData) -> list[str]:
    """obs columns holding numbers (shown with a colormap)."""
    return [
        str(c)
        for c in adata.obs.columns
        if c != "section"
        and not isinstance(adata.obs[c].dtype, pd.CategoricalDtype)
        and adata.obs[c].dtype.kind in "iuf"
    ]


def default_color_by(adata: AnnData) -> str | None:
    """The obs column a new section is coloured by: a preferred label column, else the
    first label column, else ``None`` (total expression per cell)."""
    labels = label_columns(adata)
    for c in PREFERRED_LABELS:
        if c in labels:
            return c
    return labels[0] if labels else None


def cell_size_um(
    xy: np.ndarray, default: float = 10.0, sample: int = 20_000, seed: int = 0
) -> float:
    """Point size (um) for cells at ``xy`` ((n, 2), um): 0.8 x the median
    nearest-neighbour distance, so neighbouring cells nearly touch whatever the
    technology's spacing.

    Up to ``4 * sample`` cells: the exact median over a random ``sample`` of cells (a
    k-d tree of every cell). Above that, :func:`_nn_windowed` (the same distances, from
    a few hundred random windows of the section: ~20x faster at 1M cells)."""
    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        return default
    if len(xy) > 4 * sample:
        nn, w = _nn_windowed(xy, sample, seed)
    else:
        from scipy.spatial import cKDTree

        tree = cKDTree(xy, balanced_tree=False, compact_nodes=False)
        q = xy
        if len(xy) > sample:
            q = xy[np.random.default_rng(seed).choice(len(xy), sample, replace=False)]
        d, _ = tree.query(q, k=2)
        nn, w = d[:, 1], None
    ok = np.isfinite(nn) & (nn > 0)
    nn = nn[ok]
    if nn.size == 0:
        return default
    if w is None:
        return float(0.8 * np.median(nn))
    return float(0.8 * _weighted_median(nn, w[ok]))


def _weighted_median(v: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(v)
    c = np.cumsum(w[o])
    return float(v[o][np.searchsorted(c, 0.5 * c[-1])])


def _nn_windowed(
    xy: np.ndarray, sample: int, seed: int, per_window: int = 64, cap: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances (um) of cells in random grid windows, and their
    weights, such that the weighted distribution is that of a uniform sample of cells.

    The bounding box is cut into square windows holding ``per_window`` cells on
    average. ``sample / cap`` random cells pick the windows (so a window is picked in
    proportion to its cells, ``m`` times); in each picked window about ``cap`` of its
    ``c`` cells are queried (each with probability ``p = min(1, cap / c)``, weight
    ``m / (c p)``) against the cells of its 3 x 3 windows: the distance is exact
    whenever the neighbour is closer than a window side (a cell further from every
    other is rare and then gets a larger distance)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    y, x = xy[:, 0], xy[:, 1]  # per column: a reduction over axis 0 of (n, 2) is slow
    lo = np.array([y.min(), x.min()])
    ext = np.maximum(np.array([y.max(), x.max()]) - lo, 1e-12)
    side = float(np.sqrt(ext[0] * ext[1] * per_window / n)) or float(ext.max())
    shape = np.maximum(np.ceil(ext / side).astype(np.int64), 1) + 1
    inv = 1.0 / side
    flat = ((y - lo[0]) * inv).astype(np.int64) * shape[1] + ((x - lo[1]) * inv).astype(np.int64)
    counts = np.bincount(flat, minlength=int(shape[0] * shape[1]))
    rng = np.random.default_rng(seed)
    picks = flat[rng.choice(n, size=max(1, min(n, sample // cap)), replace=False)]
    times = np.bincount(picks, minlength=counts.size)  # m: picks per window
    chosen = times > 0
    grid = chosen.reshape(tuple(shape))
    near = grid.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(grid, dy, axis=0), dx, axis=1)
    cand = np.flatnonzero(near.ravel()[flat])
    inside = np.flatnonzero(chosen[flat])
    c = counts[flat[inside]]
    p = np.minimum(1.0, cap / c)
    keep = rng.random(len(inside)) < p
    query, c, p = inside[keep], c[keep], p[keep]
    tree = cKDTree(xy[cand], balanced_tree=False, compact_nodes=False)
    d, _ = tree.query(xy[query], k=2)
    return d[:, 1], times[flat[query]] / (c * p)


def _default_size(adata: AnnData, xy: np.ndarray) -> float:
    meta = adata.uns.get("napari_brainatlas", {})
    if isinstance(meta, dict) and str(meta.get("format", "")).startswith("visium"):
        return VISIUM_SPOT_UM
    return cell_size_um(xy)


def section_features(adata: AnnData) -> pd.DataFrame:
    """Per-cell features: ``cell_id`` then every obs column (categoricals kept)."""
    feats = adata.obs.reset_index(drop=True).copy()
    ids = adata.obs_names
    # str ids as they are (a unicode copy of a million ids costs ~0.5 s)
    feats.insert(
        0,
        "cell_id",
        ids.to_numpy()
        if ids.dtype == object and pd.api.types.infer_dtype(ids, skipna=False) == "string"
        else np.asarray(ids, dtype=str),
    )
    if "cell_id" in adata.obs.columns:  # obs had its own cell_id: ours wins, keep theirs
        feats = feats.loc[:, ~feats.columns.duplicated()]
    return feats


def _total_expression(adata: AnnData) -> np.ndarray:
    X = adata.X
    if X is None or getattr(adata, "isbacked", False):
        return np.zeros(adata.n_obs, dtype=np.float32)
    tot = X.sum(axis=1)
    return (
        np.asarray(tot, dtype=np.float32).ravel()
        if not sp.issparse(tot)
        else np.asarray(tot.todense(), dtype=np.float32).ravel()
    )


def _label_colors(s: pd.Series, categories, colors):
    """:func:`categorical_colors` of a column; for a categorical column the colours are
    found once per category and spread by the codes (the same colours, without turning
    a million values into strings)."""
    if not isinstance(s.dtype, pd.CategoricalDtype):
        return categorical_colors(s.to_numpy(), categories=categories, colors=colors)
    used = s.cat.remove_unused_categories()
    per_cat, legend = categorical_colors(
        np.asarray(used.cat.categories, dtype=object), categories=categories, colors=colors
    )
    table = np.vstack([GREY[None, :], per_cat]).astype(np.float32)
    return table[used.cat.codes.to_numpy().astype(np.int64) + 1], legend


def color_values(
    adata: AnnData,
    key: str | None,
    *,
    categories=None,
    clim=None,
    cmap: str = "viridis",
    colors: dict | None = None,
):
    """Colours for one section by ``key`` (an obs column or a gene; ``None``: total
    expression). Returns ``(kind, rgba, extra)``: kind ``'categorical'`` with the legend,
    ``'continuous'`` with the contrast limits, or ``'missing'`` (all grey, key absent).

    Labels follow the scverse convention (:mod:`napari_brainatlas.colors`): the colours
    in ``uns['<key>_colors']`` are used (``colors`` overrides single categories), and the
    colours shown are written back there in category order."""
    if key is None:
        rgba, lim = continuous_colors(np.log1p(_total_expression(adata)), clim=clim, cmap=cmap)
        return "continuous", rgba, lim
    if key in adata.obs.columns:
        s = adata.obs[key]
        if key in label_columns(adata) or s.dtype.kind not in "iuf":
            fixed = {**(uns_colors(adata, key) or {}), **(colors or {})}
            rgba, legend = _label_colors(s, categories, fixed or None)
            write_uns_colors(adata, key, legend)
            return "categorical", rgba, legend
        rgba, lim = continuous_colors(s.to_numpy(dtype=float), clim=clim, cmap=cmap)
        return "continuous", rgba, lim
    if key in adata.var_names:
        rgba, lim = continuous_colors(gene_values(adata, key), clim=clim, cmap=cmap)
        return "continuous", rgba, lim
    return "missing", np.tile(GREY, (adata.n_obs, 1)), None


def present_values(s: pd.Series) -> list[str]:
    """The distinct non-missing values of a column, as strings (for a categorical: its
    used categories, from the codes, without scanning a million values)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(s.cat.categories)))
        return [str(c) for c in np.asarray(s.cat.categories)[used]]
    return [str(v) for v in s.dropna().unique()]


def label_colors_across(
    sections: list[AnnData], key: str, *, colors: dict | None = None, write: bool = True
) -> tuple[list[np.ndarray | None], dict[str, np.ndarray]]:
    """One legend for label ``key`` over several sections, and each section's RGBA.

    The categories are the union of the sections' values, sorted. A category's colour is
    ``colors[c]`` if given, else the first section's ``uns['<key>_colors']`` colour for it
    (scanpy's, or one shown before), else the palette's. With ``write`` every section's
    ``uns['<key>_colors']`` is set to the legend's colours in its own category order.
    Sections without ``key`` get ``None``."""
    cats: set[str] = set()
    fixed: dict[str, np.ndarray] = {}
    for ad in sections:
        if key in ad.obs.columns:
            cats.update(present_values(ad.obs[key]))
            for c, v in (uns_colors(ad, key) or {}).items():
                fixed.setdefault(c, v)
    fixed.update(colors or {})
    categories = sorted(cats)
    legend: dict[str, np.ndarray] = {}
    out: list[np.ndarray | None] = []
    for ad in sections:
        if key not in ad.obs.columns:
            out.append(None)
            continue
        rgba, leg = _label_colors(ad.obs[key], categories, fixed or None)
        legend.update(leg)
        if write:
            write_uns_colors(ad, key, leg)
        out.append(rgba)
    if not legend and categories:
        _, legend = categorical_colors(np.asarray(categories, object), categories, fixed)
    return out, {c: legend[c] for c in categories if c in legend}


def section_layer_data(
    adata: AnnData,
    name: str | None = None,
    *,
    color_by: str | None = "default",
    translate=None,
    size: float | None = None,
) -> tuple:
    """A napari LayerDataTuple ``(data, kwargs, 'points')`` for one section.

    ``data`` is (n, 2) (y, x) in micrometres, every cell kept. ``color_by`` names an obs
    column or gene for the initial face colours (``'default'``: :func:`default_color_by`).
    """
    if name is None:
        meta = adata.uns.get("napari_brainatlas", {})
        if isinstance(meta, dict) and meta.get("section"):
            name = str(meta["section"])
        elif "section" in adata.obs.columns and adata.n_obs:
            name = str(adata.obs["section"].iloc[0])
        else:
            name = "section"
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    data = np.ascontiguousarray(xy[:, ::-1])
    if color_by == "default":
        color_by = default_color_by(adata)
    _, rgba, _ = color_values(adata, color_by)
    kwargs = {
        "name": str(name),
        "features": section_features(adata),
        "metadata": {"adata": adata, "section": str(name), "color_by": color_by, HOVER_KEY: []},
        "size": float(size) if size is not None else _default_size(adata, xy),
        "border_width": 0.0,
        "face_color": rgba,
        # the anti-aliased rim takes the border colour: keep it the face colour
        "border_color": rgba,
        "canvas_size_limits": (MIN_CANVAS_PX, 10000),
        "blending": "translucent_no_depth",
    }
    if translate is not None:
        kwargs["translate"] = tuple(float(t) for t in translate)
    return data, kwargs, "points"


def tile_offsets(
    sections: list[AnnData], ncols: int | None = None, gap: float = 0.1
) -> list[tuple[float, float]]:
    """(dy, dx) translations (um) that lay ``sections`` out on a grid, side by side,
    each section's bounding box moved to its own cell (``gap``: fraction of a cell)."""
    if not sections:
        return []
    boxes = [
        (np.min(s.obsm["spatial"][:, :2], 0), np.max(s.obsm["spatial"][:, :2], 0)) for s in sections
    ]
    w = max(float(hi[0] - lo[0]) for lo, hi in boxes) * (1 + gap)
    h = max(float(hi[1] - lo[1]) for lo, hi in boxes) * (1 + gap)
    n = len(sections)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    out = []
    for i, (lo, _) in enumerate(boxes):
        r, c = divmod(i, ncols)
        out.append((float(r * h - lo[1]), float(c * w - lo[0])))
    return out


def layer_to_anndata(data, meta: dict) -> AnnData:
    """The cells of a Points layer (``data`` + its layer attributes) as an AnnData.

    When the layer holds its section (``metadata['adata']``) the result is that section
    for the layer's cells (matched by ``cell_id``) with ``obs`` updated from the
    features (hover-only columns dropped) and ``obsm['spatial']`` from the point
    positions; otherwise a gene-less AnnData of the points and their features.
    """
    data = np.asarray(data, dtype=float)
    md = dict(meta.get("metadata") or {})
    feats = meta.get("features")
    feats = (
        pd.DataFrame(feats).reset_index(drop=True)
        if feats is not None
        else pd.DataFrame(index=range(len(data)))
    )
    hover = set(md.get(HOVER_KEY) or [])
    src = md.get("adata")
    cell_ids = feats["cell_id"].astype(str).to_numpy() if "cell_id" in feats.columns else None
    if isinstance(src, AnnData):
        if cell_ids is not None and len(cell_ids) == len(data):
            pos = src.obs_names.get_indexer(cell_ids)
            keep = pos >= 0
            ad = (
                src[pos[keep]].copy()
                if not getattr(src, "isbacked", False)
                else src[pos[keep]].to_memory()
            )
            feats, data = feats.loc[keep].reset_index(drop=True), data[keep]
        else:
            ad = src.copy() if not getattr(src, "isbacked", False) else src.to_memory()
            if ad.n_obs != len(data):
                raise ValueError("the layer's points no longer match its section's cells")
        obs_cols = [c for c in feats.columns if c != "cell_id" and c not in hover]
        obs = feats[obs_cols].copy()
        obs.index = ad.obs_names
        ad.obs = obs
    else:
        idx = pd.Index(cell_ids if cell_ids is not None else np.arange(len(data)).astype(str))
        obs = feats[[c for c in feats.columns if c != "cell_id" and c not in hover]].copy()
        obs.index = idx
        ad = AnnData(X=sp.csr_matrix((len(data), 0), dtype=np.float32), obs=obs)
    ad.obsm["spatial"] = np.ascontiguousarray(data[:, -2:][:, ::-1])
    name = meta.get("name") or md.get("section")
    info = dict(ad.uns.get("napari_brainatlas", {}) or {})
    info.setdefault("section", str(name))
    info["coords_from"] = "napari Points layer (um)"
    info["pixel_size_um"] = 1.0
    info.setdefault("format", "h5ad")
    ad.uns["napari_brainatlas"] = info
    return ad


def atlas_layer_data(atlas=None, name: str = "demo atlas") -> tuple:
    """A napari LayerDataTuple ``(annotation, kwargs, 'labels')`` for an atlas volume in
    micrometres, each structure in its atlas colour."""
    if atlas is None:
        from .atlas import make_demo_atlas

        atlas = make_demo_atlas()
    ids = np.unique(atlas.annotation)
    lut = atlas.ontology.lut(ids[ids != 0])
    colormap = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    colormap.update({int(k): np.asarray(v, np.float32) for k, v in lut.items()})
    res = atlas.resolution_um
    kwargs = {
        "name": name,
        "scale": (res, res, res),
        "colormap": colormap,
        "opacity": 0.6,
        "metadata": {"atlas": atlas},
    }
    return atlas.annotation, kwargs, "labels"
