"""Label transfer from annotated reference sections to query sections (method.md,
"Transfer to a query", Labels).

Both sides must hold FuseMap embeddings (``obsm['X_fusemap_cell']`` for cell types,
``obsm['X_fusemap_tissue']`` for regions): the reference from ``FuseMap.write_embeddings``,
the query from :func:`~napari_brainatlas.annotate.query.map_query`. For each label an
MLP k-256-C (class-balanced cross-entropy, Adam 1e-3, 80/10/10, early stopping) or a kNN
vote is trained on the reference embedding; with a hierarchy (``{'celltype':
'celltype_main'}``) both levels are written: by default (``hierarchy_mode="flat"``) the
main label is the main class of the predicted sub label; ``"nested"`` (the paper) predicts
the main level first and then the sub level by a classifier trained inside each main
class. Region labels (those read from the tissue
embedding) can be smoothed by a k = 30 spatial vote over ``obsm['spatial']`` weighted by
``1 - uncertainty``.

Any subset of the reference sections may carry a label: each classifier learns from the
reference cells that have the label (a section without the column, or an empty value,
is unlabelled), and ``uns['label_transfer'][label]['labelled_sections']`` names the
sections it learnt from.

Written into copies of the query sections: ``obs['<label>_transfer']`` (categorical) and
``obs['<label>_transfer_uncertainty']`` (``1 - max p`` in [0, 1]; after a nested hierarchy
``1 - p(main) p(sub | main)``; after smoothing ``1 - the winning weighted vote share``);
for a hierarchy also ``obs['<main>_transfer']`` and its uncertainty. Cells without an
embedding get NaN. ``uns['label_transfer']`` records what was done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..fusemap import CELL_KEY, TISSUE_KEY
from ..models import resolve_settings
from .classifier import KNNLabelClassifier, MLPLabelClassifier
from .smoothing import smooth_labels

__all__ = ["DEFAULT_EMBEDDING", "DEFAULT_HIERARCHY", "TransferSettings", "transfer_labels"]

DEFAULT_EMBEDDING = {"celltype": CELL_KEY, "region": TISSUE_KEY}
DEFAULT_HIERARCHY = {"celltype": "celltype_main"}


def _as_list(s) -> list[AnnData]:
    if isinstance(s, AnnData):
        return [s]
    s = list(s)
    if not s or not all(isinstance(a, AnnData) for a in s):
        raise BrainAtlasInputError("give one or more AnnData sections")
    return s


def _stack(sections, key: str, what: str) -> np.ndarray:
    Z = []
    for a in sections:
        if key not in a.obsm:
            raise BrainAtlasInputError(
                f"{what} section {a.uns.get('fusemap', {}).get('section_name', '')!s} "
                f"has no obsm['{key}']: embed or map it first".replace("  ", " ")
            )
        Z.append(np.asarray(a.obsm[key], np.float32))
    if len({z.shape[1] for z in Z}) != 1:
        raise BrainAtlasInputError(f"obsm['{key}'] has different widths across sections")
    return np.concatenate(Z)


def _labels(sections, col: str) -> np.ndarray:
    """The reference cells' ``col`` labels (None where a cell has none: an empty value,
    or a section without the column; any subset of the reference may be labelled)."""
    if not any(col in a.obs.columns for a in sections):
        raise BrainAtlasInputError(f"no reference section has obs['{col}'] labels")
    out = []
    for a in sections:
        if col not in a.obs.columns:
            out.append(np.full(a.n_obs, None, dtype=object))
            continue
        v = a.obs[col].astype(object).to_numpy()
        out.append(
            np.array(
                [None if (x is None or pd.isna(x) or str(x) == "") else str(x) for x in v],
                dtype=object,
            )
        )
    return np.concatenate(out)


def _make(method: str, kw: dict):
    if method == "mlp":
        return MLPLabelClassifier(**kw)
    return KNNLabelClassifier(k=int(kw.get("k", 15)))


def _fit_predict(method, kw, Zr, yr, Zq, cancel):
    ok = np.array([v is not None for v in yr])
    if not ok.any():
        raise BrainAtlasInputError("no labelled reference cells to learn from")
    clf = _make(method, kw)
    if method == "mlp":
        clf.fit(Zr[ok], yr[ok], cancel=cancel)
    else:
        clf.fit(Zr[ok], yr[ok].astype(str))
    p = clf.predict_proba(Zq) if len(Zq) else np.zeros((0, len(clf.classes_)), np.float32)
    return clf, p


@dataclass(frozen=True)
class TransferSettings:
    """Options of :func:`transfer_labels` (the defaults are its defaults).

    Attributes
    ----------
    embedding : label -> obsm key (default cell types from ``X_fusemap_cell``, regions
        from ``X_fusemap_tissue``; a label not listed uses ``X_fusemap_tissue`` when its
        name contains "region", else ``X_fusemap_cell``).
    method : "mlp" (FuseMap's classifier) or "knn".
    hierarchy : label -> its main-level obs column (default ``{'celltype':
        'celltype_main'}``; used only where the reference has that column).
    hierarchy_mode : "flat" (default): one classifier over the sub labels; the main label
        is the main class of the predicted sub label in the reference, its uncertainty
        ``1 - sum of p over the sub labels of that main class``. "nested" (the paper): a
        main-level classifier, then a sub-level classifier inside each predicted main
        class. On the annotation benchmark's embeddings nested was worse for the sub
        labels (demo cell type 0.653 vs 0.734 accuracy, osmFISH ClusterName with main =
        its first word 0.472 vs 0.491) and no better at the main level (demo 0.728).
    smooth_regions : smooth labels read from the tissue embedding by a spatial vote over
        ``smooth_k`` (30) neighbours.
    max_epochs : the MLP's epochs at most (200); knn_k : the kNN vote's neighbours (15).
    class_balance : the MLP's class weights, "balanced" (inverse class frequency), "sqrt"
        (its square root) or "none"; one for every label, or a dict label -> value.
        Default: "sqrt" for labels read from the cell embedding, "balanced" for labels
        read from the tissue embedding. On the annotation benchmark (5 epochs, 3 mapping
        seeds, unsmoothed) "sqrt" raised cell-type accuracy on both sets (held-out demo
        section 0.784 -> 0.793, macro-F1 0.652 -> 0.661; osmFISH 0.504 -> 0.520, macro-F1
        0.414 -> 0.404) but lowered region accuracy (demo 0.805 -> 0.779, osmFISH 0.546 ->
        0.533): cell-type panels have many classes (18-32) with a long tail whose full
        inverse-frequency weights make the rare types over-predicted.
    views : "panels" (default; used when :func:`transfer_labels` is given the ``model``
        and the label is read from ``X_fusemap_cell`` with a flat or no hierarchy): the
        classifier's probabilities averaged over the reference cells read through each
        query's encoder and the query cells read through each reference encoder
        (:mod:`~napari_brainatlas.annotate.panel_views`); "embedding": the classifier
        trained on the reference z_C applied to the query z_C alone (the paper). Dev half
        of the embedding benchmark (issue 26, 8 splits): MLP accuracy of the reference
        chain 0.582 -> 0.608 and of joint training 0.558 -> 0.581, better on 7 of 8 splits.
    """

    embedding: dict | None = None
    method: str = "mlp"
    hierarchy: dict | None = None
    hierarchy_mode: str = "flat"
    smooth_regions: bool = True
    smooth_k: int = 30
    max_epochs: int = 200
    knn_k: int = 15
    class_balance: str | dict | None = None
    views: str = "panels"

    def __post_init__(self):
        if self.hierarchy_mode not in ("flat", "nested"):
            raise BrainAtlasInputError(
                f"hierarchy_mode must be 'flat' or 'nested', not {self.hierarchy_mode!r}"
            )
        if self.method not in ("mlp", "knn"):
            raise BrainAtlasInputError(f"method must be 'mlp' or 'knn', not {self.method!r}")
        if self.views not in ("panels", "embedding"):
            raise BrainAtlasInputError(f"views must be 'panels' or 'embedding', not {self.views!r}")
        cb = self.class_balance
        for v in ([cb] if isinstance(cb, str) else []) + list(self.balances.values()):
            if v not in ("balanced", "sqrt", "none"):
                raise BrainAtlasInputError(
                    f"class_balance must be 'balanced', 'sqrt' or 'none', not {v!r}"
                )

    @property
    def balances(self) -> dict:
        """The per-label class weights given as a dict (else empty)."""
        return self.class_balance if isinstance(self.class_balance, dict) else {}

    def embedding_key(self, label: str) -> str:
        emb = dict(DEFAULT_EMBEDDING)
        emb.update(self.embedding or {})
        return emb.get(label, TISSUE_KEY if "region" in label.lower() else CELL_KEY)

    def main_column(self, label: str):
        hier = DEFAULT_HIERARCHY if self.hierarchy is None else dict(self.hierarchy)
        return hier.get(label)

    def balance_of(self, label: str, key: str) -> str:
        if isinstance(self.class_balance, str):
            return self.class_balance
        return self.balances.get(label, "balanced" if key == TISSUE_KEY else "sqrt")


def transfer_labels(
    reference_sections,
    query_sections,
    labels=("celltype", "region"),
    settings: TransferSettings | None = None,
    *,
    model=None,
    seed: int = 0,
    progress: Callable | None = None,
    cancel: Callable | None = None,
    **options,
) -> list[AnnData]:
    """Transfer ``labels`` from the reference to copies of the query sections.

    Parameters
    ----------
    reference_sections, query_sections : AnnData or lists (see the module docstring).
    labels : obs columns of the reference to transfer.
    settings : :class:`TransferSettings`; ``**options`` its fields as keywords
        (``method="knn", hierarchy_mode="nested", smooth_regions=False, max_epochs=60,
        class_balance="sqrt"`` ...), applied to ``settings`` (default ``TransferSettings()``).
    model : the :class:`~napari_brainatlas.annotate.QueryMapping` that embedded the
        queries (or the :class:`~napari_brainatlas.fusemap.FuseMap` holding both sides);
        with it, cell-embedding labels use the panel views (``settings.views``). Without
        it, or when the sections cannot be matched to its encoders, the embeddings alone
        (``uns['label_transfer'][label]['views']`` says which was used).
    seed : the classifiers' seed.
    progress : ``progress(i, n, label)`` after each label.
    cancel : ``cancel()`` polled between labels (and by the MLP while it trains).
    """
    ref = _as_list(reference_sections)
    qry = [a.copy() for a in _as_list(query_sections)]
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",") if x.strip()]
    labels = list(labels)
    if not labels:
        raise BrainAtlasInputError("give at least one label column to transfer")
    s = resolve_settings(TransferSettings, settings, options, "label transfer")
    views = _panel_views(model, ref, qry, s)
    record = {}
    for li, lab in enumerate(labels):
        if cancel is not None and cancel():
            break
        record[lab] = _transfer_label(ref, qry, lab, labels, s, seed, cancel, views)
        if progress is not None:
            progress(li + 1, len(labels), lab)
    for a in qry:
        a.uns["label_transfer"] = record
    return qry


def _panel_views(model, ref, qry, s: TransferSettings):
    """The panel views of ``model`` (None: not asked for, no model, or not matchable)."""
    if model is None or s.views != "panels":
        return None
    from .panel_views import PanelViews

    return PanelViews.of(model, ref, qry)


def _transfer_label(
    ref, qry, lab: str, labels, s: TransferSettings, seed: int, cancel, views=None
) -> dict:
    """Predict ``lab`` for every query cell (and its main level under a hierarchy), write
    the columns into ``qry``; returns what ``uns['label_transfer'][lab]`` records."""
    key = s.embedding_key(lab)
    Zr = _stack(ref, key, "reference")
    Zq = _stack(qry, key, "query")
    yr = _labels(ref, lab)
    okr = np.isfinite(Zr).all(1)
    okq = np.isfinite(Zq).all(1)
    Zr, yr = Zr[okr], yr[okr]
    labelled = [str(_name(a, i)) for i, a in enumerate(ref) if lab in a.obs.columns]
    main_col = s.main_column(lab)
    use_h = bool(main_col) and any(main_col in a.obs.columns for a in ref)
    pred = np.full(len(Zq), None, dtype=object)
    unc = np.full(len(Zq), np.nan, np.float32)
    balance = s.balance_of(lab, key)
    if s.method == "mlp":
        kw = {"seed": seed, "max_epochs": s.max_epochs, "balance": balance}
    else:
        kw = {"seed": seed, "max_epochs": s.max_epochs, "k": s.knn_k}
    fit = functools.partial(_fit_predict, s.method, kw, cancel=cancel)
    sizes = [a.n_obs for a in qry]
    splits = np.cumsum(sizes)[:-1]
    panels = views is not None and key == CELL_KEY and not (use_h and s.hierarchy_mode == "nested")
    if panels:
        fit = _panel_fit(views, fit, okr, Zq, okq, sizes)
    if use_h:
        ym = _labels(ref, main_col)[okr]
        if s.hierarchy_mode == "flat":
            main_pred, main_unc = _predict_flat(fit, Zr, yr, ym, Zq, okq, pred, unc)
        else:
            main_pred, main_unc = _predict_nested(fit, Zr, yr, ym, Zq, okq, pred, unc)
        if main_col not in labels:
            _write(qry, splits, main_col, main_pred, main_unc)
    else:
        clf, p = fit(Zr, yr, Zq[okq])
        if len(p):
            pred[okq] = clf.classes_[p.argmax(1)]
            unc[okq] = 1.0 - p.max(1)
    smoothed = bool(s.smooth_regions and key == TISSUE_KEY)
    if smoothed:
        _smooth(qry, sizes, okq, pred, unc, s.smooth_k)
    np.clip(unc, 0.0, 1.0, out=unc)
    _write(qry, splits, lab, pred, unc)
    return {
        "embedding": key,
        "method": s.method,
        "views": "panels" if panels else "embedding",
        "smoothed": smoothed,
        "class_balance": balance if s.method == "mlp" else None,
        "hierarchy": main_col if use_h else None,
        "hierarchy_mode": s.hierarchy_mode if use_h else None,
        "n_reference_cells": int(sum(v is not None for v in yr)),
        "labelled_sections": labelled,
    }


def _panel_fit(views, fit, okr, Zq, okq, sizes):
    """``fit`` with the panel views: same call, ``(classifier-like, p)`` for the query
    rows ``okq`` (the stacked ``Zq``), p averaged over the two views."""
    from types import SimpleNamespace

    from .panel_views import panel_probabilities

    def panel_fit(Zr, yr, _zq):
        classes, p = panel_probabilities(views, fit, Zr, yr, okr, Zq, okq, sizes)
        return SimpleNamespace(classes_=classes), p.astype(np.float32)

    return panel_fit


def _predict_flat(fit, Zr, yr, ym, Zq, okq, pred, unc):
    """Flat hierarchy: one classifier over the sub labels (written into ``pred`` /
    ``unc``); the main label is the predicted sub label's main class, its uncertainty
    ``1 - the summed p of that class's sub labels``. Returns (main_pred, main_unc)."""
    clf, p = fit(Zr, yr, Zq[okq])
    main_of = _main_of(yr, ym)
    fine_main = np.array([main_of.get(str(c)) for c in clf.classes_], dtype=object)
    main_pred = np.full(len(Zq), None, dtype=object)
    main_unc = np.full(len(Zq), np.nan, np.float32)
    if len(p):
        best = p.argmax(1)
        pred[okq] = clf.classes_[best]
        unc[okq] = 1.0 - p.max(1)
        mains = fine_main[best]
        pm = np.array(
            [
                p[i, fine_main == m].sum() if m is not None else p[i, best[i]]
                for i, m in enumerate(mains)
            ],
            np.float32,
        )
        main_pred[okq] = mains
        main_unc[okq] = np.clip(1.0 - pm, 0.0, 1.0)
    return main_pred, main_unc


def _predict_nested(fit, Zr, yr, ym, Zq, okq, pred, unc):
    """Nested hierarchy (the paper): the main level first, then the sub level by a
    classifier trained inside each predicted main class; the sub label's uncertainty is
    ``1 - p(main) p(sub | main)`` (written into ``pred`` / ``unc``). Returns (main_pred,
    main_unc)."""
    clf_m, pm = fit(Zr, ym, Zq[okq])
    main = clf_m.classes_[pm.argmax(1)] if len(pm) else np.array([], dtype=object)
    pmax = pm.max(1) if len(pm) else np.zeros(0, np.float32)
    sub = np.empty(len(main), dtype=object)
    psub = np.ones(len(main), np.float32)
    for m in clf_m.classes_:
        selq = main == m
        if not selq.any():
            continue
        selr = np.array([v == m for v in ym]) & np.array([v is not None for v in yr])
        if not selr.any():
            sub[selq] = None
            continue
        clf_s, ps = fit(Zr[selr], yr[selr], Zq[okq][selq])
        sub[selq] = clf_s.classes_[ps.argmax(1)]
        psub[selq] = ps.max(1)
    main_pred = np.full(len(Zq), None, dtype=object)
    main_unc = np.full(len(Zq), np.nan, np.float32)
    main_pred[okq] = main
    main_unc[okq] = 1.0 - pmax
    pred[okq] = sub
    unc[okq] = 1.0 - pmax * psub
    return main_pred, main_unc


def _smooth(qry, sizes, okq, pred, unc, k: int) -> None:
    """Spatial vote over ``k`` neighbours within each query section (weights ``1 -
    uncertainty``), in place; sections without ``obsm['spatial']`` stay as they are."""
    for a, sl in zip(qry, _slices(sizes)):
        ok = okq[sl]
        if ok.sum() == 0 or "spatial" not in a.obsm:
            continue
        xy = np.asarray(a.obsm["spatial"], float)[:, :2][ok]
        lab_s, unc_s = smooth_labels(xy, pred[sl][ok].astype(str), k=k, weights=1.0 - unc[sl][ok])
        idx = np.flatnonzero(ok) + sl.start
        pred[idx] = lab_s
        unc[idx] = unc_s


def _name(a: AnnData, i: int) -> str:
    meta = a.uns.get("napari_brainatlas", {})
    if isinstance(meta, dict) and meta.get("section"):
        return str(meta["section"])
    return str(a.uns.get("fusemap", {}).get("section_name", f"reference{i}"))


def _main_of(fine, main) -> dict:
    """Each fine label's main class in the reference (its most frequent one)."""
    df = pd.DataFrame({"f": fine, "m": main}).dropna()
    if df.empty:
        return {}
    top = df.groupby("f")["m"].agg(lambda v: v.value_counts().index[0])
    return {str(k): str(v) for k, v in top.items()}


def _slices(sizes):
    s = 0
    for n in sizes:
        yield slice(s, s + n)
        s += n


def _write(qry, splits, lab, pred, unc):
    for a, p, u in zip(qry, np.split(pred, splits), np.split(unc, splits)):
        vals = [None if v is None else str(v) for v in p]
        cats = sorted({v for v in pred if v is not None})
        a.obs[f"{lab}_transfer"] = pd.Categorical(vals, categories=[str(c) for c in cats])
        a.obs[f"{lab}_transfer_uncertainty"] = np.asarray(u, np.float32)
