"""Quality control of a registration that can fail visibly (plain Python, no Qt).

A fit always "matches" when cells are coloured by the atlas region they land in. These
functions compare what the section says about itself with where the fit put it:

* :func:`label_agreement` - the section's own labels (any obs column: a ``region`` or
  ``tissue`` column, cell types, clusters) against the CCF region each cell landed in.
  When the labels are CCF acronyms a cell *agrees* when its label and the landed region
  are the same structure at the chosen ontology level (one an ancestor of the other);
  otherwise (cell types, clusters, the authors' own region names) the labels are shown
  side by side with the regions and a cell agrees when it landed in the region most
  cells of its label landed in (consistency).
* :func:`level_ids`, :func:`outline_image` - structure ids at an ontology level (major
  divisions by default, not the finest level) and their outlines.
* :func:`section_label_image`, :func:`checkerboard` - the section's own labels painted
  on the template grid, interleaved tile by tile with the template: a shifted fit breaks
  every boundary at the tile edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "AGREE",
    "DISAGREE",
    "MAJOR",
    "NO_LABEL",
    "SECTION_TISSUE_ID",
    "Agreement",
    "checkerboard",
    "compare_columns",
    "default_compare_column",
    "label_agreement",
    "level_choices",
    "level_ids",
    "outline_image",
    "own_label_ids",
    "section_label_image",
]

#: the default comparison / outline level
MAJOR = "major divisions"
FINEST = "finest"
#: per-cell agreement codes
AGREE, DISAGREE, NO_LABEL = 1, 0, -1
#: the label id the checkerboard uses for the section's tissue when its labels are not
#: atlas structures
SECTION_TISSUE_ID = 999_999_999
#: columns never offered for comparison (one value per section, or the fit's own output)
_NOT_LABELS = {"section", "ccf_acronym", "ccf_id", "cell_id"}
#: a column is read as CCF acronyms when at least this fraction of its labelled cells
#: name an atlas structure
CCF_FRACTION = 0.5
#: preferred comparison columns, in order
_PREFERRED = ("region", "tissue", "Region", "ccf_region", "structure", "region_fine")


# ---------------------------------------------------------------------- levels
def _major_ids(ontology) -> dict[int, int]:
    """{structure id: its major division id} (itself when under none)."""
    from ..register import CCF_MAJOR_DIVISIONS

    cache = ontology.__dict__.setdefault("_napari_brainatlas_major", {})
    if not cache:
        majors = set()
        for acr in CCF_MAJOR_DIVISIONS:
            try:
                majors.add(ontology.id_of(acr))
            except Exception:  # noqa: BLE001 - not in this ontology
                continue
        for sid in ontology.ids:
            path = ontology.path(int(sid))
            hit = next((p for p in reversed(path) if p in majors), int(sid))
            cache[int(sid)] = int(hit)
    return cache


def level_choices(ontology) -> list[str]:
    """What :func:`level_ids` accepts, coarse to fine: major divisions, depth 1..max,
    finest."""
    depth = max((ontology.depth(int(s)) for s in ontology.ids), default=0)
    return [MAJOR] + [f"depth {d}" for d in range(1, depth + 1)] + [FINEST]


def _level_fn(ontology, level: str):
    if level == FINEST or level is None:
        return lambda s: int(s)
    if level == MAJOR:
        table = _major_ids(ontology)
        return lambda s: table.get(int(s), int(s)) if s else 0
    try:
        d = int(str(level).split()[-1])
    except ValueError:
        raise ValueError(f"unknown ontology level {level!r}") from None
    return lambda s: ontology.ancestor_at_depth(int(s), d) if s else 0


def level_ids(ontology, ids, level: str = MAJOR) -> np.ndarray:
    """Structure ids (any shape) mapped to their structure at ``level`` (0 stays 0; a
    structure shallower than the level stays itself)."""
    ids = np.asarray(ids)
    uniq, inv = np.unique(ids, return_inverse=True)
    fn = _level_fn(ontology, level)
    out = np.array([fn(u) if u in ontology or u == 0 else int(u) for u in uniq], dtype=np.int64)
    return out[inv].reshape(ids.shape)


def outline_image(labels: np.ndarray, ontology=None, level: str = MAJOR) -> np.ndarray:
    """1 where a pixel's structure (at ``level``) differs from its right or lower
    neighbour's: the outlines of the regions at that level."""
    lab = level_ids(ontology, labels, level) if ontology is not None else np.asarray(labels)
    b = np.zeros(lab.shape, dtype=np.uint8)
    b[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    b[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return b


# ---------------------------------------------------------------------- columns
def compare_columns(adata, max_categories: int = 500) -> list[str]:
    """obs columns a user can compare with the atlas: text / categorical columns with
    at most ``max_categories`` values (preferred names first)."""
    out = []
    for c in adata.obs.columns:
        if str(c) in _NOT_LABELS or str(c).startswith("ccf_") and not str(c).endswith("_true"):
            continue
        s = adata.obs[c]
        kind = "C" if isinstance(s.dtype, pd.CategoricalDtype) else s.dtype.kind
        if kind in ("C", "O", "U", "S", "b") or pd.api.types.is_string_dtype(s.dtype):
            if 1 <= s.nunique(dropna=True) <= max_categories:
                out.append(str(c))
    first = [c for c in _PREFERRED if c in out]
    return first + [c for c in out if c not in first]


def own_label_ids(values, ontology) -> tuple[np.ndarray, float]:
    """(ids, fraction): the atlas structure id each label names (0 when it names none;
    exact acronyms first, then case-insensitive) and the fraction of labelled cells whose
    label named a structure."""
    vals = np.asarray(values, dtype=object).astype(str)
    uniq, inv = np.unique(vals, return_inverse=True)
    lower = {
        str(a).lower(): int(i) for i, a in zip(ontology.table["id"], ontology.table["acronym"])
    }
    ids = np.zeros(len(uniq), dtype=np.int64)
    for k, v in enumerate(uniq):
        try:
            ids[k] = ontology.id_of(v)
        except Exception:  # noqa: BLE001 - not an exact acronym
            ids[k] = lower.get(v.lower(), 0)
    labelled = np.array([_is_label(v) for v in uniq])
    n_lab = np.bincount(inv.ravel(), minlength=len(uniq))
    tot = float(n_lab[labelled].sum())
    frac = float(n_lab[labelled & (ids > 0)].sum() / tot) if tot else 0.0
    return ids[inv.ravel()], frac


def _is_label(v: str) -> bool:
    return v.strip().lower() not in ("", "nan", "none", "na", "unknown", "unassigned", "excluded")


def default_compare_column(adata, ontology=None) -> str | None:
    """The column compared by default: the first preferred / CCF-acronym column, else
    the first text column, else None."""
    cols = compare_columns(adata)
    if not cols:
        return None
    if ontology is not None:
        for c in cols:
            if own_label_ids(adata.obs[c].to_numpy(), ontology)[1] >= CCF_FRACTION:
                return c
    return cols[0]


# ---------------------------------------------------------------------- agreement
@dataclass
class Agreement:
    """Own labels against landed regions, per cell and per label.

    mode : "ccf" (the labels are atlas acronyms, compared at ``level``) or "consistency"
    (any other labels: a cell agrees when it landed where most of its label landed).
    own : (n,) label strings; landed_ids : (n,) finest structure id under each cell
    (0 outside the brain); landed : (n,) acronym of the landed structure at ``level``
    ("outside" for 0); status : (n,) AGREE / DISAGREE / NO_LABEL. table : one row per
    label (``label``, ``cells``, ``agree`` fraction, ``landed mostly in``), most cells
    first.
    """

    column: str
    mode: str
    level: str
    own: np.ndarray
    landed_ids: np.ndarray
    landed: np.ndarray
    status: np.ndarray
    table: pd.DataFrame = field(repr=False)

    @property
    def overall(self) -> float:
        """Fraction of the labelled cells that agree (nan without labelled cells)."""
        ok = self.status >= 0
        return float(np.mean(self.status[ok] == AGREE)) if ok.any() else float("nan")

    @property
    def n_labelled(self) -> int:
        return int(np.sum(self.status >= 0))

    def worst(self, min_cells: int = 10) -> pd.DataFrame:
        """Labels with at least ``min_cells`` cells, lowest agreement first."""
        t = self.table[self.table["cells"] >= min_cells]
        return t.sort_values("agree", kind="stable")

    def summary(self) -> str:
        """One line: "own labels 'region' agree with the landed regions for 83% of ..."."""
        what = (
            f"agree with the landed regions ({self.level})"
            if self.mode == "ccf"
            else f"land in their label's main region ({self.level})"
        )
        return (
            f"own labels {self.column!r}: {100 * self.overall:.0f}% of {self.n_labelled} "
            f"labelled cells {what}"
        )

    def hover(self) -> dict[str, np.ndarray]:
        """Feature columns for the cells in atlas space (hover text)."""
        word = np.array(["no label", "disagree", "agree"], dtype=object)[self.status + 1]
        return {
            self.column: self.own,
            "landed region": self.landed,
            "agreement": word,
        }


def _related(ontology, a: int, b: int) -> bool:
    """One of the two structures is the other or its ancestor."""
    if a == b:
        return True
    if not a or not b or a not in ontology or b not in ontology:
        return False
    return a in ontology.path(b) or b in ontology.path(a)


def label_agreement(
    own_values,
    landed_ids,
    ontology,
    *,
    column: str = "labels",
    level: str = MAJOR,
    mode: str | None = None,
) -> Agreement:
    """Compare each cell's own label with the structure it landed in (see the module
    docstring). ``mode`` None: "ccf" when most labels name atlas structures, else
    "consistency"."""
    own = np.asarray(own_values, dtype=object).astype(str)
    landed_ids = np.asarray(landed_ids, dtype=np.int64).ravel()
    if len(own) != len(landed_ids):
        raise ValueError("one own label and one landed structure per cell")
    labelled = np.array([_is_label(v) for v in own]) if len(own) else np.zeros(0, bool)
    own_ids, frac = own_label_ids(own, ontology)
    if mode is None:
        mode = "ccf" if frac >= CCF_FRACTION else "consistency"
    landed_lvl = level_ids(ontology, landed_ids, level)
    landed_acr = np.array(
        [ontology.acronym(int(i)) if i else "outside" for i in landed_lvl], dtype=object
    )
    status = np.full(len(own), NO_LABEL, dtype=np.int8)
    if mode == "ccf":
        own_lvl = level_ids(ontology, own_ids, level)
        ok = labelled & (own_ids > 0)
        pairs = {}
        for a, b in zip(own_lvl[ok], landed_lvl[ok]):
            key = (int(a), int(b))
            if key not in pairs:
                pairs[key] = _related(ontology, *key)
        hit = np.array([pairs[(int(a), int(b))] for a, b in zip(own_lvl[ok], landed_lvl[ok])])
        status[ok] = np.where(hit, AGREE, DISAGREE) if len(hit) else status[ok]
    else:
        ok = labelled
        main = {}
        for lab in np.unique(own[ok]):
            sel = ok & (own == lab)
            inside = landed_lvl[sel]
            inside = inside[inside > 0]
            main[lab] = int(pd.Series(inside).mode().iloc[0]) if len(inside) else -1
        tgt = np.array([main.get(v, -1) for v in own])
        status[ok] = np.where(landed_lvl[ok] == tgt[ok], AGREE, DISAGREE)
    table = _table(own, status, landed_acr)
    return Agreement(column, mode, level, own, landed_ids, landed_acr, status, table)


def _table(own, status, landed_acr) -> pd.DataFrame:
    ok = status >= 0
    rows = []
    for lab in pd.unique(own[ok]):
        sel = ok & (own == lab)
        where = pd.Series(landed_acr[sel]).value_counts()
        rows.append(
            {
                "label": str(lab),
                "cells": int(sel.sum()),
                "agree": float(np.mean(status[sel] == AGREE)),
                "landed mostly in": f"{where.index[0]} ({100 * where.iloc[0] / sel.sum():.0f}%)",
            }
        )
    t = pd.DataFrame(rows, columns=["label", "cells", "agree", "landed mostly in"])
    return t.sort_values(["cells", "label"], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


# ---------------------------------------------------------------------- checkerboard
def section_label_image(
    mapped_xy: np.ndarray,
    cell_ids: np.ndarray,
    shape: tuple[int, int],
    resolution_um: float,
    radius_um: float | None = None,
) -> np.ndarray:
    """The section's cells (``mapped_xy``: (n, 2) atlas-slice um) painted on the
    template grid (``shape`` pixels of ``resolution_um``): each pixel takes the id of
    its nearest cell when one lies within ``radius_um`` (default 1.5x the cells'
    typical spacing), else 0."""
    from scipy.spatial import cKDTree

    from .register_checks import nn_spacing_um

    H, W = int(shape[0]), int(shape[1])
    out = np.zeros((H, W), dtype=np.int64)
    xy = np.asarray(mapped_xy, float)
    ids = np.asarray(cell_ids, dtype=np.int64)
    keep = np.isfinite(xy).all(axis=1) & (ids != 0)
    xy, ids = xy[keep], ids[keep]
    if len(xy) == 0:
        return out
    r = radius_um if radius_um else 1.5 * nn_spacing_um(xy)
    r = max(float(r) if np.isfinite(r) else resolution_um, resolution_um)
    lo = np.floor(np.clip(xy.min(0) - r, 0, None) / resolution_um).astype(int)
    hi = np.ceil((xy.max(0) + r) / resolution_um).astype(int)
    c0, r0 = int(lo[0]), int(lo[1])
    c1, r1 = min(int(hi[0]), W), min(int(hi[1]), H)
    if c1 <= c0 or r1 <= r0:
        return out
    rr, cc = np.mgrid[r0:r1, c0:c1]
    centres = np.column_stack([(cc.ravel() + 0.5), (rr.ravel() + 0.5)]) * resolution_um
    d, j = cKDTree(xy).query(centres, k=1, distance_upper_bound=r)
    hit = np.isfinite(d)
    vals = np.zeros(len(centres), dtype=np.int64)
    vals[hit] = ids[j[hit]]
    out[r0:r1, c0:c1] = vals.reshape(rr.shape)
    return out


def checkerboard(first: np.ndarray, second: np.ndarray, tile: int) -> np.ndarray:
    """``first`` on the even tiles and ``second`` on the odd ones (``tile`` pixels)."""
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape:
        raise ValueError("the two images of a checkerboard need the same shape")
    t = max(int(tile), 1)
    r = np.arange(a.shape[0])[:, None] // t
    c = np.arange(a.shape[1])[None, :] // t
    return np.where((r + c) % 2 == 0, a, b)
