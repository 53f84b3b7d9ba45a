"""CCF structure labels for query sections, transferred from registered reference sections.

A registered reference section carries ``obs['ccf_id']`` (or ``obs['ccf_acronym']``);
with a trained FuseMap over the reference and the queries mapped onto it
(:func:`~napari_brainatlas.annotate.map_query`), both sides hold the tissue embedding
``obsm['X_fusemap_tissue']`` (z_T). :func:`transfer_ccf_labels` reads the reference
cells' structures at a chosen ontology level (:mod:`napari_brainatlas.register.ccf_levels`:
major division by default; "fine", "layer", "field", "nucleus", "subdivision" or an
ontology depth), trains FuseMap's label classifier (:class:`.MLPLabelClassifier`,
class-balanced, on z_T; given the query mapping as ``model``, its probabilities are
averaged over the panel views of :mod:`.panel_views`) and writes, into copies of the queries, for each level ``L``
(``division``, ``fine``, ``depth6``...):

* ``obs['ccf_<L>_transfer']`` (categorical): the label, or ``"unassigned"`` where the
  certainty is under ``min_confidence``, the cell has fewer than ``min_counts`` counts or
  no embedding;
* ``obs['ccf_<L>_transfer_uncertainty']`` (float32 in [0, 1], never NaN): ``1 - max p``
  of the classifier (after the optional spatial smoothing: ``1 - the winning
  certainty-weighted vote share`` of the ``smooth_k`` nearest cells, as
  :func:`.transfer_labels` does for regions); 1 for cells with too few counts or no
  embedding;
* ``uns['ccf_label_transfer'][L]``: what was done (level, atlas, thresholds, share of
  cells assigned, reference cells, held-out accuracy of the classifier).

These follow the ``'<label>_transfer'`` convention with ``<label> = ccf_<L>``, the
column :func:`reference_level_labels` derives on the reference.

For the registration engine, :func:`plane_search_inputs` turns a transferred column into
the per-cell major-division codes (-1 = ignored: unassigned, or above / outside every
division) and weights (certainty, 0 where ignored) of the label-guided plane search;
the column itself can be given as ``region_key`` to ``register_section`` when it holds
division-level labels ("unassigned" is ignored there). :func:`estimate_position` gives a
coarse AP (coronal) or ML (sagittal) start from the reference's CCF coordinates of the
query cells' nearest reference cells in z_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..fusemap import TISSUE_KEY
from ..models import coerce_fields, resolve_settings
from ..register.ccf_levels import ccf_level_labels, level_divisions, level_name, parse_level
from .classifier import MLPLabelClassifier
from .smoothing import smooth_labels

__all__ = [
    "UNASSIGNED",
    "CCFTransferSettings",
    "ccf_transfer_key",
    "estimate_position",
    "plane_search_inputs",
    "reference_level_labels",
    "transfer_ccf_labels",
]

UNASSIGNED = "unassigned"


def ccf_transfer_key(level="division") -> str:
    """The obs column a transfer at ``level`` writes: ``ccf_<level>_transfer``."""
    return f"ccf_{level_name(level)}_transfer"


def _as_list(s) -> list[AnnData]:
    if isinstance(s, AnnData):
        return [s]
    s = list(s)
    if not s or not all(isinstance(a, AnnData) for a in s):
        raise BrainAtlasInputError("give one or more AnnData sections")
    return s


def reference_level_labels(adata: AnnData, atlas, level="division") -> np.ndarray:
    """Labels at ``level`` of a registered section's cells, from ``obs['ccf_id']`` (or
    ``obs['ccf_acronym']``); ``""`` outside the brain / outside every division."""
    if "ccf_id" in adata.obs:
        ids = pd.to_numeric(adata.obs["ccf_id"], errors="coerce").fillna(0).to_numpy()
    elif "ccf_acronym" in adata.obs:
        by = atlas.ontology._by_acronym
        ids = np.array([by.get(str(a), 0) for a in adata.obs["ccf_acronym"].astype(str)])
    else:
        raise BrainAtlasInputError(
            "the reference sections must be registered: they need obs['ccf_id'] or "
            "obs['ccf_acronym']"
        )
    return ccf_level_labels(atlas, ids.astype(np.int64), level)


def _embedding(a: AnnData, key: str, what: str) -> np.ndarray:
    if key not in a.obsm:
        raise BrainAtlasInputError(
            f"the {what} sections need obsm['{key}']: embed the reference with FuseMap "
            "and map the queries onto it first"
        )
    return np.asarray(a.obsm[key], np.float32)


def _total_counts(a: AnnData) -> np.ndarray:
    X = a.layers["counts"] if "counts" in a.layers else a.X
    if X is None:
        return np.full(a.n_obs, np.inf)
    return np.asarray(X.sum(1)).ravel().astype(float)


def _level_rows(refs, atlas, lv, embedding):
    """Stacked reference embeddings, level labels and the mask of usable rows."""
    Z, y, ok = [], [], []
    for a in refs:
        z = _embedding(a, embedding, "reference")
        lab = reference_level_labels(a, atlas, lv)
        Z.append(z)
        y.append(lab)
        ok.append(np.isfinite(z).all(1) & (lab != ""))
    Z, y, ok = np.concatenate(Z), np.concatenate(y), np.concatenate(ok)
    if not ok.any():
        raise BrainAtlasInputError("no reference cell lies in a labelled CCF structure")
    return Z, y, ok


def _fitter(kw, cancel):
    """``fit(Z, y, Zq) -> (classifier, p)`` of the level classifier (for the panel views)."""

    def fit(Z, y, Zq):
        clf = MLPLabelClassifier(**kw).fit(Z, y, cancel=cancel)
        return clf, (clf.predict_proba(Zq) if len(Zq) else None)

    return fit


def _probabilities(clf, qry, embedding, views, fit, level_rows):
    """Per query section (class probabilities of its cells with an embedding, mask of
    those cells): the level classifier on the query embedding, or with ``views`` the
    mean over the panel views (:mod:`.panel_views`)."""
    Zq = [_embedding(q, embedding, "query") for q in qry]
    oks = [np.isfinite(z).all(1) for z in Zq]
    if views is None:
        return [(clf.predict_proba(z[ok]) if ok.any() else None, ok) for z, ok in zip(Zq, oks)]
    from .panel_views import panel_probabilities

    Zr, yr, okr = level_rows
    classes, p = panel_probabilities(
        views,
        fit,
        Zr[okr],
        yr[okr],
        okr,
        np.concatenate(Zq),
        np.concatenate(oks),
        [q.n_obs for q in qry],
        tissue=embedding == TISSUE_KEY,
    )
    col = {str(c): i for i, c in enumerate(classes)}
    order = [col[str(c)] for c in clf.classes_]  # the classifier's class order
    out, o = [], 0
    for ok in oks:
        n = int(ok.sum())
        out.append((p[o : o + n][:, order] if n else None, ok))
        o += n
    return out


def _predict(clf, q: AnnData, proba, ok, smooth_k):
    """(labels, uncertainty) of one query section (unthresholded) from the class
    probabilities ``proba`` of its cells ``ok``."""
    lab = np.full(q.n_obs, UNASSIGNED, dtype=object)
    unc = np.ones(q.n_obs, np.float32)
    if ok.any():
        lab[ok] = clf.classes_[proba.argmax(1)]
        unc[ok] = 1.0 - proba.max(1)
        if smooth_k > 1 and ok.sum() > 1 and "spatial" in q.obsm:
            xy = np.asarray(q.obsm["spatial"], float)[ok, :2]
            ls, us = smooth_labels(xy, lab[ok].astype(str), k=smooth_k, weights=1.0 - unc[ok])
            lab[ok], unc[ok] = ls, us
    return lab, np.clip(np.nan_to_num(unc, nan=1.0), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class CCFTransferSettings:
    """Options of :func:`transfer_ccf_labels` (the defaults are its defaults).

    Attributes
    ----------
    embedding : obsm key the classifier reads (``X_fusemap_tissue``, z_T).
    min_confidence : cells whose certainty ``1 - uncertainty`` is below this are
        "unassigned" (0.5).
    min_counts : cells with fewer total counts are "unassigned" (uncertainty 1; 10).
    smooth_k : spatial vote of the ``smooth_k`` nearest cells, weighted by certainty,
        before the threshold (30; 0: no smoothing, the classifier's own ``1 - max p``).
    max_epochs : the MLP's epochs at most (200).
    views : "panels" (default; used when :func:`transfer_ccf_labels` is given the query
        mapping or joint FuseMap as ``model``): the classifier's probabilities averaged
        over the panel views (:mod:`~napari_brainatlas.annotate.panel_views`: the
        reference read through each query's encoder, the query through each reference
        encoder); "embedding": the embedding alone. Dev half of the from-reference
        benchmark (issue 22; 20 queries, small model): cells with the right division
        41 % -> 53 %, right fine structure 8 % -> 11 % ('unassigned' counted wrong).
    """

    embedding: str = TISSUE_KEY
    min_confidence: float = 0.5
    min_counts: float = 10.0
    smooth_k: int = 30
    max_epochs: int = 200
    views: str = "panels"

    def __post_init__(self):
        coerce_fields(
            self,
            {
                "embedding": str,
                "min_confidence": float,
                "min_counts": float,
                "smooth_k": int,
                "max_epochs": int,
                "views": str,
            },
        )
        if not 0.0 <= self.min_confidence <= 1.0:
            raise BrainAtlasInputError(
                f"min_confidence must be in [0, 1], not {self.min_confidence}"
            )
        if self.views not in ("panels", "embedding"):
            raise BrainAtlasInputError(f"views must be 'panels' or 'embedding', not {self.views!r}")


def transfer_ccf_labels(
    reference_sections,
    query_sections,
    atlas,
    *,
    levels=("division",),
    settings: CCFTransferSettings | None = None,
    model=None,
    seed: int = 0,
    progress: Callable | None = None,
    cancel: Callable | None = None,
    **options,
) -> list[AnnData]:
    """Transfer CCF structure labels from registered references to copies of the queries.

    Parameters
    ----------
    reference_sections : registered sections (``obs['ccf_id']`` or ``['ccf_acronym']``)
        holding ``obsm[embedding]`` (``FuseMap.write_embeddings``).
    query_sections : sections holding ``obsm[embedding]`` (``QueryMapping.write_embeddings``).
    atlas : the atlas the references were registered to (its ontology names the levels).
    levels : one level or several (:func:`~napari_brainatlas.register.ccf_levels.parse_level`):
        "division" (default), "fine", "layer", "field", "nucleus", "subdivision", or an
        ontology depth; each gets its own classifier and columns.
    settings : :class:`CCFTransferSettings`; ``**options`` its fields as keywords
        (``min_confidence=0.6, smooth_k=0, views="embedding"`` ...).
    model : the query mapping (or joint FuseMap) behind the queries' embeddings: with it
        the panel views are used (``settings.views``); ``uns['ccf_label_transfer'][L]
        ['views']`` says which reading was used.
    progress : ``progress(done, total, info)`` after each level; cancel : ``cancel() ->
        bool``, polled between epochs (:class:`napari_brainatlas.Cancelled` when it says so).

    Returns copies of the queries with the columns of the module docstring.
    """
    from ..jobs import check_cancel, report

    refs = _as_list(reference_sections)
    qry = [a.copy() for a in _as_list(query_sections)]
    lvs = [parse_level(v) for v in ([levels] if isinstance(levels, (str, int)) else levels)]
    if not lvs:
        raise BrainAtlasInputError("give at least one label level to transfer")
    s = resolve_settings(CCFTransferSettings, settings, options, "CCF label transfer")
    pv = None
    if s.views == "panels" and model is not None:
        from .panel_views import PanelViews

        pv = PanelViews.of(model, refs, qry)
    fit = _fitter({"seed": seed, "max_epochs": s.max_epochs, "balance": "balanced"}, cancel)
    for i, lv in enumerate(lvs):
        check_cancel(cancel)
        rec = _transfer_level(refs, qry, atlas, lv, s, pv, fit, cancel)
        for q in qry:
            d = dict(q.uns.get("ccf_label_transfer", {}))
            d[level_name(lv)] = rec
            q.uns["ccf_label_transfer"] = d
        report(progress, i + 1, len(lvs), level=level_name(lv))
    return qry


def _transfer_level(refs, qry, atlas, lv, s: CCFTransferSettings, pv, fit, cancel) -> dict:
    """Write level ``lv``'s columns into ``qry``; returns its ``uns`` record."""
    from ..jobs import check_cancel

    rows = _level_rows(refs, atlas, lv, s.embedding)
    clf, _ = fit(rows[0][rows[2]], rows[1][rows[2]], [])
    check_cancel(cancel)
    key = ccf_transfer_key(lv)
    cats = [str(c) for c in clf.classes_] + [UNASSIGNED]
    n_assigned = n_all = 0
    probs = _probabilities(clf, qry, s.embedding, pv, fit, rows)
    check_cancel(cancel)  # the panel views train more classifiers: a cancel there stops too
    for q, (proba, ok) in zip(qry, probs):
        lab, unc = _predict(clf, q, proba, ok, s.smooth_k)
        few = _total_counts(q) < s.min_counts
        unc[few | ~ok] = 1.0
        lab[few | ~ok | (1.0 - unc < s.min_confidence)] = UNASSIGNED
        q.obs[key] = pd.Categorical(lab.astype(str), categories=cats)
        q.obs[f"{key}_uncertainty"] = unc
        n_assigned += int(np.sum(lab != UNASSIGNED))
        n_all += q.n_obs
    return {
        "level": level_name(lv),
        "atlas": str(getattr(atlas, "name", "")),
        "embedding": s.embedding,
        "views": "panels" if pv is not None else "embedding",
        "min_confidence": s.min_confidence,
        "min_counts": s.min_counts,
        "smooth_k": s.smooth_k,
        "n_reference_cells": int(rows[2].sum()),
        "classes": len(clf.classes_),
        "reference_test_accuracy": float(clf.test_accuracy_),
        "fraction_assigned": float(n_assigned / max(n_all, 1)),
    }


def plane_search_inputs(
    adata: AnnData, atlas, key: str = "ccf_division_transfer"
) -> tuple[np.ndarray, np.ndarray]:
    """(cell_div, weights) for the label-guided plane search from a transferred column.

    ``cell_div`` (n,) int64: each cell's major-division index
    (:func:`~napari_brainatlas.register.metrics.major_divisions` order; layer labels ->
    Isocortex), -1 for "unassigned" and labels above or outside every division.
    ``weights`` (n,) float in [0, 1]: ``1 - obs[key + '_uncertainty']`` (1 when the
    column has none), 0 where ``cell_div`` is -1.
    """
    if key not in adata.obs:
        raise BrainAtlasInputError(f"the section has no obs['{key}'] labels: transfer them first")
    lab = adata.obs[key].astype(str).to_numpy()
    div = level_divisions(atlas, lab)
    ukey = f"{key}_uncertainty"
    if ukey in adata.obs:
        u = np.asarray(adata.obs[ukey], dtype=float)
        w = np.clip(1.0 - np.nan_to_num(u, nan=1.0), 0.0, 1.0)
    else:
        w = np.ones(adata.n_obs)
    w = np.where(div >= 0, w, 0.0)
    return div.astype(np.int64), w


def estimate_position(
    reference_sections,
    query: AnnData,
    atlas,
    *,
    plane: str = "coronal",
    side: str = "left",
    embedding: str = TISSUE_KEY,
    k: int = 15,
    max_reference_cells: int = 20000,
    max_query_cells: int = 3000,
    seed: int = 0,
) -> dict:
    """Coarse cutting position of a query from the reference's CCF coordinates.

    Each query cell takes the mean AP (coronal) or distance from the midline (sagittal)
    of its ``k`` nearest reference cells in the embedding; the section's position is the
    median over its cells. Sagittal: expression is left-right symmetric, so the side of
    the midline comes from ``side`` ("left": ML below the midline, "right").

    Returns dict(position_um, spread_um (robust spread of the cells' estimates),
    n_cells).
    """
    import torch

    if plane not in ("coronal", "sagittal"):
        raise BrainAtlasInputError(f"plane must be 'coronal' or 'sagittal', not {plane!r}")
    if side not in ("left", "right"):
        raise BrainAtlasInputError(f"side must be 'left' or 'right', not {side!r}")
    rng = np.random.default_rng(seed)
    Zr, vr = [], []
    mid = float(atlas.midline_ml_um)
    for a in _as_list(reference_sections):
        if "ccf_coords" not in a.obsm:
            raise BrainAtlasInputError("the reference sections need obsm['ccf_coords']")
        z = _embedding(a, embedding, "reference")
        c = np.asarray(a.obsm["ccf_coords"], float)
        ok = np.isfinite(z).all(1) & np.isfinite(c).all(1)
        Zr.append(z[ok])
        vr.append(c[ok, 0] if plane == "coronal" else np.abs(c[ok, 2] - mid))
    Zr, vr = np.concatenate(Zr), np.concatenate(vr)
    if len(Zr) > max_reference_cells:
        s = rng.choice(len(Zr), max_reference_cells, replace=False)
        Zr, vr = Zr[s], vr[s]
    zq = _embedding(query, embedding, "query")
    zq = zq[np.isfinite(zq).all(1)]
    if len(zq) == 0 or len(Zr) == 0:
        raise BrainAtlasInputError("no cell with an embedding to estimate the position from")
    if len(zq) > max_query_cells:
        zq = zq[rng.choice(len(zq), max_query_cells, replace=False)]
    kk = min(int(k), len(Zr))
    est = []
    R = torch.from_numpy(np.ascontiguousarray(Zr))
    for b in range(0, len(zq), 512):
        d = torch.cdist(torch.from_numpy(np.ascontiguousarray(zq[b : b + 512])), R)
        idx = torch.topk(d, kk, largest=False).indices.numpy()
        est.append(vr[idx].mean(1))
    est = np.concatenate(est)
    v = float(np.median(est))
    q25, q75 = np.percentile(est, [25, 75])
    if plane == "sagittal":
        v = mid - v if side == "left" else mid + v
    return {"position_um": v, "spread_um": float((q75 - q25) / 1.349), "n_cells": len(est)}
