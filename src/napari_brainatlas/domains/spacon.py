"""SpaCon-style connectivity-aware domains over registered sections.

>>> data = prepare(sections, connectome, ontology)        # features, graphs, regions
>>> model = SpaConModel(data, seed=0)                      # options: SpaConSettings
>>> model.train(epochs=30, progress=progress, cancel=cancel)   # both embeddings, stored
>>> labels = model.domains(alpha=0.5)                      # re-mix + Leiden, no training
>>> out = model.write_embeddings(sections, 0.5, labels)    # copies with the results
>>> model.save("spacon_model"); SpaConModel.load("spacon_model")

(:func:`train`, the free function of earlier versions, is deprecated.)

What mixes: the encoder over the spatial graph gives ``z_spatial`` (n, L), the encoder
over the connectivity graph gives ``z_connect`` (n, L); for a given ``alpha`` in [0, 1]
the cell embedding is ``z = (1 - f) * z_spatial + f * z_connect`` with
``f = (exp(-4 alpha) - 1) / (exp(-4) - 1)`` (SpaCon's curve; alpha 0 = spatial only,
1 = connectivity only). Both embeddings are stored after training, so changing alpha
only re-mixes and re-clusters. The decoder is trained to reconstruct expression from
``z_spatial``, from ``z_connect`` and from a mix at a random alpha per cell, so every
mix is a point of the same latent space.

Features: the genes every section measures, counts normalised per cell (over those
genes) to 100, log1p, z-scored per gene (optionally centred per section first), then
PCA (``n_pcs``). The spatial graph is a kNN graph in CCF coordinates
(``obsm['ccf_coords']``), so cells of different sections link only where they are close
in the brain. Training uses neighbour-sampled mini-batches: seeds are drawn, and their
1-hop incoming neighbourhoods in both graphs are gathered (one GAT layer per encoder,
so the seeds' outputs are exact). Clustering: Leiden (igraph's C implementation, modularity with a resolution) on a
kNN graph of ``z``; above ``max_cluster_cells`` a random subset is clustered and every
other cell takes the domain of its nearest prototype (up to 64 clustered cells per domain).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._errors import BrainAtlasInputError, Cancelled
from ..jobs import check_cancel, report
from ..models import (
    WEIGHTS,
    ModelFolder,
    TrainableModel,
    load_state,
    resolve_settings,
    save_state,
    settings_from_dict,
    settings_to_dict,
)
from .connectome import Connectome, map_cells
from .graphs import Graph, connectivity_graph, spatial_graph
from .model import SpaConNet, mix_weight
from .settings import SpaConSettings

__all__ = [
    "SpaCon",
    "SpaConData",
    "SpaConModel",
    "SpaConSettings",
    "TrainingCancelled",
    "leiden_domains",
    "prepare",
    "prepare_arrays",
    "train",
    "write_results",
]


#: the package's one cancel exception (kept under this name for existing callers)
TrainingCancelled = Cancelled
#: format of the folder :meth:`SpaConModel.save` writes (1: spacon_config.json + .npy)
SPACON_FORMAT_VERSION = 2


@dataclass
class SpaConData:
    """Everything training needs, over all cells of all sections (concatenated)."""

    features: np.ndarray  # (n, d) float32
    region: np.ndarray  # (n,) connectome row, -1: none
    hemi: np.ndarray  # (n,) 0/1
    coords: np.ndarray  # (n, 3) CCF um
    spatial: Graph
    connect: Graph
    connectome: Connectome
    section_index: np.ndarray  # (n,) which section
    sections: list = field(default_factory=list)
    genes: list = field(default_factory=list)
    region_expression: pd.DataFrame | None = None  # matrix regions present x genes
    region_cells: pd.Series | None = None  # cells per present region
    notes: list = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return int(self.features.shape[0])

    def section_slices(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.section_index == i) for i in range(len(self.sections))]


def _counts(adata, genes) -> np.ndarray:
    M = adata.layers.get("counts", adata.X)
    if M is None:
        raise BrainAtlasInputError("a section has no expression matrix")
    cols = adata.var_names.get_indexer(genes)
    M = M[:, cols]
    M = M.toarray() if sp.issparse(M) else np.asarray(M)
    return M.astype(np.float32)


def _lognorm(M: np.ndarray) -> np.ndarray:
    tot = M.sum(1, keepdims=True)
    tot[tot <= 0] = 1.0
    return np.log1p(M / tot * 100.0).astype(np.float32)


def _pca(Z: np.ndarray, n_pcs: int) -> np.ndarray:
    if Z.shape[1] <= n_pcs:
        return Z.astype(np.float32)
    cov = (Z.T.astype(np.float64) @ Z) / max(len(Z) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:n_pcs]]
    return (Z @ top.astype(np.float32)).astype(np.float32)


def prepare_arrays(
    expr: np.ndarray,
    coords: np.ndarray,
    region: np.ndarray,
    hemi: np.ndarray,
    connectome: Connectome,
    section_index: np.ndarray | None = None,
    *,
    n_pcs: int = 30,
    k_spatial: int = 8,
    top_k: int = 4,
    per_region: int = 3,
    center_sections: bool = False,
    seed: int = 0,
    genes=None,
    sections=None,
) -> SpaConData:
    """:class:`SpaConData` from arrays: ``expr`` (n, G) log-normalised expression."""
    expr = np.asarray(expr, dtype=np.float32)
    n = len(expr)
    sec = np.zeros(n, np.int64) if section_index is None else np.asarray(section_index)
    region = np.asarray(region, np.int64)
    hemi = np.asarray(hemi, np.int64)
    # region means of the log-normalised expression (both hemispheres pooled)
    ok = region >= 0
    reg_df = None
    reg_n = None
    if ok.any():
        codes, inv = np.unique(region[ok], return_inverse=True)
        sums = np.zeros((codes.size, expr.shape[1]), np.float64)
        np.add.at(sums, inv, expr[ok])
        cnt = np.bincount(inv)
        names = [connectome.regions[c] for c in codes]
        reg_df = pd.DataFrame(
            sums / cnt[:, None], index=names, columns=list(genes) if genes is not None else None
        )
        reg_n = pd.Series(cnt, index=names)
    Z = expr.copy()
    if center_sections:
        for s in np.unique(sec):
            m = sec == s
            Z[m] -= Z[m].mean(0)
    mu, sd = Z.mean(0), Z.std(0)
    sd[sd < 1e-6] = 1.0
    Z = np.clip((Z - mu) / sd, -10, 10)
    feats = _pca(Z, n_pcs)
    feats /= max(float(feats.std()), 1e-6)
    sgraph = spatial_graph(coords, k=k_spatial)
    cgraph = connectivity_graph(
        region,
        hemi,
        connectome.w_ipsi,
        connectome.w_contra,
        top_k=top_k,
        per_region=per_region,
        seed=seed,
    )
    notes = []
    if not ok.any():
        notes.append("no cell maps to a connectome region: the connectivity graph is empty")
    return SpaConData(
        feats.astype(np.float32),
        region,
        hemi,
        np.asarray(coords, float),
        sgraph,
        cgraph,
        connectome,
        sec,
        list(sections or ["section"]),
        list(genes) if genes is not None else [],
        reg_df,
        reg_n,
        notes,
    )


def prepare(
    sections,
    connectome: Connectome,
    ontology,
    *,
    midline_ml_um: float | None = None,
    n_pcs: int = 30,
    k_spatial: int = 8,
    top_k: int = 4,
    per_region: int = 3,
    center_sections: bool = False,
    seed: int = 0,
) -> SpaConData:
    """Map the connectome onto registered sections and build features and both graphs.

    Every section needs ``obs['ccf_id']`` (or ``obs['ccf_acronym']``) and
    ``obsm['ccf_coords']``; the genes all sections share are used.
    """
    sections = list(sections)
    if not sections:
        raise BrainAtlasInputError("no sections given")
    genes = list(sections[0].var_names)
    for ad in sections[1:]:
        have = set(ad.var_names)
        genes = [g for g in genes if g in have]
    if len(genes) < 2:
        raise BrainAtlasInputError("the sections share fewer than 2 genes")
    exprs, coords, regs, hemis, secs, names = [], [], [], [], [], []
    for i, ad in enumerate(sections):
        r, h = map_cells(ad, ontology, connectome, midline_ml_um)
        exprs.append(_lognorm(_counts(ad, genes)))
        coords.append(np.asarray(ad.obsm["ccf_coords"], float))
        regs.append(r)
        hemis.append(h)
        secs.append(np.full(ad.n_obs, i))
        meta = ad.uns.get("napari_brainatlas", {})
        names.append(
            str(meta.get("section", f"section{i}")) if isinstance(meta, dict) else f"section{i}"
        )
    region = np.concatenate(regs)
    if not (region >= 0).any():
        raise BrainAtlasInputError(
            "no cell lies in a connectome region: check that the ontology matches the "
            "registration atlas and the connectome's acronyms"
        )
    return prepare_arrays(
        np.concatenate(exprs),
        np.concatenate(coords),
        region,
        np.concatenate(hemis),
        connectome,
        np.concatenate(secs),
        n_pcs=n_pcs,
        k_spatial=k_spatial,
        top_k=top_k,
        per_region=per_region,
        center_sections=center_sections,
        seed=seed,
        genes=genes,
        sections=names,
    )


# --------------------------------------------------------------------------- batches
class _Sampler:
    """1-hop neighbourhood of a seed set in one graph, relabelled seeds-first."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.local = np.full(graph.n, -1, dtype=np.int64)
        w = graph.weight
        if w is not None:
            lw = np.log(np.maximum(w, 1e-6) / max(float(np.median(w)), 1e-6))
            self.bias = np.clip(lw, -4, 4).astype(np.float32)
        else:
            self.bias = None

    def batch(self, seeds: np.ndarray):
        g = self.g
        nodes = np.asarray(seeds, np.int64)
        starts, ends = g.indptr[nodes], g.indptr[nodes + 1]
        counts = ends - starts
        total = int(counts.sum())
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        pos = np.arange(total, dtype=np.int64) + offs
        src, dst = g.src[pos], g.dst[pos]
        loc = self.local
        loc[nodes] = np.arange(nodes.size)
        extra = np.unique(src[loc[src] < 0])
        loc[extra] = nodes.size + np.arange(extra.size)
        all_nodes = np.concatenate([nodes, extra])
        ei = np.stack([loc[src], loc[dst]])
        loc[all_nodes] = -1
        bias = None if self.bias is None else torch.from_numpy(self.bias[pos])
        return all_nodes, torch.from_numpy(ei), bias


# --------------------------------------------------------------------------- model
class SpaConModel(TrainableModel):
    """SpaCon's graph attention autoencoder over prepared sections, with both stored
    embeddings after training (the shared model protocol of :mod:`napari_brainatlas.models`).

    >>> model = SpaConModel(data, seed=0)          # data from :func:`prepare`
    >>> model.train(epochs=30, progress=progress, cancel=cancel)
    >>> labels = model.domains(alpha=0.5)           # re-mix + Leiden, no training

    Parameters
    ----------
    data : :class:`SpaConData` (features, both graphs); None only for a loaded model.
    settings : :class:`~napari_brainatlas.domains.SpaConSettings`.
    seed : seeds the initialisation and the batches.
    **options : settings fields as keywords (``latent=8, batch_size=256``).

    Attributes: ``net`` (:class:`SpaConNet`, None until the first ``train``),
    ``z_spatial`` / ``z_connect`` ((n_cells, latent) float32, None until trained),
    ``history`` (one dict per epoch: epoch, loss, seconds), ``epoch_seconds``,
    ``config`` (what the results record: epochs, batch size, lr, seed, connectome ...).
    """

    format_version = SPACON_FORMAT_VERSION
    accepted_versions = (1, SPACON_FORMAT_VERSION)

    def __init__(
        self,
        data: SpaConData | None,
        *,
        settings: SpaConSettings | None = None,
        seed: int = 0,
        **options,
    ):
        self.settings = resolve_settings(SpaConSettings, settings, options, "SpaCon")
        self.seed = int(seed)
        self.data = data
        self.net: SpaConNet | None = None
        self.z_spatial: np.ndarray | None = None
        self.z_connect: np.ndarray | None = None
        self.history = []
        self.is_trained = False
        self.cancelled = False
        self.config: dict = {}

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of every finished epoch."""
        return [float(h.get("seconds", float("nan"))) for h in self.history]

    # ------------------------------------------------------------------ training
    def train(self, epochs: int | None = None, *, progress=None, cancel=None) -> list[dict]:
        """Train with neighbour-sampled mini-batches, then embed every cell.

        epochs : passes over all cells (default ``settings.epochs``; an epoch is capped
            at ``settings.steps_per_epoch`` steps when set).
        progress : ``progress(done, total, info)`` after every epoch; ``info``: epoch,
            loss, seconds and ``message`` ("epoch 3/30: loss 0.8123 (1.20 s)").
        cancel : ``cancel() -> bool`` polled every step; True raises
            :class:`~napari_brainatlas.Cancelled`. The model then holds the network
            weights reached, ``history`` the finished epochs, ``cancelled`` True, and no
            new embeddings (``z_spatial`` / ``z_connect`` and ``is_trained`` as before).

        Returns :attr:`history`. A later call goes on from the weights reached (a new
        Adam optimiser) and embeds again.
        """
        if self.data is None:
            raise BrainAtlasInputError("this SpaCon model has no data to train on")
        n_epochs = int(self.settings.epochs if epochs is None else epochs)
        if n_epochs < 1:
            raise BrainAtlasInputError("epochs must be at least 1")
        old_threads = torch.get_num_threads()
        if self.settings.num_threads:
            torch.set_num_threads(int(self.settings.num_threads))
        self.cancelled = False
        try:
            self._train(n_epochs, progress, cancel)
        except Cancelled:
            self.cancelled = True
            raise
        finally:
            torch.set_num_threads(old_threads)
        self.is_trained = True
        return self.history

    def _train(self, n_epochs: int, progress, cancel) -> None:
        s, data, e0 = self.settings, self.data, len(self.history)
        torch.manual_seed(self.seed + e0)
        rng = np.random.default_rng(self.seed + e0)
        n = data.n_cells
        X = torch.from_numpy(data.features)
        if self.net is None:
            self.net = SpaConNet(X.shape[1], hidden=s.hidden, latent=s.latent, heads=s.heads)
        net = self.net
        opt = torch.optim.Adam(net.parameters(), lr=s.lr, weight_decay=1e-5)
        ss, sc = _Sampler(data.spatial), _Sampler(data.connect)
        bs = max(1, min(s.batch_size, n))
        n_steps = int(np.ceil(n / bs))
        if s.steps_per_epoch:
            n_steps = min(n_steps, int(s.steps_per_epoch))
        for ep in range(n_epochs):
            t0 = time.perf_counter()
            net.train()
            perm = rng.permutation(n)
            tot = 0.0
            for st in range(n_steps):
                check_cancel(cancel)
                tot += _train_step(net, opt, X, perm[st * bs : (st + 1) * bs], ss, sc)
            loss, secs = tot / max(n_steps, 1), time.perf_counter() - t0
            rec = {"epoch": e0 + ep + 1, "loss": loss, "seconds": secs}
            self.history.append(rec)
            msg = f"epoch {e0 + ep + 1}/{e0 + n_epochs}: loss {loss:.4f} ({secs:.2f} s)"
            report(progress, ep + 1, n_epochs, **rec, message=msg)
        self.z_spatial, self.z_connect = embed(net, data)
        self.config = {
            "epochs": e0 + n_epochs,
            "batch_size": bs,
            "lr": s.lr,
            "seed": self.seed,
            "connectome": data.connectome.source,
            "n_cells": n,
            "genes": len(data.genes),
        }

    # ------------------------------------------------------------------ outputs
    def _check_embedded(self) -> None:
        if self.z_spatial is None or self.z_connect is None:
            raise BrainAtlasInputError("train the SpaCon model first")

    def mix(self, alpha: float) -> np.ndarray:
        """``(1 - f) z_spatial + f z_connect`` with ``f = mix_weight(alpha)``."""
        self._check_embedded()
        f = np.float32(mix_weight(alpha))
        return (1 - f) * self.z_spatial + f * self.z_connect

    def domains(
        self,
        alpha: float,
        *,
        resolution: float = 0.5,
        n_domains: int | None = None,
        k: int = 15,
        seed: int = 0,
        max_cluster_cells: int = 20_000,
    ) -> np.ndarray:
        """Leiden domains of the mixed embedding at ``alpha`` (no retraining)."""
        return leiden_domains(
            self.mix(alpha),
            resolution=resolution,
            n_domains=n_domains,
            k=k,
            seed=seed,
            max_cluster_cells=max_cluster_cells,
        )

    def write_embeddings(
        self, sections, alpha: float, labels: np.ndarray | None = None, *, copy: bool = True
    ) -> list[AnnData]:
        """The sections (the ones trained on, in order) with ``obsm['X_spacon']`` (the mix
        at ``alpha``), ``obsm['X_spacon_spatial']``, ``obsm['X_spacon_connect']``,
        ``uns['spacon']`` and, given ``labels`` (e.g. :meth:`domains`),
        ``obs['spacon_domain']``. ``copy=True`` (default, as every model) returns new
        AnnData objects; ``copy=False`` writes into the given ones (as
        :func:`write_results` does)."""
        self._check_embedded()
        sections = [sections] if isinstance(sections, AnnData) else list(sections)
        if sum(a.n_obs for a in sections) != len(self.z_spatial):
            raise BrainAtlasInputError("sections changed since the model was trained")
        out = [a.copy() if copy else a for a in sections]
        index = np.repeat(np.arange(len(out)), [a.n_obs for a in out])
        _write_arrays(out, index, self, alpha, labels, self.data)
        return out

    # ------------------------------------------------------------------ save / load
    def _write_files(self, folder: Path) -> dict:
        """weights.pt (state dict), latent.npz (z_spatial, z_connect)."""
        self._check_embedded()
        save_state(self.net, folder / WEIGHTS)
        np.savez_compressed(
            folder / "latent.npz", z_spatial=self.z_spatial, z_connect=self.z_connect
        )
        return {
            "settings": settings_to_dict(self.settings),
            "seed": self.seed,
            "net": dict(self.net.config),
            "training": dict(self.config, connectome=str(self.config.get("connectome", ""))),
            "is_trained": self.is_trained,
        }

    @classmethod
    def load(cls, path, data: SpaConData | None = None) -> SpaConModel:
        """Read a folder written by :meth:`save` (or an older ``spacon_model/`` folder:
        spacon_config.json, spacon_weights.pt, z_*.npy). ``data`` (the same prepared
        sections) is needed only to train further."""
        return super().load(path, data=data)

    @classmethod
    def _legacy_config(cls, folder: ModelFolder) -> dict | None:
        if folder.has("config.json") or not folder.has("spacon_config.json"):
            return None
        old = folder.json("spacon_config.json")
        if "net" not in old or not isinstance(old["net"], dict):
            raise folder.error("spacon_config.json", "lacks the key 'net'")
        net, hist = old["net"], old.get("history", [])
        if not isinstance(hist, list) or not all(isinstance(h, (int, float)) for h in hist):
            raise folder.error("spacon_config.json", "holds a broken history")
        settings = {
            k: v
            for k, v in {
                "hidden": net.get("hidden"),
                "latent": net.get("latent"),
                "heads": net.get("heads"),
                "batch_size": old.get("batch_size"),
                "lr": old.get("lr"),
                "epochs": old.get("epochs"),
            }.items()
            if v is not None
        }
        training = {k: v for k, v in old.items() if k not in ("net", "history")}
        return {
            "model": cls.__name__,
            "format_version": 1,
            "settings": settings,
            "seed": old.get("seed", 0),
            "net": net,
            "training": training,
            "_history": [{"epoch": i + 1, "loss": float(v)} for i, v in enumerate(hist)],
        }

    @classmethod
    def _from_folder(cls, folder, cfg, data=None) -> SpaConModel:
        legacy = cfg["format_version"] == 1
        for k in ("seed", "net", "training"):
            if k not in cfg:
                raise folder.error("config.json", f"lacks the key {k!r}")
        net_cfg = cfg["net"]
        try:
            net = SpaConNet(
                int(net_cfg["in_dim"]),
                hidden=int(net_cfg["hidden"]),
                latent=int(net_cfg["latent"]),
                heads=int(net_cfg["heads"]),
            )
        except (KeyError, TypeError, ValueError):
            name = "spacon_config.json" if legacy else "config.json"
            raise folder.error(name, "holds a broken network description ('net')") from None
        weights = "spacon_weights.pt" if legacy else WEIGHTS
        load_state(net, folder.weights(weights), folder, weights)
        if legacy:
            z = {"z_spatial": folder.npy("z_spatial.npy"), "z_connect": folder.npy("z_connect.npy")}
            history = cfg["_history"]
        else:
            z = folder.npz("latent.npz", ["z_spatial", "z_connect"])
            history = folder.history()
        zs, zc = (np.asarray(z[k], np.float32) for k in ("z_spatial", "z_connect"))
        if zs.shape != zc.shape or zs.ndim != 2 or zs.shape[1] != net.config["latent"]:
            src = "z_*.npy" if legacy else "latent.npz"
            raise folder.error(src, f"does not hold (cells, {net.config['latent']}) embeddings")
        self = cls(
            data,
            settings=settings_from_dict(SpaConSettings, cfg["settings"], folder),
            seed=int(cfg["seed"]),
        )
        self.net = net.eval()
        self.z_spatial, self.z_connect = zs, zc
        self.history = history
        self.config = dict(cfg["training"])
        self.is_trained = bool(cfg.get("is_trained", True))
        return self


#: the model's short name
SpaCon = SpaConModel


def _train_step(net: SpaConNet, opt, X, seeds, ss: _Sampler, sc: _Sampler) -> float:
    """One step: reconstruct the seeds' features from z_spatial, z_connect and a mix of
    the two at a random alpha per cell."""
    ns, es, _ = ss.batch(seeds)
    nc, ec, bc = sc.batch(seeds)
    zs, zc = net.encode(X[ns], es, seeds.size, X[nc], ec, seeds.size, bc)
    a = torch.rand(seeds.size, 1)
    f = (torch.exp(-4 * a) - 1) / (np.exp(-4.0) - 1)
    zm = (1 - f) * zs + f * zc
    x = X[seeds]
    dec = net.decode(torch.cat([zs, zc, zm]))
    loss = ((dec - x.repeat(3, 1)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def embed(net: SpaConNet, data: SpaConData, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Both embeddings of every cell (full 1-hop neighbourhoods, in chunks)."""
    net.eval()
    X = torch.from_numpy(data.features)
    ss, sc = _Sampler(data.spatial), _Sampler(data.connect)
    zs, zc = [], []
    for i in range(0, data.n_cells, chunk):
        seeds = np.arange(i, min(i + chunk, data.n_cells))
        ns, es, _ = ss.batch(seeds)
        nc, ec, bc = sc.batch(seeds)
        a, b = net.encode(X[ns], es, seeds.size, X[nc], ec, seeds.size, bc)
        zs.append(a.numpy())
        zc.append(b.numpy())
    return np.concatenate(zs), np.concatenate(zc)


def train(
    data: SpaConData,
    *,
    epochs: int = 30,
    batch_size: int = 1024,
    lr: float = 2e-3,
    hidden: int = 64,
    latent: int = 16,
    heads: int = 2,
    seed: int = 0,
    steps_per_epoch: int | None = None,
    progress=None,
    cancel=None,
    log=None,
    num_threads: int | None = None,
) -> SpaConModel:
    """Deprecated (kept for one release): ``SpaConModel(data, seed=..., **options)
    .train(epochs, progress=..., cancel=...)``, which this calls.

    ``progress(epoch, n_epochs, loss)`` (the old signature: the epoch's mean loss as a
    float) after every epoch; ``log(line)`` gets "epoch e/n: loss x (s s)";
    ``cancel()`` polled every step raises :class:`TrainingCancelled` (=
    :class:`~napari_brainatlas.Cancelled`). Returns the trained :class:`SpaConModel`.
    """
    warnings.warn(
        "napari_brainatlas.domains.train(data, ...) is deprecated: use "
        "SpaConModel(data, seed=..., **options).train(epochs, progress=..., cancel=...) "
        "(progress(done, total, info) with info['loss'])",
        DeprecationWarning,
        stacklevel=2,
    )
    if epochs < 1:
        raise BrainAtlasInputError("epochs must be at least 1")
    model = SpaConModel(
        data,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        latent=latent,
        heads=heads,
        steps_per_epoch=steps_per_epoch,
        num_threads=num_threads,
    )

    def new_progress(done, total, info):
        if progress is not None:
            progress(done, total, info["loss"])
        if log is not None:
            log(info["message"])

    model.train(epochs, progress=new_progress, cancel=cancel)
    return model


# --------------------------------------------------------------------------- clustering
def _leiden_once(g, weights, resolution: float, seed: int) -> np.ndarray:
    """igraph's C Leiden (modularity with a resolution), seeded through Python's random."""
    import random

    state = random.getstate()
    random.seed(int(seed))
    try:
        part = g.community_leiden(
            objective_function="modularity",
            weights=weights,
            resolution=float(resolution),
            n_iterations=2,
        )
    finally:
        random.setstate(state)
    return np.asarray(part.membership, dtype=np.int64)


def _knn_igraph(z: np.ndarray, k: int):
    import igraph as ig
    from scipy.spatial import cKDTree

    n = len(z)
    kk = max(1, min(k, n - 1))
    d, nb = cKDTree(z).query(z, k=kk + 1, workers=-1)
    d, nb = d[:, 1:], nb[:, 1:]
    sigma = np.maximum(np.median(d, axis=1, keepdims=True), 1e-9)
    w = np.exp(-((d / sigma) ** 2) / 2).ravel()
    rows = np.repeat(np.arange(n), kk)
    A = sp.coo_matrix((w, (rows, nb.ravel())), shape=(n, n)).tocsr()
    A = A.maximum(A.T)
    A = sp.triu(A, k=1).tocoo()
    g = ig.Graph(n=n, edges=np.column_stack([A.row, A.col]), directed=False)
    return g, A.data


def _assign_by_prototypes(
    z: np.ndarray, zsub: np.ndarray, lab: np.ndarray, rng, per_domain: int = 64
) -> np.ndarray:
    """Domain of every cell = that of its nearest prototype (up to ``per_domain`` random
    clustered cells per domain)."""
    from scipy.spatial import cKDTree

    protos = []
    for d in np.unique(lab):
        idx = np.flatnonzero(lab == d)
        protos.append(rng.choice(idx, min(per_domain, idx.size), replace=False))
    protos = np.concatenate(protos)
    _, nn = cKDTree(zsub[protos]).query(z, k=1, workers=-1)
    return lab[protos][nn]


def leiden_domains(
    z: np.ndarray,
    *,
    resolution: float = 0.5,
    n_domains: int | None = None,
    k: int = 15,
    seed: int = 0,
    max_cluster_cells: int = 20_000,
) -> np.ndarray:
    """Leiden clusters of a kNN graph of ``z``; domain 0 is the largest.

    ``n_domains``: search the resolution (bisection, log scale) for that many domains.
    """
    z = np.asarray(z, dtype=np.float32)
    n = len(z)
    if n == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    sub = (
        np.arange(n)
        if n <= max_cluster_cells
        else np.sort(rng.choice(n, max_cluster_cells, replace=False))
    )
    g, w = _knn_igraph(z[sub], k)
    if n_domains is None:
        lab = _leiden_once(g, w, resolution, seed)
    else:
        lo, hi = np.log(1e-3), np.log(20.0)
        best = None
        for _ in range(14):
            mid = (lo + hi) / 2
            lab = _leiden_once(g, w, float(np.exp(mid)), seed)
            m = lab.max() + 1
            if best is None or abs(m - n_domains) < abs(best[1] - n_domains):
                best = (lab, m)
            if m == n_domains:
                break
            if m < n_domains:
                lo = mid
            else:
                hi = mid
        lab = best[0]
    if sub.size < n:
        lab = _assign_by_prototypes(z, z[sub], lab, rng)
    # relabel by size (0 = largest)
    uniq, cnt = np.unique(lab, return_counts=True)
    order = uniq[np.argsort(-cnt, kind="stable")]
    remap = np.empty(uniq.max() + 1, np.int64)
    remap[order] = np.arange(order.size)
    return remap[lab]


# --------------------------------------------------------------------------- results
def write_results(
    sections, data: SpaConData, model: SpaConModel, alpha: float, labels: np.ndarray
) -> None:
    """Write ``obs['spacon_domain']`` (categorical), ``obsm['X_spacon']`` (the mix at
    ``alpha``), ``obsm['X_spacon_spatial']``, ``obsm['X_spacon_connect']`` and
    ``uns['spacon']`` into each section (in place; :meth:`SpaConModel.write_embeddings`
    returns copies instead)."""
    for i, ad in enumerate(sections):
        if int((data.section_index == i).sum()) != ad.n_obs:
            raise BrainAtlasInputError("sections changed since the model was trained")
    _write_arrays(list(sections), data.section_index, model, alpha, labels, data)


def _write_arrays(sections, section_index, model, alpha, labels, data=None) -> None:
    z = model.mix(alpha)
    cats = None
    if labels is not None:
        cats = [str(c) for c in range(int(labels.max()) + 1)] if labels.size else []
    connectome = data.connectome.source if data is not None else model.config.get("connectome")
    region = data.region if data is not None else None
    for i, ad in enumerate(sections):
        idx = np.flatnonzero(section_index == i)
        if idx.size != ad.n_obs:
            raise BrainAtlasInputError("sections changed since the model was trained")
        if cats is not None:
            ad.obs["spacon_domain"] = pd.Categorical(labels[idx].astype(str), categories=cats)
        ad.obsm["X_spacon"] = z[idx].astype(np.float32)
        ad.obsm["X_spacon_spatial"] = model.z_spatial[idx]
        ad.obsm["X_spacon_connect"] = model.z_connect[idx]
        info = {
            "alpha": float(alpha),
            "f": float(mix_weight(alpha)),
            "mix": "X_spacon = (1 - f) * X_spacon_spatial + f * X_spacon_connect, "
            "f = (exp(-4 alpha) - 1) / (exp(-4) - 1)",
            "connectome": str(connectome),
            "n_domains": len(cats) if cats is not None else None,
            "epochs": int(model.config.get("epochs", 0)),
        }
        if cats is None:
            del info["n_domains"]
        if region is not None:
            info["cells_with_connectivity"] = int((region[idx] >= 0).sum())
        ad.uns["spacon"] = info
