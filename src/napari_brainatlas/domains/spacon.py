"""SpaCon-style connectivity-aware domains over registered sections.

>>> data = prepare(sections, connectome, ontology)        # features, graphs, regions
>>> model = train(data, epochs=30)                         # both embeddings, stored
>>> labels = model.domains(alpha=0.5)                      # re-mix + Leiden, no training
>>> write_results(sections, data, model, alpha=0.5, labels=labels)

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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._errors import BrainAtlasInputError, Cancelled
from .connectome import Connectome, map_cells
from .graphs import Graph, connectivity_graph, spatial_graph
from .model import SpaConNet, mix_weight

__all__ = [
    "SpaConData",
    "SpaConModel",
    "TrainingCancelled",
    "leiden_domains",
    "prepare",
    "prepare_arrays",
    "train",
    "write_results",
]


#: the package's one cancel exception (kept under this name for existing callers)
TrainingCancelled = Cancelled


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
@dataclass
class SpaConModel:
    """A trained network with both stored embeddings."""

    net: SpaConNet
    z_spatial: np.ndarray
    z_connect: np.ndarray
    history: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def mix(self, alpha: float) -> np.ndarray:
        """``(1 - f) z_spatial + f z_connect`` with ``f = mix_weight(alpha)``."""
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

    def save(self, folder) -> None:
        """Weights (torch.save of the state dict), config JSON, both embeddings (.npy)."""
        import json
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), folder / "spacon_weights.pt")
        (folder / "spacon_config.json").write_text(
            json.dumps({"net": self.net.config, **self.config, "history": self.history}, indent=1)
        )
        np.save(folder / "z_spatial.npy", self.z_spatial)
        np.save(folder / "z_connect.npy", self.z_connect)


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
    """Train the autoencoder with neighbour-sampled mini-batches; returns both embeddings.

    ``progress(epoch, n_epochs, loss)`` after every epoch; ``cancel()`` is polled every
    step (raise :class:`TrainingCancelled`). ``steps_per_epoch`` caps an epoch (default:
    one pass over all cells). ``num_threads``: torch threads while training (restored
    afterwards; 1 is fastest on a busy machine).
    """
    if epochs < 1:
        raise BrainAtlasInputError("epochs must be at least 1")
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        return _train(
            data,
            epochs,
            batch_size,
            lr,
            hidden,
            latent,
            heads,
            seed,
            steps_per_epoch,
            progress,
            cancel,
            log,
        )
    finally:
        torch.set_num_threads(old_threads)


def _train(
    data,
    epochs,
    batch_size,
    lr,
    hidden,
    latent,
    heads,
    seed,
    steps_per_epoch,
    progress,
    cancel,
    log,
) -> SpaConModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = data.n_cells
    X = torch.from_numpy(data.features)
    net = SpaConNet(X.shape[1], hidden=hidden, latent=latent, heads=heads)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    ss, sc = _Sampler(data.spatial), _Sampler(data.connect)
    history, secs = [], []
    bs = max(1, min(batch_size, n))
    for ep in range(epochs):
        t0 = time.perf_counter()
        net.train()
        perm = rng.permutation(n)
        n_steps = int(np.ceil(n / bs))
        if steps_per_epoch:
            n_steps = min(n_steps, int(steps_per_epoch))
        tot = 0.0
        for st in range(n_steps):
            if cancel is not None and cancel():
                raise TrainingCancelled("training cancelled")
            seeds = perm[st * bs : (st + 1) * bs]
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
            tot += float(loss.detach())
        history.append(tot / max(n_steps, 1))
        secs.append(time.perf_counter() - t0)
        if progress is not None:
            progress(ep + 1, epochs, history[-1])
        if log is not None:
            log(f"epoch {ep + 1}/{epochs}: loss {history[-1]:.4f} ({secs[-1]:.2f} s)")
    zs, zc = embed(net, data)
    cfg = {
        "epochs": epochs,
        "batch_size": bs,
        "lr": lr,
        "seed": seed,
        "connectome": data.connectome.source,
        "n_cells": n,
        "genes": len(data.genes),
    }
    return SpaConModel(net, zs, zc, history, secs, cfg)


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
    ``uns['spacon']`` into each section (in place)."""
    z = model.mix(alpha)
    cats = [str(c) for c in range(int(labels.max()) + 1)] if labels.size else []
    for i, ad in enumerate(sections):
        idx = np.flatnonzero(data.section_index == i)
        if idx.size != ad.n_obs:
            raise BrainAtlasInputError("sections changed since the model was trained")
        ad.obs["spacon_domain"] = pd.Categorical(labels[idx].astype(str), categories=cats)
        ad.obsm["X_spacon"] = z[idx].astype(np.float32)
        ad.obsm["X_spacon_spatial"] = model.z_spatial[idx]
        ad.obsm["X_spacon_connect"] = model.z_connect[idx]
        ad.uns["spacon"] = {
            "alpha": float(alpha),
            "f": float(mix_weight(alpha)),
            "mix": "X_spacon = (1 - f) * X_spacon_spatial + f * X_spacon_connect, "
            "f = (exp(-4 alpha) - 1) / (exp(-4) - 1)",
            "connectome": str(data.connectome.source),
            "n_domains": len(cats),
            "epochs": int(model.config.get("epochs", 0)),
            "cells_with_connectivity": int((data.region[idx] >= 0).sum()),
        }
