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
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn

from .._errors import BrainAtlasInputError, Cancelled
from ..fusemap import CELL_KEY, TISSUE_KEY, FuseMap
from ..fusemap.data import (
    clean_gene_names,
    gather_subgraph,
    is_integer_matrix,
    normalize_log_scale,
    preprocess_section,
    rows_dense,
    spatial_graph,
    to_torch_sparse,
)
from ..models import (
    WEIGHTS,
    ModelFolder,
    TrainableModel,
    early_stop_text,
    load_state,
    resolve_settings,
    save_state,
    settings_from_dict,
    settings_to_dict,
)
from .panel import counts_through_panel
from .settings import QueryMappingSettings

__all__ = ["QueryMapping", "QueryMappingSettings", "map_query", "reference_latents"]

#: format of the folder written by :meth:`QueryMapping.save` (1: before the shared layout)
QUERY_FORMAT_VERSION = 2


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


class QueryMapping(TrainableModel):
    """Query sections mapped onto a frozen FuseMap reference (see the module docstring).

    ``QueryMapping(model, query_sections, ...)`` prepares the mapping (query encoders,
    new gene rows, discriminator heads, anchors); :meth:`train` trains it;
    :func:`map_query` does both. The model protocol (:mod:`napari_brainatlas.models`):
    :meth:`train`, :attr:`history`, :attr:`is_trained`, :meth:`save`, :meth:`load`.

    Parameters
    ----------
    model : a trained :class:`~napari_brainatlas.fusemap.FuseMap` (also one loaded from a
        folder, with or without its sections); never modified.
    query_sections : AnnData or list (``obsm['spatial']``, counts or normalised values);
        never modified (:meth:`write_embeddings` returns copies).
    reference_sections : reference AnnData holding ``obsm['X_fusemap_cell']`` and
        ``obsm['X_fusemap_tissue']`` (one per model section, in order), for the
        adversarial term and the anchor when the model holds no sections.
    section_names : names of the query sections (default ``obs['section']`` or
        ``query{i}``; made unique against the reference's names).
    settings : :class:`~napari_brainatlas.annotate.QueryMappingSettings`.
    seed : seeds every random choice of the mapping.
    **options : settings fields as keywords (``epochs=5, anchor=0``).

    Attributes: ``reference`` (the FuseMap, untouched), ``module`` (a copy extended with
    the query encoders and new gene rows), ``query_names``, ``adatas`` (the query
    AnnData), ``new_genes``, ``history``, ``adversarial``, ``anchored``, ``frozen``
    (names of the frozen tensors), ``settings``, ``seed``.
    """

    format_version = QUERY_FORMAT_VERSION
    accepted_versions = (1, QUERY_FORMAT_VERSION)

    def __init__(
        self,
        model: FuseMap,
        query_sections,
        *,
        reference_sections=None,
        section_names: list[str] | None = None,
        settings: QueryMappingSettings | None = None,
        seed: int = 0,
        **options,
    ):
        self.settings = resolve_settings(QueryMappingSettings, settings, options, "query mapping")
        self.seed = int(seed)
        # nothing here draws from torch's global generator outside the seeded fork below;
        # the fork keeps the caller's generator as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._setup(model, query_sections, reference_sections, section_names)

    def _setup(self, model, query_sections, reference_sections, section_names) -> None:
        if not isinstance(model, FuseMap):
            raise BrainAtlasInputError("map_query needs a trained FuseMap model")
        if isinstance(query_sections, AnnData):
            query_sections = [query_sections]
        query_sections = list(query_sections)
        if not query_sections:
            raise BrainAtlasInputError("give at least one query section")
        if section_names is not None and len(section_names) != len(query_sections):
            raise BrainAtlasInputError("give one name per query section")
        s, seed = self.settings, self.seed
        names = _query_names(query_sections, section_names, set(model.module.section_names))
        mc = model.settings.min_cell_counts
        prepared = [
            preprocess_section(a, n, min_cell_counts=mc) for a, n in zip(query_sections, names)
        ]
        ref_lat = (
            reference_latents(model, reference_sections) if s.adversarial or s.anchor > 0 else None
        )
        anchors = (
            _anchor_sets(model, prepared, ref_lat, reference_sections, seed=seed)
            if s.anchor > 0 and ref_lat is not None
            else None
        )
        has_anchor = bool(anchors) and any(a is not None for a in anchors)
        self._anchors_val = None
        if has_anchor and s.validate_anchor:
            anchors, self._anchors_val = _hold_out_anchors(anchors, seed)
        want_adv = (not has_anchor) if s.adversarial == "auto" else bool(s.adversarial)
        use_adv = want_adv and ref_lat is not None and len(ref_lat[0]) > 0
        module, ref_state, frozen = _freeze_copy(model)
        known = set(module.genes)
        new_genes = [
            g for g in dict.fromkeys(g for p in prepared for g in p.genes) if g not in known
        ]
        if min(len(set(p.genes) & known) for p in prepared) == 0:
            raise BrainAtlasInputError("a query section shares no gene with the reference model")
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)
        self._n_ref_genes = len(module.genes)
        dropout = float(model.settings.dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for p in prepared:
                enc = module.add_section(p.name, p.genes, dropout=dropout)
                if s.init == "reference":
                    _warm_start(enc, p.genes, module, model.section_names)
            heads = _adversarial_heads(module, len(ref_lat[0]) + len(prepared)) if use_adv else []
        qdata = []
        for p in prepared:
            perm = self._rng.permutation(p.n_cells)
            n_val = round(s.val_fraction * p.n_cells) if p.n_cells > 10 else 0
            A = spatial_graph(p.coords)
            qdata.append(_QData(p.name, p, A, np.sort(perm[n_val:]), np.sort(perm[:n_val])))
        self._assemble(model, module, names, query_sections, qdata, new_genes, ref_state, frozen)
        self.adversarial, self.anchored = use_adv, has_anchor
        self._ref_lat, self._anchors, self._disc_heads = ref_lat, anchors, heads
        if reference_sections is not None:
            self.reference_sections = (
                [reference_sections]
                if isinstance(reference_sections, AnnData)
                else list(reference_sections)
            )

    def _assemble(self, reference, module, names, adatas, qdata, new_genes, ref_state, frozen):
        self.reference = reference
        self.module = module
        self.query_names = names
        self.adatas = adatas
        self._q = qdata
        self.new_genes = new_genes
        self._ref_state = ref_state
        self.frozen = frozen
        self.history = []
        self.is_trained = False
        self.adversarial = False
        self.anchored = False
        self.reference_sections: list[AnnData] | None = None
        self.cancelled = False
        self._lambda: float | None = None
        self._cache: dict | None = None
        self._obs_names: list | None = None
        self._disc_heads: list = []

    @property
    def device(self):
        return self.reference.device

    # ------------------------------------------------------------------ training
    def train(
        self,
        epochs: int | None = None,
        *,
        progress: Callable | None = None,
        cancel: Callable | None = None,
    ) -> list[dict]:
        """Train the query encoders (and the new gene rows) against the frozen reference.

        epochs : at most this many epochs (default ``settings.epochs``); early stopping
            after ``settings.patience`` epochs without a better validation loss.
        progress : ``progress(done, total, info)`` after every epoch (``info``: phase,
            epoch, val_loss, lr, ae, anchor / disc / adv where used, lambda).
        cancel : ``cancel() -> bool`` polled before every step; True raises
            :class:`~napari_brainatlas.Cancelled`. The mapping then holds the query
            encoders and new gene rows reached (usable for embeddings), ``history`` the
            finished epochs, ``cancelled`` True, ``is_trained`` what it was before.

        Returns :attr:`history`. A later call goes on from the weights reached.
        """
        if not hasattr(self, "_rng"):
            raise BrainAtlasInputError(
                "a loaded query mapping cannot be trained further: map the query again"
            )
        n_epochs = int(self.settings.epochs if epochs is None else epochs)
        self.cancelled = False
        was_trained = self.is_trained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + len(self.history))
            self._train_epochs(n_epochs, progress, cancel)
        if self.cancelled:
            self.is_trained = was_trained
            raise Cancelled("query mapping cancelled")
        self.is_trained = True
        return self.history

    def _train_epochs(self, n_epochs: int, progress, cancel) -> None:
        module, cfg = self.module, self.reference.settings
        B = int(self.settings.batch_size or cfg.batch_size)
        lr = float(self.settings.lr or cfg.lr)
        n_ref = self._n_ref_genes
        self._E_ref = module.gene_embedding.detach()[:n_ref].clone()
        self._E_new = nn.Parameter(module.gene_embedding.detach()[n_ref:].clone())
        enc_params = [p for n in self.query_names for p in module.encoders[n].parameters()]
        for p in enc_params:
            p.requires_grad_(True)
        ae_params = enc_params + ([self._E_new] if len(self.new_genes) else [])
        opt_ae = torch.optim.RMSprop(ae_params, lr=lr)
        opt_d = None
        if self.adversarial:
            disc_params = [p for h in self._disc_heads for p in h.parameters()]
            opt_d = torch.optim.RMSprop(disc_params, lr=lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt_ae, mode="min", factor=0.5, patience=2
        )
        n_epoch_cells = max(len(q.train) for q in self._q)
        if self.anchored:
            n_epoch_cells = max(
                n_epoch_cells, max(len(a[1]) for a in self._anchors if a is not None)
            )
        n_steps = max(1, self.settings.min_steps, math.ceil(n_epoch_cells / B))
        best, bad, e0 = math.inf, 0, len(self.history)
        module.eval()  # reference encoders: running BN statistics, no dropout
        try:
            for ep in range(n_epochs):
                acc = self._epoch(B, n_steps, opt_ae, opt_d, cancel)
                if acc is None:
                    break
                module.eval()
                val = self._validate()
                sched.step(val)
                rec = dict(
                    phase="query",
                    epoch=e0 + ep + 1,
                    val_loss=val,
                    lr=opt_ae.param_groups[0]["lr"],
                    **acc,
                )
                if self._lambda is not None:
                    rec["lambda"] = self._lambda
                improved = val < best - 1e-6
                best, bad = (val, 0) if improved else (best, bad + 1)
                if not improved and bad >= self.settings.patience and ep + 1 < n_epochs:
                    rec["stopped"] = early_stop_text(
                        "query mapping", ep + 1, n_epochs, self.settings.patience
                    )
                self.history.append(rec)
                if progress is not None:
                    progress(ep + 1, n_epochs, dict(rec))
                if "stopped" in rec:
                    break
        finally:
            module.eval()
            # the trained new gene rows go into the copied module's embedding (frozen)
            module.gene_embedding = nn.Parameter(
                self._embedding_rows().detach().clone(), requires_grad=False
            )
            for p in enc_params:
                p.requires_grad_(False)
            self._cache = None

    def _embedding_rows(self):
        if len(self.new_genes):
            return torch.cat([self._E_ref, self._E_new], 0)
        return self._E_ref

    def _epoch(self, B, n_steps, opt_ae, opt_d, cancel) -> dict | None:
        """One epoch of steps; the mean of each logged loss, or None when cancelled."""
        module, rng = self.module, self._rng
        for n in self.query_names:
            module.encoders[n].train()
        for d in (module.disc_cell, module.disc_tissue):
            d.train()  # dropout only; the frozen trunks have no buffers
        shards = [rng.permutation(q.train) for q in self._q]
        ptr = [0] * len(self._q)
        acc: dict[str, float] = {}
        for _ in range(n_steps):
            if cancel is not None and cancel():
                self.cancelled = True
                return None
            seeds = []
            for v, q in enumerate(self._q):
                if ptr[v] + B > len(shards[v]):
                    shards[v] = rng.permutation(q.train)
                    ptr[v] = 0
                seeds.append(np.unique(shards[v][ptr[v] : ptr[v] + B]))
                ptr[v] += B
            for k, v in self._step(seeds, B, opt_ae, opt_d).items():
                acc[k] = acc.get(k, 0.0) + v / n_steps
        return acc

    def _step(self, seeds_per_section, B, opt_ae, opt_d) -> dict:
        """One optimisation step: AE (+ anchor) loss, then the adversarial min-max."""
        dev, rng = self.device, self._rng
        aes, zcs, zts, ys = [], [], [], []
        n_ref_sections = len(self._ref_lat[0]) if self.adversarial else 0
        for v, (q, seeds) in enumerate(zip(self._q, seeds_per_section)):
            a, zc, zt = self._forward(q, seeds, True)
            aes.append(a)
            zcs.append(zc)
            zts.append(zt)
            if self.adversarial:
                ys.append(torch.full((len(seeds),), n_ref_sections + v, dtype=torch.long))
        ae = torch.stack(aes).mean()
        logs = {"ae": float(ae.detach())}
        if self.anchored:
            anc = []
            for v, q in enumerate(self._q):
                if self._anchors[v] is None:
                    continue
                Xa, Za = self._anchors[v]
                pick = np.sort(rng.choice(len(Za), min(B, len(Za)), replace=False))
                x = torch.from_numpy(rows_dense(Xa, pick)).to(dev)
                mu_a, _ = self.module.encode(q.name, x)
                anc.append(F.mse_loss(mu_a, torch.from_numpy(Za[pick]).to(dev)))
            anc_loss = torch.stack(anc).mean()
            logs["anchor"] = float(anc_loss.detach())
            ae = ae + float(self.settings.anchor) * anc_loss
        if self.adversarial:
            loss = self._adversarial_loss(ae, zcs, zts, ys, B, opt_d, logs)
        else:
            loss = ae
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        return logs

    def _adversarial_loss(self, ae, zcs, zts, ys, B, opt_d, logs):
        """One step of the new discriminator heads on reference vs query cells, then the
        query encoders' loss ``AE - lambda * CE``."""
        dev, rng = self.device, self._rng
        rzc, rzt, ry = [], [], []
        for r, (c, t) in enumerate(zip(*self._ref_lat)):
            pick = rng.choice(len(c), min(B, len(c)), replace=False)
            rzc.append(torch.from_numpy(c[pick]))
            rzt.append(torch.from_numpy(t[pick]))
            ry.append(torch.full((len(pick),), r, dtype=torch.long))
        qzc, qzt = torch.cat(zcs), torch.cat(zts)
        yq = torch.cat(ys).to(dev)
        y_all = torch.cat(ry + [torch.cat(ys)]).to(dev)
        zc_all = torch.cat([torch.cat(rzc).to(dev), qzc.detach()])
        zt_all = torch.cat([torch.cat(rzt).to(dev), qzt.detach()])
        d_loss = self._ce(self._disc_logits(0, zc_all), y_all) + self._ce(
            self._disc_logits(1, zt_all), y_all
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        adv = self._ce(self._disc_logits(0, qzc), yq) + self._ce(self._disc_logits(1, qzt), yq)
        if self._lambda is None:
            ratio = self.reference.settings.adv_ratio
            self._lambda = float(ratio * float(ae.detach()) / max(abs(float(adv.detach())), 1e-8))
        logs.update(disc=float(d_loss.detach()), adv=float(adv.detach()))
        return ae - self._lambda * adv

    def _ce(self, logits, y):
        if self.reference.settings.softmax_ce:
            logits = torch.softmax(logits, 1)
        return F.cross_entropy(logits, y)

    def _disc_logits(self, which: int, z):
        disc = (self.module.disc_cell, self.module.disc_tissue)[which]
        return self._disc_heads[which](disc.net[:-1](z))

    def _forward(self, q: _QData, seeds, sample: bool):
        """AE loss (reconstruction from ``A z_T`` through the frozen known gene rows + KL)
        of seed cells, with their z_C means and z_T."""
        dev, module = self.device, self.module
        seeds = np.sort(seeds)
        n2, A1, A0, s1, s2 = gather_subgraph(q.A, seeds)
        x2 = torch.from_numpy(rows_dense(q.p.X, n2)).to(dev)
        mu, std = module.encode(q.name, x2)
        z = mu + std * torch.randn(mu.shape, generator=self._gen).to(dev) if sample else mu
        A1t = to_torch_sparse(A1, dev)
        h = torch.sparse.mm(to_torch_sparse(A0, dev), torch.sparse.mm(A1t, z))
        E = self._embedding_rows().index_select(0, module.gene_rows(q.name))
        xhat = torch.relu(h @ E.t())
        s2t = torch.from_numpy(s2).to(dev)
        recon = F.mse_loss(xhat, x2.index_select(0, s2t))
        mu_s, std_s = mu.index_select(0, s2t), std.index_select(0, s2t)
        kl = (0.5 * (mu_s.pow(2) + std_s.pow(2) - 1.0) - torch.log(std_s)).sum(1).mean()
        kl = kl / x2.shape[1]
        zt = torch.sparse.mm(A1t, mu).index_select(0, torch.from_numpy(s1).to(dev))
        return recon + kl, mu_s, zt

    @torch.no_grad()
    def _validate(self) -> float:
        tot, cnt = 0.0, 0
        for q in self._q:
            idx = q.val if len(q.val) else q.train
            for i in range(0, len(idx), 1024):
                a, _, _ = self._forward(q, idx[i : i + 1024], False)
                tot += float(a) * len(idx[i : i + 1024])
                cnt += len(idx[i : i + 1024])
        val = tot / max(cnt, 1)
        if getattr(self, "_anchors_val", None) is not None:
            val += self.settings.anchor * _anchor_val_loss(
                self.module, self.query_names, self._anchors_val, self.device
            )
        return val

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
        """Query sections with ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']`` and
        ``uns['fusemap_query']``: new AnnData objects by default (``copy=True``, as every
        model; the given sections are left alone); ``copy=False`` writes into the given
        objects and returns them."""
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
    def _write_files(self, folder: Path) -> dict:
        """The mapping folder (the shared model layout):

        * ``reference/`` - the reference model's folder (:meth:`FuseMap.save` layout);
        * ``weights.pt`` - the state_dict of the extended module (reference tensors, query
          encoders, gene embedding with the new rows);
        * ``genes.csv`` - the gene embedding (reference and new genes);
        * ``panels.csv`` - the query sections' gene panels (section, gene);
        * ``latent.npz`` - the query embeddings (z_C, z_T of the kept cells, the kept
          masks) and ``obs_names.csv`` (section, obs_name), so a mapping loaded without
          its query sections still gives embeddings and imputation;
        * ``config.json`` (settings, seed, names, new genes, flags), ``history.json``."""
        self.reference.write_folder(folder / "reference")
        save_state(self.module, folder / WEIGHTS)
        self.gene_embedding().to_csv(folder / "genes.csv")
        rows = [(n, g) for n in self.query_names for g in self.module.section_genes[n]]
        pd.DataFrame(rows, columns=["section", "gene"]).to_csv(folder / "panels.csv", index=False)
        lat = self._latent()
        arrays = {}
        for i, q in enumerate(self._q):
            arrays[f"cell_{i}"] = lat["cell"][i]
            arrays[f"tissue_{i}"] = lat["tissue"][i]
            arrays[f"kept_{i}"] = np.asarray(q.p.kept)
            arrays[f"n_obs_{i}"] = np.asarray(q.p.n_obs)
        np.savez_compressed(folder / "latent.npz", **arrays)
        obs = [(n, str(o)) for i, n in enumerate(self.query_names) for o in self.obs_names(i)]
        pd.DataFrame(obs, columns=["section", "obs_name"]).to_csv(
            folder / "obs_names.csv", index=False
        )
        return {
            "settings": settings_to_dict(self.settings),
            "seed": self.seed,
            "query_names": list(self.query_names),
            "new_genes": list(self.new_genes),
            "adversarial": bool(self.adversarial),
            "anchored": bool(self.anchored),
            "cancelled": bool(self.cancelled),
            "is_trained": self.is_trained,
        }

    @classmethod
    def load(
        cls,
        path: str | Path,
        query_sections: list[AnnData] | None = None,
        reference_sections: list[AnnData] | None = None,
        device: str = "auto",
    ) -> QueryMapping:
        """Load a folder written by :meth:`save` (or by an older version, format 1).

        query_sections : the same query sections (same order); they are preprocessed again
            and their genes checked against the saved panels; then :meth:`write_embeddings`
            works. Without them the saved embeddings are used (``write_embeddings`` then
            needs the sections).
        reference_sections : passed to :meth:`FuseMap.load` for the reference model.

        A loaded mapping gives embeddings and imputation; it is not trained further.
        """
        return super().load(
            path,
            query_sections=query_sections,
            reference_sections=reference_sections,
            device=device,
        )

    @classmethod
    def _legacy_config(cls, folder: ModelFolder) -> dict | None:
        """Format 1: query.json (names, panels, genes, flags), obs_names.json."""
        if folder.has("config.json") or not folder.has("query.json"):
            return None
        meta = folder.json("query.json")
        if meta.get("model") != "FuseMapQueryMapping":
            raise folder.error("query.json", "does not describe a query mapping")
        missing = [k for k in ("query_names", "panels", "genes", "new_genes") if k not in meta]
        if missing:
            raise folder.error("query.json", f"lacks the key {missing[0]!r}")
        names = [str(n) for n in meta["query_names"]]
        if set(names) - set(meta["panels"]):
            raise folder.error("query.json", "has no panel for a query section")
        return {
            **meta,
            "format_version": 1,
            "settings": {},
            "seed": 0,
            "is_trained": not meta.get("cancelled", False),
            "_panels": {n: list(meta["panels"][n]) for n in names},
            "_obs_names": folder.json("obs_names.json", list),
        }

    @classmethod
    def _from_folder(
        cls, folder, cfg, query_sections=None, reference_sections=None, device="auto"
    ) -> QueryMapping:
        for k in ("seed", "query_names", "new_genes"):
            if k not in cfg:
                raise folder.error("config.json", f"lacks the key {k!r}")
        # options added after a folder was written: what it was trained with
        values = {"min_steps": 0, "validate_anchor": False, **cfg["settings"]}
        settings = settings_from_dict(QueryMappingSettings, values, folder)
        names = [str(n) for n in cfg["query_names"]]
        legacy = "_panels" in cfg
        if legacy:
            panels, genes = cfg["_panels"], [str(g) for g in cfg["genes"]]
            obs_names = cfg["_obs_names"]
            history = folder.history() if folder.has("history.json") else []
        else:
            panels, genes, obs_names = _read_query_tables(folder, names)
            history = folder.history()
        state = folder.weights()
        npz = _read_latent(folder, len(names), obs_names)
        reference = FuseMap.load(
            folder.path / "reference", sections=reference_sections, device=device
        )
        module, ref_state, frozen = _freeze_copy(reference)
        dropout = float(reference.settings.dropout)
        for n in names:
            module.add_section(n, panels[n], dropout=dropout)
        if list(module.genes) != genes:
            raise folder.error(
                "genes.csv" if not legacy else "query.json",
                "does not list the genes of the reference and the query panels",
            )
        load_state(module, state, folder)
        for prm in module.parameters():
            prm.requires_grad_(False)
        module.eval()
        if query_sections is not None:
            mc = reference.settings.min_cell_counts
            adatas, qdata = _attach_queries(query_sections, names, panels, mc)
        else:
            qdata = [
                _StoredQuery(n, np.asarray(npz[f"kept_{i}"]), int(npz[f"n_obs_{i}"]))
                for i, n in enumerate(names)
            ]
            adatas = []
        self = cls.__new__(cls)
        self.settings, self.seed = settings, int(cfg["seed"])
        self._assemble(
            reference, module, names, adatas, qdata, list(cfg["new_genes"]), ref_state, frozen
        )
        self.adversarial = bool(cfg.get("adversarial", False))
        self.anchored = bool(cfg.get("anchored", False))
        self.cancelled = bool(cfg.get("cancelled", False))
        self.is_trained = bool(cfg.get("is_trained", True))
        self.history = history
        self._obs_names = obs_names
        if query_sections is None:
            self._cache = {
                "cell": [np.asarray(npz[f"cell_{i}"], np.float32) for i in range(len(names))],
                "tissue": [np.asarray(npz[f"tissue_{i}"], np.float32) for i in range(len(names))],
            }
        return self


def _read_query_tables(folder: ModelFolder, names: list[str]):
    """Genes (genes.csv), query panels (panels.csv) and cell names (obs_names.csv)."""
    emb = folder.csv("genes.csv", keep_default_na=False, dtype={0: str})
    genes = [str(g) for g in emb.iloc[:, 0]]
    pan = folder.csv("panels.csv", dtype=str, keep_default_na=False)
    if list(pan.columns) != ["section", "gene"]:
        raise folder.error("panels.csv", "does not have the columns section, gene")
    panels = {n: list(g["gene"]) for n, g in pan.groupby("section", sort=False)}
    if set(names) - set(panels):
        raise folder.error("panels.csv", "has no panel for a query section")
    obs = folder.csv("obs_names.csv", dtype=str, keep_default_na=False)
    if list(obs.columns) != ["section", "obs_name"]:
        raise folder.error("obs_names.csv", "does not have the columns section, obs_name")
    by = {n: list(g["obs_name"]) for n, g in obs.groupby("section", sort=False)}
    return panels, genes, [by.get(n, []) for n in names]


def _read_latent(folder: ModelFolder, n: int, obs_names) -> dict:
    keys = [f"{k}_{i}" for i in range(n) for k in ("cell", "tissue", "kept", "n_obs")]
    npz = folder.npz("latent.npz", keys)
    for i in range(n):
        if i >= len(obs_names) or int(npz[f"n_obs_{i}"]) != len(obs_names[i]):
            raise folder.error("latent.npz", "does not match the saved cell names")
    return npz


def _attach_queries(query_sections, names, panels, min_cell_counts: float = 5):
    """The query sections given to ``QueryMapping.load``, preprocessed again and checked
    against the saved panels."""
    if isinstance(query_sections, AnnData):
        query_sections = [query_sections]
    query_sections = list(query_sections)
    if len(query_sections) != len(names):
        raise BrainAtlasInputError(
            f"the mapping has {len(names)} query sections but {len(query_sections)} were given"
        )
    qdata = []
    for a, n in zip(query_sections, names):
        pr = preprocess_section(a, n, min_cell_counts=min_cell_counts)
        if list(pr.genes) != list(panels[n]):
            raise BrainAtlasInputError(
                f"query section {n!r} does not have the genes it was mapped with"
            )
        empty = np.zeros(0, np.int64)
        qdata.append(_QData(n, pr, spatial_graph(pr.coords), empty, empty))
    return query_sections, qdata


def _adversarial_heads(module, n_all: int) -> list:
    """New discriminator heads ``256 -> n_all`` (reference sections + query sections)
    whose first rows start from the reference heads."""
    heads = []
    for disc in (module.disc_cell, module.disc_tissue):
        last = disc.net[-1]
        head = nn.Linear(last.in_features, n_all).to(module.gene_embedding.device)
        with torch.no_grad():
            head.weight[: last.out_features] = last.weight
            head.bias[: last.out_features] = last.bias
        heads.append(head)
    return heads


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
    settings: QueryMappingSettings | None = None,
    seed: int = 0,
    progress: Callable | None = None,
    cancel: Callable | None = None,
    **options,
) -> QueryMapping:
    """Map ``query_sections`` onto the trained ``model`` and return the trained
    :class:`QueryMapping` (see the module docstring): ``QueryMapping(model,
    query_sections, ...)`` followed by :meth:`QueryMapping.train`.

    Parameters
    ----------
    model : a trained :class:`~napari_brainatlas.fusemap.FuseMap` (also one loaded from a
        folder, with or without its sections).
    query_sections : AnnData or list (``obsm['spatial']``, counts or normalised values).
    reference_sections : reference AnnData holding ``obsm['X_fusemap_cell']`` and
        ``obsm['X_fusemap_tissue']`` (one per model section, in order) for the adversarial
        term and the anchor when the model holds no sections.
    settings : :class:`QueryMappingSettings` (epochs, adversarial, batch_size, lr,
        patience, val_fraction, init, min_steps, anchor, validate_anchor).
    seed : seeds the mapping; the caller's torch generator is left as it was.
    progress : ``progress(done, total, info)`` after every epoch.
    cancel : ``cancel() -> bool`` polled before every step; True raises
        :class:`~napari_brainatlas.Cancelled` (the half-trained mapping is dropped; build a
        :class:`QueryMapping` and call ``train`` to keep it).
    **options : settings fields as keywords, as before the settings existed
        (``epochs=5, anchor=0.0, adversarial=True, ...``).
    """
    mapping = QueryMapping(
        model,
        query_sections,
        reference_sections=reference_sections,
        section_names=section_names,
        settings=settings,
        seed=seed,
        **options,
    )
    mapping.train(progress=progress, cancel=cancel)
    return mapping
