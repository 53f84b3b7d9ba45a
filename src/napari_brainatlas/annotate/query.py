"""Map query sections onto a trained FuseMap reference (method.md, "Transfer to a query").

What is frozen and what is trained (``map_query``):

* the reference model is never modified: its module is deep-copied, and in the copy the
  reference encoders, the discriminator trunks (every layer but the last) and the gene
  embedding rows of the reference genes have ``requires_grad = False`` (reference
  encoders run in eval mode, so BatchNorm statistics do not move either);
  :attr:`QueryMapping.frozen_unchanged` checks after training that every one of them is
  byte-identical to the reference model's;
* each query section gets a new encoder (``FuseMapModule.add_section``); genes the
  reference never saw get new Xavier-initialised gene embedding rows, which are trained;
* losses: the reference's autoencoder loss on the query cells (``MSE(X, ReLU(A z_T
  E_v^T)) + KL / |T_v|``, through the frozen known gene rows, which pins the query to
  the reference space) and, when reference embeddings are available, the adversarial
  min-max of the reference: new discriminator heads (``256 -> V + Q``; the first V rows
  start from the reference heads) on the frozen trunks learn to tell query cells from
  reference cells (reference z_C / z_T are fixed, computed once); the query encoders
  minimise ``AE - lambda * CE`` with lambda set at the first step so that
  ``lambda * CE = adv_ratio * AE``. Without reference embeddings (a model folder loaded
  without its sections and no annotated reference given) the adversarial term is left
  out and ``QueryMapping.adversarial`` is False.
* RMSprop (the reference lr), 85/15 split of query cells, ReduceLROnPlateau x0.5 and
  early stopping on the validation AE loss.

Two additions of ours beyond the paper (both on by default; ``init="random", anchor=0``
gives the paper's mapping):

* ``init="reference"``: a new query encoder starts from the reference encoder whose
  panel shares the most genes with it (every layer copied; first-layer columns of shared
  genes copied, the others 0) instead of a random start.
* ``anchor`` (5.0): where the reference expression is at hand (the model holds its
  sections, or ``reference_sections`` with integer counts), the query encoder is also
  taught to place reference cells, read through the query's gene panel (missing genes 0,
  the query's preprocessing), at their frozen reference z_C: ``anchor * MSE(mu_q(x_ref),
  z_ref)`` is added to the AE loss. The decoder alone pins only the part of z_C that the
  query's few genes see through E (64 dimensions, tens of genes); the anchor pins the
  rest. On the annotation benchmark (5 epochs) it raised kNN cell-type accuracy in z_C
  on the held-out demo section from 0.555 to 0.65-0.68 and on osmFISH from 0.362 to 0.43-0.46
  (benchmarks/annotation/RESULTS_annotation.md). ``QueryMapping.anchored`` says whether it
  was used. An epoch then passes every query training cell and every anchor cell once.

With the anchor in use the adversarial term is left out by default (``adversarial=
"auto"``): on the annotation benchmark (5 epochs, 3 mapping seeds, the same reference
model) it lowered cell-type accuracy with the anchor on both sets: held-out demo section
0.765 with it vs 0.784 without (MLP; kNN 0.714 vs 0.742), osmFISH 0.490 vs 0.504; hidden-gene
imputation R demo 0.308 vs 0.313, osmFISH 0.486 vs 0.496. The adversary matches the query's
distribution to the reference's, which pulls cells the wrong way when the two differ in
composition (the osmFISH query is another part of the tissue); the anchor aligns cell
by cell instead. ``adversarial=True`` keeps both; without reference counts (no anchor)
"auto" uses the adversary, as the paper does.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn

from .._errors import BrainAtlasInputError
from ..fusemap import CELL_KEY, TISSUE_KEY, FuseMap, preprocess_section, spatial_graph
from ..fusemap._training import gather_subgraph, rows_dense, to_torch_sparse
from .panel import counts_through_panel

__all__ = ["QueryMapping", "map_query", "reference_latents"]

#: version of the folder written by :meth:`QueryMapping.save`
QUERY_FORMAT_VERSION = 1


def _clean_name(name: str, taken: set[str]) -> str:
    n = str(name).replace(".", "_") or "query"
    base, i = n, 1
    while n in taken:
        n = f"{base}_{i}"
        i += 1
    taken.add(n)
    return n


def _query_names(sections: list[AnnData], names, taken: set[str]) -> list[str]:
    out = []
    for i, a in enumerate(sections):
        n = None if names is None else names[i]
        if n is None and "section" in a.obs.columns:
            u = pd.unique(a.obs["section"].astype(str))
            n = u[0] if len(u) == 1 else None
        out.append(_clean_name(n or f"query{i}", taken))
    return out


def reference_latents(
    model: FuseMap, reference_sections: list[AnnData] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Reference (z_C, z_T) per reference section, finite rows only, or None.

    From ``reference_sections`` holding ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``
    (one per model section, in order), else from the sections the model holds."""
    if reference_sections is not None:
        if isinstance(reference_sections, AnnData):
            reference_sections = [reference_sections]
        zc, zt = [], []
        for a in reference_sections:
            if CELL_KEY not in a.obsm or TISSUE_KEY not in a.obsm:
                raise BrainAtlasInputError(
                    f"reference sections need obsm['{CELL_KEY}'] and obsm['{TISSUE_KEY}']"
                )
            c = np.asarray(a.obsm[CELL_KEY], np.float32)
            t = np.asarray(a.obsm[TISSUE_KEY], np.float32)
            ok = np.isfinite(c).all(1) & np.isfinite(t).all(1)
            zc.append(c[ok])
            zt.append(t[ok])
        if len(zc) != model.n_sections:
            raise BrainAtlasInputError(
                f"the model has {model.n_sections} reference sections but "
                f"{len(zc)} annotated reference sections were given"
            )
        return zc, zt
    if getattr(model, "data", None):  # the model holds its sections: embed them
        zc, zt = [], []
        for c, t in zip(
            model.get_latent_representation("cell"), model.get_latent_representation("tissue")
        ):
            ok = np.isfinite(c).all(1) & np.isfinite(t).all(1)
            zc.append(np.ascontiguousarray(c[ok], np.float32))
            zt.append(np.ascontiguousarray(t[ok], np.float32))
        return zc, zt
    return None


class _QData:
    def __init__(self, name, prepared, A, train, val):
        self.name, self.p, self.A, self.train, self.val = name, prepared, A, train, val


class _StoredQuery:
    """Stands in for a query section of a mapping loaded without its sections: the kept
    mask and cell count (the embeddings come from the saved latent.npz)."""

    class _P:
        def __init__(self, kept, n_obs):
            self.kept, self.n_obs, self.n_cells = kept, n_obs, int(np.sum(kept))

    def __init__(self, name, kept, n_obs):
        self.name, self.p = name, self._P(kept, n_obs)


class QueryMapping:
    """Query sections mapped onto a frozen FuseMap reference (see module docstring).

    Attributes: ``reference`` (the FuseMap, untouched), ``module`` (a copy extended with
    the query encoders and new gene rows), ``query_names``, ``adatas`` (the query
    AnnData, untouched until :meth:`write_embeddings`), ``new_genes``, ``history``,
    ``adversarial``, ``frozen`` (names of the frozen tensors).
    """

    def __init__(
        self, reference: FuseMap, module, names, adatas, qdata, new_genes, ref_state, frozen
    ):
        self.reference = reference
        self.module = module
        self.query_names = names
        self.adatas = adatas
        self._q = qdata
        self.new_genes = new_genes
        self._ref_state = ref_state
        self.frozen = frozen
        self.history: list[dict] = []
        self.adversarial = False
        self.anchored = False
        self.reference_sections: list[AnnData] | None = None
        self.cancelled = False
        self._cache: dict | None = None
        self._obs_names: list | None = None

    @property
    def device(self):
        return self.reference.device

    # ------------------------------------------------------------------ checks
    def frozen_unchanged(self) -> bool:
        """True when every frozen tensor equals the reference model's bit for bit (and the
        reference model's own state equals what it was before the mapping)."""
        now = self.module.state_dict()
        ref_now = self.reference.module.state_dict()
        for k, v in self._ref_state.items():
            if not torch.equal(ref_now[k].cpu(), v):
                return False
        n_ref = self._ref_state["gene_embedding"].shape[0]
        for k in self.frozen:
            cur = now[k].cpu()
            if k == "gene_embedding":
                cur = cur[:n_ref]
            if not torch.equal(cur, self._ref_state[k]):
                return False
        return True

    # ------------------------------------------------------------------ outputs
    def _index(self, section) -> int:
        if isinstance(section, (int, np.integer)):
            return int(section)
        if str(section) not in self.query_names:
            raise BrainAtlasInputError(f"no query section named {section!r}")
        return self.query_names.index(str(section))

    def _latent(self):
        if self._cache is None:
            self.module.eval()
            zc, zt = [], []
            with torch.no_grad():
                for q in self._q:
                    out = []
                    for i in range(0, q.p.n_cells, 16384):
                        x = torch.from_numpy(
                            rows_dense(q.p.X, np.arange(i, min(i + 16384, q.p.n_cells)))
                        ).to(self.device)
                        out.append(self.module.encode(q.name, x)[0].float().cpu().numpy())
                    z = np.concatenate(out).astype(np.float32)
                    zc.append(z)
                    zt.append(np.asarray(q.A @ z, dtype=np.float32))
            self._cache = {"cell": zc, "tissue": zt}
        return self._cache

    def get_latent_representation(self, kind: str = "cell", section=None):
        """Query embeddings aligned to the query cells (NaN rows for dropped cells); one
        array for ``section`` (name or index), else a list."""
        if kind not in ("cell", "tissue"):
            raise ValueError("kind must be 'cell' or 'tissue'")
        out = []
        for q, z in zip(self._q, self._latent()[kind]):
            full = np.full((q.p.n_obs, z.shape[1]), np.nan, np.float32)
            full[q.p.kept] = z
            out.append(full)
        return out if section is None else out[self._index(section)]

    def write_embeddings(self, copy: bool = True) -> list[AnnData]:
        """Query sections with ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']`` (copies by
        default; ``copy=False`` writes into the given objects)."""
        if not self.adatas:
            raise BrainAtlasInputError(
                "this mapping was loaded without its query sections: give them to "
                "QueryMapping.load to write embeddings into them"
            )
        cell = self.get_latent_representation("cell")
        tissue = self.get_latent_representation("tissue")
        out = []
        for a, c, t, n in zip(self.adatas, cell, tissue, self.query_names):
            b = a.copy() if copy else a
            b.obsm[CELL_KEY] = c
            b.obsm[TISSUE_KEY] = t
            b.uns["fusemap_query"] = {
                "section_name": n,
                "adversarial": self.adversarial,
                "new_genes": list(self.new_genes),
            }
            out.append(b)
        return out

    def gene_embedding(self) -> pd.DataFrame:
        """Gene embedding of reference and new genes (genes x k)."""
        return self.module.gene_frame()

    def impute(self, section, genes=None) -> pd.DataFrame:
        """``max(z_C E^T, 0)`` for the kept cells of a query section (like FuseMap.impute)."""
        from .impute import impute_genes

        return impute_genes(self, section, genes)

    def obs_names(self, section) -> pd.Index:
        """The cell names of a query section (also after loading without the sections)."""
        i = self._index(section)
        if self.adatas:
            return self.adatas[i].obs_names
        return pd.Index(self._obs_names[i])

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the mapping as a folder:

        * ``reference/`` - the reference model (:meth:`FuseMap.save`);
        * ``weights.pt`` - the state_dict of the extended module (reference tensors, query
          encoders, gene embedding with the new rows);
        * ``query.json`` - query section names, gene panels, new genes, adversarial flag,
          history, format version;
        * ``genes.csv`` - the gene embedding (reference and new genes);
        * ``latent.npz`` - the query embeddings (z_C, z_T of the kept cells, the kept
          masks) and ``obs_names.json``, so a mapping loaded without its query sections
          still gives embeddings and imputation.

        Load with :meth:`load` (weights through ``torch.load(weights_only=True)``)."""
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise BrainAtlasInputError(f"{out} exists and is not a folder")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise BrainAtlasInputError(f"{out} is not empty")
        out.mkdir(parents=True, exist_ok=True)
        ref = self.reference
        ref_dir = ref.save(out / "reference", overwrite=True) if hasattr(ref, "save") else None
        if ref_dir is None:
            raise BrainAtlasInputError("the reference model cannot be saved")
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, out / "weights.pt")
        meta = {
            "format_version": QUERY_FORMAT_VERSION,
            "model": "FuseMapQueryMapping",
            "query_names": list(self.query_names),
            "panels": {n: list(self.module.section_genes[n]) for n in self.query_names},
            "genes": list(self.module.genes),
            "new_genes": list(self.new_genes),
            "adversarial": bool(self.adversarial),
            "cancelled": bool(self.cancelled),
        }
        (out / "query.json").write_text(json.dumps(meta, indent=1))
        (out / "history.json").write_text(json.dumps(self.history, indent=1, default=float))
        self.gene_embedding().to_csv(out / "genes.csv")
        lat = self._latent()
        arrays = {}
        for i, q in enumerate(self._q):
            arrays[f"cell_{i}"] = lat["cell"][i]
            arrays[f"tissue_{i}"] = lat["tissue"][i]
            arrays[f"kept_{i}"] = np.asarray(q.p.kept)
            arrays[f"n_obs_{i}"] = np.asarray(q.p.n_obs)
        np.savez_compressed(out / "latent.npz", **arrays)
        names = [list(map(str, self.obs_names(i))) for i in range(len(self.query_names))]
        (out / "obs_names.json").write_text(json.dumps(names))
        return out

    @classmethod
    def load(
        cls,
        path: str | Path,
        query_sections: list[AnnData] | None = None,
        reference_sections: list[AnnData] | None = None,
        device: str = "auto",
    ) -> QueryMapping:
        """Load a folder written by :meth:`save`.

        query_sections : the same query sections (same order); they are preprocessed again
            and their genes checked against the saved panels; then :meth:`write_embeddings`
            works. Without them the saved embeddings are used (``write_embeddings`` then
            needs the sections).
        reference_sections : passed to :meth:`FuseMap.load` for the reference model.
        """
        p = Path(path)
        try:
            meta = json.loads((p / "query.json").read_text())
            state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
            npz = np.load(p / "latent.npz", allow_pickle=False)
            obs_names = json.loads((p / "obs_names.json").read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise BrainAtlasInputError(f"cannot read query mapping folder {p}: {exc}") from exc
        if meta.get("model") != "FuseMapQueryMapping":
            raise BrainAtlasInputError(f"{p} is not a query mapping folder")
        reference = FuseMap.load(p / "reference", sections=reference_sections, device=device)
        module, ref_state, frozen = _freeze_copy(reference)
        names = list(meta["query_names"])
        dropout = float(reference.config.get("dropout", 0.2))
        for n in names:
            module.add_section(n, meta["panels"][n], dropout=dropout)
        if list(module.genes) != list(meta["genes"]):
            raise BrainAtlasInputError(f"{p}: gene list does not match the saved weights")
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise BrainAtlasInputError(f"{p}: weights do not fit the saved panels") from exc
        for prm in module.parameters():
            prm.requires_grad_(False)
        module.eval()
        if query_sections is not None:
            if isinstance(query_sections, AnnData):
                query_sections = [query_sections]
            query_sections = list(query_sections)
            if len(query_sections) != len(names):
                raise BrainAtlasInputError(
                    f"the mapping has {len(names)} query sections but "
                    f"{len(query_sections)} were given"
                )
            qdata = []
            for a, n in zip(query_sections, names):
                pr = preprocess_section(
                    a, n, min_cell_counts=reference.config.get("min_cell_counts", 5)
                )
                if list(pr.genes) != list(meta["panels"][n]):
                    raise BrainAtlasInputError(
                        f"query section {n!r} does not have the genes it was mapped with"
                    )
                empty = np.zeros(0, np.int64)
                qdata.append(_QData(n, pr, spatial_graph(pr.coords), empty, empty))
            adatas = query_sections
        else:
            qdata = [
                _StoredQuery(n, np.asarray(npz[f"kept_{i}"]), int(npz[f"n_obs_{i}"]))
                for i, n in enumerate(names)
            ]
            adatas = []
        self = cls(
            reference, module, names, adatas, qdata, list(meta["new_genes"]), ref_state, frozen
        )
        self.adversarial = bool(meta.get("adversarial", False))
        self.cancelled = bool(meta.get("cancelled", False))
        hist = p / "history.json"
        self.history = json.loads(hist.read_text()) if hist.exists() else []
        self._obs_names = obs_names
        if query_sections is None:
            self._cache = {
                "cell": [np.asarray(npz[f"cell_{i}"], np.float32) for i in range(len(names))],
                "tissue": [np.asarray(npz[f"tissue_{i}"], np.float32) for i in range(len(names))],
            }
        return self


def _warm_start(enc, genes: list[str], module, ref_names: list[str]) -> str | None:
    """Start a new query encoder from the reference encoder whose panel shares the most
    genes with it: every layer is copied; in the first Linear the columns of shared genes
    are copied and the columns of genes that reference encoder did not read start at 0.
    Returns the name of the reference section used (None when no gene is shared)."""
    best, n_best = None, 0
    for n in ref_names:
        k = len(set(genes) & set(module.section_genes[n]))
        if k > n_best:
            best, n_best = n, k
    if best is None:
        return None
    src = module.encoders[best]
    if src.net[0].out_features != enc.net[0].out_features:
        return None
    col = {g: i for i, g in enumerate(module.section_genes[best])}
    with torch.no_grad():
        sd = {k: v for k, v in src.state_dict().items() if not k.startswith("net.0.weight")}
        enc.load_state_dict(sd, strict=False)
        W = torch.zeros_like(enc.net[0].weight)
        for j, g in enumerate(genes):
            if g in col:
                W[:, j] = src.net[0].weight[:, col[g]]
        enc.net[0].weight.copy_(W)
    return best


def _anchor_sets(
    model: FuseMap,
    prepared,
    ref_lat,
    reference_sections=None,
    max_cells: int = 50000,
    seed: int = 0,
):
    """Per query section: (reference cells seen through the query's panel, their frozen
    reference z_C), or None. The reference counts of the query's genes (0 for genes a
    reference section lacks) get the query's preprocessing (normalise to the median
    total, log1p, scale without centring, clip 10), so the query encoder reads them as it
    reads query cells. Reference cells come from the sections the model holds, else from
    ``reference_sections`` (their ``obsm['X_fusemap_cell']`` rows that are finite); only
    integer counts are used, at most ``max_cells`` cells per reference section."""
    from ..fusemap._preprocess import (
        clean_gene_names,
        is_integer_matrix,
        normalize_log_scale,
    )

    rng = np.random.default_rng(seed)
    srcs = []  # (adata, kept rows, z_C of those rows)
    adatas = getattr(model, "adatas", None) or []
    refp = getattr(model, "prepared", None) or []
    if reference_sections is None and adatas and len(refp) == len(adatas) == len(ref_lat[0]):
        for a, rp, zc in zip(adatas, refp, ref_lat[0]):
            if rp.was_counts and len(zc) == rp.n_cells:
                srcs.append((a, rp.kept, zc))
    elif reference_sections is not None:
        for a in (
            [reference_sections] if isinstance(reference_sections, AnnData) else reference_sections
        ):
            z = np.asarray(a.obsm[CELL_KEY], np.float32)
            kept = np.flatnonzero(np.isfinite(z).all(1))
            src = a.layers.get("counts", a.X)
            if src is not None and len(kept) and is_integer_matrix(src):
                srcs.append((a, kept, z[kept]))
    if not srcs:
        return None
    out = []
    for p in prepared:
        if not p.was_counts:
            out.append(None)
            continue
        Xs, Zs = [], []
        for a, kept, zc in srcs:
            genes, cols = clean_gene_names(a.var_names)
            pos = {g: c for g, c in zip(genes, cols)}
            if len(set(p.genes) & set(pos)) < max(2, len(p.genes) // 2):
                continue
            rows = np.arange(len(kept))
            if len(rows) > max_cells:
                rows = np.sort(rng.choice(len(rows), max_cells, replace=False))
            Xq = counts_through_panel(a, kept[rows], p.genes)
            ok = Xq.sum(1) > 0
            Xs.append(normalize_log_scale(Xq[ok]))
            Zs.append(zc[rows][ok])
        out.append((np.concatenate(Xs), np.concatenate(Zs).astype(np.float32)) if Xs else None)
    return out


def _hold_out_anchors(anchors, seed: int, frac: float = 0.1, max_cells: int = 2000):
    """Split each section's anchor cells into (training, validation) sets."""
    rng = np.random.default_rng(seed + 7)
    train, val = [], []
    for a in anchors:
        if a is None or len(a[1]) < 20:
            train.append(a)
            val.append(None)
            continue
        Xa, Za = a
        perm = rng.permutation(len(Za))
        n_val = int(min(max(round(frac * len(Za)), 1), max_cells))
        tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        train.append((Xa[tr], Za[tr]))
        val.append((Xa[va], Za[va]))
    return train, val


@torch.no_grad()
def _anchor_val_loss(module, names, anchors_val, dev) -> float:
    """Mean over query sections of the anchor MSE of the held-out anchor cells (eval)."""
    losses = []
    for n, a in zip(names, anchors_val):
        if a is None:
            continue
        Xa, Za = a
        mu, _ = module.encode(n, torch.from_numpy(rows_dense(Xa, np.arange(len(Za)))).to(dev))
        losses.append(float(F.mse_loss(mu, torch.from_numpy(Za).to(dev))))
    return float(np.mean(losses)) if losses else 0.0


def _freeze_copy(model: FuseMap):
    ref_state = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
    module = copy.deepcopy(model.module)
    for p in module.parameters():
        p.requires_grad_(False)
    frozen = [
        k
        for k in ref_state
        if k == "gene_embedding" or k.startswith(("encoders.", "disc_cell.", "disc_tissue."))
    ]
    return module, ref_state, frozen


def map_query(
    model: FuseMap,
    query_sections: list[AnnData],
    *,
    reference_sections=None,
    section_names: list[str] | None = None,
    epochs: int = 15,
    adversarial: bool | str = "auto",
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int = 3,
    val_fraction: float = 0.15,
    seed: int = 0,
    init: str = "reference",
    min_steps: int = 60,
    anchor: float = 5.0,
    validate_anchor: bool = False,
    progress: Callable | None = None,
    cancel: Callable | None = None,
) -> QueryMapping:
    """Map ``query_sections`` onto the trained ``model`` (see the module docstring).

    Parameters
    ----------
    model : a trained :class:`~napari_brainatlas.fusemap.FuseMap` (also one loaded from a
        folder, with or without its sections).
    query_sections : AnnData or list (``obsm['spatial']``, counts or normalised values).
    reference_sections : reference AnnData holding ``obsm['X_fusemap_cell']`` and
        ``obsm['X_fusemap_tissue']`` (one per model section, in order) for the adversarial
        term when the model holds no sections.
    epochs : at most this many epochs (an epoch passes every training cell of the largest
        query section once).
    adversarial : True: use the adversarial term when reference embeddings are
        available; False: never; "auto" (default): only when the reference anchor cannot
        be used (no reference counts at hand), see the module docstring.
    init : "reference" (start each query encoder from the reference encoder sharing the
        most genes) or "random" (the paper).
    anchor : weight of the reference-anchor loss (0 = off, the paper); see the module
        docstring.
    validate_anchor : hold out 10 % of the anchor cells (at most 2,000 per section) and
        early-stop on the objective that is trained, validation AE loss + ``anchor`` x
        their anchor loss (False: the validation AE loss of the query cells alone, which
        stops while the anchor term still improves).
    min_steps : at least this many steps per epoch (60, as FuseMap's own floor). An epoch
        is otherwise one pass over the largest query section or anchor set, a handful of
        steps on small data: a Slide-seq query of 183 + 100 cells trained 15 steps in 3
        epochs, and its MLP label transfer fell from 0.87 to 0.81 against 75 steps (dev
        half of the embedding benchmark, issue 26). Was 0 (no floor).
    progress : ``progress(epoch, epochs, losses)`` after every epoch.
    cancel : ``cancel() -> bool`` polled before every step.
    """
    # dropout, sampling and shuffles draw from torch's global generator: fork and seed it
    # so a mapping depends on ``seed`` only, not on what ran before in the process
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _map_query(
            model,
            query_sections,
            reference_sections=reference_sections,
            section_names=section_names,
            epochs=epochs,
            adversarial=adversarial,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            val_fraction=val_fraction,
            seed=seed,
            init=init,
            min_steps=min_steps,
            anchor=anchor,
            validate_anchor=validate_anchor,
            progress=progress,
            cancel=cancel,
        )


def _map_query(
    model,
    query_sections,
    *,
    reference_sections,
    section_names,
    epochs,
    adversarial,
    batch_size,
    lr,
    patience,
    val_fraction,
    seed,
    init,
    min_steps,
    anchor,
    validate_anchor=False,
    progress=None,
    cancel=None,
) -> QueryMapping:
    if not isinstance(model, FuseMap):
        raise BrainAtlasInputError("map_query needs a trained FuseMap model")
    if not (isinstance(adversarial, (bool, np.bool_)) or adversarial == "auto"):
        raise BrainAtlasInputError(
            f"adversarial must be True, False or 'auto', not {adversarial!r}"
        )
    if init not in ("reference", "random"):
        raise BrainAtlasInputError(f"init must be 'reference' or 'random', not {init!r}")
    if isinstance(query_sections, AnnData):
        query_sections = [query_sections]
    query_sections = list(query_sections)
    if not query_sections:
        raise BrainAtlasInputError("give at least one query section")
    if section_names is not None and len(section_names) != len(query_sections):
        raise BrainAtlasInputError("give one name per query section")
    cfg = model.config
    dev = model.device
    B = int(batch_size or cfg.get("batch_size", 64))
    lr = float(lr or cfg.get("lr", 1e-3))
    names = _query_names(query_sections, section_names, set(model.module.section_names))
    mc = cfg.get("min_cell_counts", 5)
    prepared = [preprocess_section(a, n, min_cell_counts=mc) for a, n in zip(query_sections, names)]

    ref_lat = reference_latents(model, reference_sections) if adversarial or anchor > 0 else None
    anchors = (
        _anchor_sets(model, prepared, ref_lat, reference_sections, seed=seed)
        if anchor > 0 and ref_lat is not None
        else None
    )
    has_anchor = bool(anchors) and any(a is not None for a in anchors)
    anchors_val = None
    if has_anchor and validate_anchor:
        anchors, anchors_val = _hold_out_anchors(anchors, seed)
    want_adv = (not has_anchor) if adversarial == "auto" else bool(adversarial)
    use_adv = want_adv and ref_lat is not None and len(ref_lat[0]) > 0

    module, ref_state, frozen = _freeze_copy(model)
    n_ref_genes = len(module.genes)
    known = set(module.genes)
    new_genes = [g for g in dict.fromkeys(g for p in prepared for g in p.genes) if g not in known]
    overlap = [len(set(p.genes) & known) for p in prepared]
    if min(overlap) == 0:
        raise BrainAtlasInputError("a query section shares no gene with the reference model")

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in prepared:
            enc = module.add_section(p.name, p.genes, dropout=float(cfg.get("dropout", 0.2)))
            if init == "reference":
                _warm_start(enc, p.genes, module, model.section_names)
        # new encoders trainable (add_section creates them with requires_grad True)
        E_ref = module.gene_embedding.detach()[:n_ref_genes].clone()
        E_new = nn.Parameter(module.gene_embedding.detach()[n_ref_genes:].clone())
        n_all = len(ref_lat[0]) + len(prepared) if use_adv else 0
        heads = []
        if use_adv:
            for disc in (module.disc_cell, module.disc_tissue):
                last = disc.net[-1]
                head = nn.Linear(last.in_features, n_all).to(dev)
                with torch.no_grad():
                    head.weight[: last.out_features] = last.weight
                    head.bias[: last.out_features] = last.bias
                heads.append(head)
    enc_params = [p for n in names for p in module.encoders[n].parameters()]
    for p in enc_params:
        p.requires_grad_(True)
    ae_params = enc_params + ([E_new] if len(new_genes) else [])
    disc_params = [p for h in heads for p in h.parameters()]

    qdata = []
    for p in prepared:
        A = spatial_graph(p.coords)
        perm = rng.permutation(p.n_cells)
        n_val = round(val_fraction * p.n_cells) if p.n_cells > 10 else 0
        qdata.append(_QData(p.name, p, A, np.sort(perm[n_val:]), np.sort(perm[:n_val])))

    mapping = QueryMapping(
        model, module, names, query_sections, qdata, new_genes, ref_state, frozen
    )
    mapping.adversarial = use_adv
    mapping.reference_sections = (
        None
        if reference_sections is None
        else [reference_sections]
        if isinstance(reference_sections, AnnData)
        else list(reference_sections)
    )
    mapping.anchored = has_anchor

    def E_full():
        return torch.cat([E_ref, E_new], 0) if len(new_genes) else E_ref

    def forward(q: _QData, seeds, sample: bool):
        seeds = np.sort(seeds)
        n2, A1, A0, s1, s2 = gather_subgraph(q.A, seeds)
        x2 = torch.from_numpy(rows_dense(q.p.X, n2)).to(dev)
        mu, std = module.encode(q.name, x2)
        z = mu + std * torch.randn(mu.shape, generator=gen).to(dev) if sample else mu
        A1t = to_torch_sparse(A1, dev)
        h = torch.sparse.mm(to_torch_sparse(A0, dev), torch.sparse.mm(A1t, z))
        E = E_full().index_select(0, module.gene_rows(q.name))
        xhat = torch.relu(h @ E.t())
        s2t = torch.from_numpy(s2).to(dev)
        recon = F.mse_loss(xhat, x2.index_select(0, s2t))
        mu_s, std_s = mu.index_select(0, s2t), std.index_select(0, s2t)
        kl = (0.5 * (mu_s.pow(2) + std_s.pow(2) - 1.0) - torch.log(std_s)).sum(1).mean()
        kl = kl / x2.shape[1]
        zt = torch.sparse.mm(A1t, mu).index_select(0, torch.from_numpy(s1).to(dev))
        return recon + kl, mu_s, zt

    soft = bool(cfg.get("softmax_ce", True))

    def ce(logits, y):
        if soft:
            logits = torch.softmax(logits, 1)
        return F.cross_entropy(logits, y)

    def disc_logits(which: int, z):
        disc = (module.disc_cell, module.disc_tissue)[which]
        return heads[which](disc.net[:-1](z))

    opt_ae = torch.optim.RMSprop(ae_params, lr=lr)
    opt_d = torch.optim.RMSprop(disc_params, lr=lr) if use_adv else None
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_ae, mode="min", factor=0.5, patience=2)
    lam = None
    best, bad = math.inf, 0
    n_epoch_cells = max(len(q.train) for q in qdata)
    if mapping.anchored:
        n_epoch_cells = max(n_epoch_cells, max(len(a[1]) for a in anchors if a is not None))
    n_steps = max(1, int(min_steps), math.ceil(n_epoch_cells / B))
    module.eval()  # reference encoders: running BN statistics, no dropout
    for ep in range(int(epochs)):
        for n in names:
            module.encoders[n].train()
        for d in (module.disc_cell, module.disc_tissue):
            d.train()  # dropout only; the frozen trunks have no buffers
        shards = [rng.permutation(q.train) for q in qdata]
        ptr = [0] * len(qdata)
        acc: dict[str, float] = {}
        for _ in range(n_steps):
            if cancel is not None and cancel():
                mapping.cancelled = True
                break
            aes, zcs, zts, ys = [], [], [], []
            for v, q in enumerate(qdata):
                sh = shards[v]
                if ptr[v] + B > len(sh):
                    shards[v] = sh = rng.permutation(q.train)
                    ptr[v] = 0
                seeds = np.unique(sh[ptr[v] : ptr[v] + B])
                ptr[v] += B
                a, zc, zt = forward(q, seeds, True)
                aes.append(a)
                zcs.append(zc)
                zts.append(zt)
                if use_adv:
                    ys.append(torch.full((len(seeds),), len(ref_lat[0]) + v, dtype=torch.long))
            ae = torch.stack(aes).mean()
            logs = {"ae": float(ae.detach())}
            if mapping.anchored:
                anc = []
                for v, q in enumerate(qdata):
                    if anchors[v] is None:
                        continue
                    Xa, Za = anchors[v]
                    pick = np.sort(rng.choice(len(Za), min(B, len(Za)), replace=False))
                    mu_a, _ = module.encode(q.name, torch.from_numpy(rows_dense(Xa, pick)).to(dev))
                    anc.append(F.mse_loss(mu_a, torch.from_numpy(Za[pick]).to(dev)))
                anc_loss = torch.stack(anc).mean()
                logs["anchor"] = float(anc_loss.detach())
                ae = ae + float(anchor) * anc_loss
            if use_adv:
                rzc, rzt, ry = [], [], []
                for r, (c, t) in enumerate(zip(*ref_lat)):
                    pick = rng.choice(len(c), min(B, len(c)), replace=False)
                    rzc.append(torch.from_numpy(c[pick]))
                    rzt.append(torch.from_numpy(t[pick]))
                    ry.append(torch.full((len(pick),), r, dtype=torch.long))
                qzc, qzt = torch.cat(zcs), torch.cat(zts)
                yq = torch.cat(ys).to(dev)
                y_all = torch.cat(ry + [torch.cat(ys)]).to(dev)
                zc_all = torch.cat([torch.cat(rzc).to(dev), qzc.detach()])
                zt_all = torch.cat([torch.cat(rzt).to(dev), qzt.detach()])
                d_loss = ce(disc_logits(0, zc_all), y_all) + ce(disc_logits(1, zt_all), y_all)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                adv = ce(disc_logits(0, qzc), yq) + ce(disc_logits(1, qzt), yq)
                if lam is None:
                    lam = float(
                        cfg.get("adv_ratio", 0.5)
                        * float(ae.detach())
                        / max(abs(float(adv.detach())), 1e-8)
                    )
                loss = ae - lam * adv
                logs.update(disc=float(d_loss.detach()), adv=float(adv.detach()))
            else:
                loss = ae
            opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            opt_ae.step()
            for k, v in logs.items():
                acc[k] = acc.get(k, 0.0) + v / n_steps
        if mapping.cancelled:
            break
        module.eval()
        with torch.no_grad():
            tot, cnt = 0.0, 0
            for q in qdata:
                idx = q.val if len(q.val) else q.train
                for i in range(0, len(idx), 1024):
                    a, _, _ = forward(q, idx[i : i + 1024], False)
                    tot += float(a) * len(idx[i : i + 1024])
                    cnt += len(idx[i : i + 1024])
        val = tot / max(cnt, 1)
        if anchors_val is not None:
            val += float(anchor) * _anchor_val_loss(module, names, anchors_val, dev)
        sched.step(val)
        rec = dict(
            phase="query", epoch=ep + 1, val_loss=val, lr=opt_ae.param_groups[0]["lr"], **acc
        )
        if lam is not None:
            rec["lambda"] = lam
        mapping.history.append(rec)
        if progress is not None:
            progress(ep + 1, int(epochs), dict(rec))
        if val < best - 1e-6:
            best, bad = val, 0
        else:
            bad += 1
            if bad >= patience:
                break
    module.eval()
    # the trained new gene rows go into the copied module's embedding (still frozen)
    module.gene_embedding = nn.Parameter(E_full().detach().clone(), requires_grad=False)
    for p in enc_params:
        p.requires_grad_(False)
    mapping._disc_heads = heads
    mapping._cache = None
    return mapping
