"""Reference and query cells read through each other's gene panels, for label transfer
(``TransferSettings(views="panels")``, the default when :func:`.transfer_labels` is
given the model).

Every section of a FuseMap has its own encoder. A classifier trained on the reference
cells' z_C and applied to a query's z_C relies on the adversary and the anchors having
put the two encoders' outputs cell for cell in one place; they mostly align the
distributions (benchmarks/embedding/NOTES.md, issue 26). The two *panel views* ask one
encoder to place both sides:

* **query view**: the reference cells read through the query's panel (the genes both
  measure from the reference cell's model input, the genes the reference lacks from the
  decoder ``max(z_C E_g, 0)`` of its own embedding) and the query's encoder; a
  classifier trained there labels the query's own z_C.
* **reference view**: the query cells read through each reference section's panel and
  that section's encoder; the classifier trained on the reference z_C labels them.

The transfer averages the class probabilities of the two views (the reading of
``_training.cross_panel_loss``, which FuseMap trains its encoders to agree on). Dev half
of the embedding benchmark (issue 26; 8 splits of osmFISH, MERFISH and Slide-seq, seed
0): MLP transfer accuracy of the reference chain 0.582 -> 0.608, of joint training 0.558
-> 0.581, better on 7 of 8 splits each.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..fusemap import CELL_KEY, spatial_graph
from ..fusemap._preprocess import preprocess_section
from ..fusemap.data import rows_dense

__all__ = ["PanelViews", "read_through_panel"]


def read_through_panel(module, X, genes: list[str], z: np.ndarray, name: str, chunk=16384):
    """Cells with model input ``X`` (n, len(genes); the preprocessed expression of their
    own section, upper-case ``genes``) and embedding ``z`` (n, n_latent) as section
    ``name``'s encoder sees them: ``name``'s genes taken from ``X`` where ``genes`` holds
    them, the others from the decoder ``max(z E_g, 0)``; the encoder's posterior means
    (eval mode). Returns float32 (n, n_latent)."""
    target = module.section_genes[name]
    pos = {g: i for i, g in enumerate(genes)}
    have = [j for j, g in enumerate(target) if g in pos]
    miss = [j for j, g in enumerate(target) if g not in pos]
    E = module.gene_embedding.detach().cpu().numpy()
    E_miss = E[[module.gene_index[target[j]] for j in miss]] if miss else None
    enc = module.encoders[name]
    was = enc.training
    enc.eval()
    dev = next(enc.parameters()).device
    out = np.zeros((len(z), module.n_latent), np.float32)
    try:
        with torch.no_grad():
            for i in range(0, len(z), chunk):
                rows = np.arange(i, min(i + chunk, len(z)))
                x = np.zeros((len(rows), len(target)), np.float32)
                own = rows_dense(X, rows)
                x[:, have] = own[:, [pos[target[j]] for j in have]]
                if miss:
                    x[:, miss] = np.maximum(z[rows] @ E_miss.T, 0.0)
                mu = module.encode(name, torch.from_numpy(x).to(dev))[0]
                out[rows] = mu.float().cpu().numpy()
    finally:
        enc.train(was)
    return out


class _Side:
    """One section: its name in the model, model input, genes, and z_C of its kept rows
    (``rows``: their positions in the AnnData)."""

    def __init__(self, name: str, adata: AnnData, min_cell_counts: float):
        p = preprocess_section(adata, name, min_cell_counts=min_cell_counts)
        z = np.asarray(adata.obsm[CELL_KEY], np.float32)[p.kept]
        ok = np.isfinite(z).all(1)
        self.name, self.n_obs = name, adata.n_obs
        self.rows = p.kept[ok]
        self.X = p.X[np.flatnonzero(ok)] if not ok.all() else p.X
        self.genes = list(p.genes)
        self.z = z[ok]
        self.coords = p.coords[ok]
        self._graph = None

    def through(self, module, name: str, tissue: bool = False) -> np.ndarray:
        """(n_obs, n_latent) this section's cells through ``name``'s encoder (z_C, or
        with ``tissue`` z_T: that z_C averaged over this section's spatial graph, as
        FuseMap makes z_T); NaN rows for cells without an embedding."""
        out = np.full((self.n_obs, module.n_latent), np.nan, np.float32)
        if len(self.rows):
            z = read_through_panel(module, self.X, self.genes, self.z, name)
            if tissue:
                if self._graph is None:
                    self._graph = spatial_graph(self.coords)
                z = np.asarray(self._graph @ z, np.float32)
            out[self.rows] = z
        return out


def _name_of(adata: AnnData, key: str, names: list[str], i: int, n: int) -> str | None:
    meta = adata.uns.get(key, {})
    name = meta.get("section_name") if isinstance(meta, dict) else None
    if name is not None and str(name) in names:
        return str(name)
    return names[i] if n == len(names) else None


class PanelViews:
    """The panel views of one model's reference and query sections (module docstring).

    Build with :meth:`of`, which returns None when the sections cannot be matched to the
    model's encoders (then the transfer reads the embedding alone) and raises
    BrainAtlasInputError when ``model`` is not a FuseMap or query mapping."""

    def __init__(self, module, reference: list[_Side], query: list[_Side]):
        self.module, self.reference, self.query = module, reference, query

    @classmethod
    def of(cls, model, reference: list[AnnData], query: list[AnnData]) -> PanelViews | None:
        module = getattr(model, "module", None)
        if module is None or not hasattr(module, "encoders"):
            raise BrainAtlasInputError(
                f"model must be the FuseMap or query mapping behind the embeddings, not "
                f"{type(model).__name__}"
            )
        mapping = hasattr(model, "query_names")
        ref_model = model.reference if mapping else model
        ref_names = list(getattr(ref_model, "section_names", []))
        qry_names = list(model.query_names) if mapping else ref_names
        rn = [_name_of(a, "fusemap", ref_names, i, len(reference)) for i, a in enumerate(reference)]
        if mapping:
            qn = [
                _name_of(a, "fusemap_query", qry_names, i, len(query)) for i, a in enumerate(query)
            ]
        else:  # sections of one joint model: matched by the name write_embeddings stored
            qn = [_name_of(a, "fusemap", ref_names, 0, -1) for a in query]
        names = rn + qn
        if any(n is None or n not in module.encoders for n in names):
            return None
        if set(rn) & set(qn):
            return None
        if not all(CELL_KEY in a.obsm for a in list(reference) + list(query)):
            return None
        mc = float(getattr(ref_model.settings, "min_cell_counts", 0.0))
        try:
            return cls(
                module,
                [_Side(n, a, mc) for n, a in zip(rn, reference)],
                [_Side(n, a, mc) for n, a in zip(qn, query)],
            )
        except BrainAtlasInputError:  # a section the model's preprocessing cannot read
            return None

    def reference_through(self, j: int, tissue: bool = False) -> np.ndarray:
        """Every reference cell (the sections stacked) through query ``j``'s encoder."""
        name = self.query[j].name
        return np.concatenate([r.through(self.module, name, tissue) for r in self.reference])

    def query_through(self, j: int, r: int, tissue: bool = False) -> np.ndarray:
        """Query ``j``'s cells through reference section ``r``'s encoder."""
        return self.query[j].through(self.module, self.reference[r].name, tissue)


def panel_probabilities(views: PanelViews, fit, Zr, yr, okr, Zq, okq, sizes, tissue=False):
    """Class probabilities of the query cells ``okq`` (stacked query rows) averaged over
    the two panel views: ``(classes, p)``. ``fit(Z, y, Zq) -> (classifier, p)`` trains a
    classifier (``classes_``, ``predict_proba``); ``Zr`` / ``yr`` are the reference rows
    (z_C, or z_T with ``tissue``) and labels that ``okr`` (a mask over the stacked
    reference rows) kept."""
    clf0, _ = fit(Zr, yr, Zq[:0])
    classes = np.asarray(clf0.classes_)
    col = {str(c): i for i, c in enumerate(classes)}

    def aligned(clf, Z):
        p = np.zeros((len(Z), len(classes)), np.float64)
        if len(Z):
            pc = clf.predict_proba(Z)
            p[:, [col[str(c)] for c in clf.classes_]] = pc
        return p

    out = np.zeros((int(okq.sum()), len(classes)), np.float64)
    start, o = 0, 0
    for j, n in enumerate(sizes):
        ok = okq[start : start + n]
        zq = Zq[start : start + n][ok]
        start += n
        if not len(zq):
            continue
        # query view: the reference through this query's encoder
        R = views.reference_through(j, tissue)[okr]
        fine = np.isfinite(R).all(1) & np.array([v is not None for v in yr])
        p_q = aligned(fit(R[fine], yr[fine], zq[:0])[0], zq) if fine.any() else aligned(clf0, zq)
        # reference view: this query through every reference encoder
        p_r = np.zeros_like(p_q)
        for r in range(len(views.reference)):
            Q = views.query_through(j, r, tissue)[ok]
            fin = np.isfinite(Q).all(1)
            p = aligned(clf0, zq)
            if fin.any():
                p[fin] = aligned(clf0, Q[fin])
            p_r += p
        p_r /= max(len(views.reference), 1)
        out[o : o + len(zq)] = 0.5 * (p_q + p_r)
        o += len(zq)
    return classes, out
