"""Mini-batch machinery: subgraph gathering, one training step, validation, inference.

A batch holds ``batch_size`` seed cells from every section. The reconstruction of a
seed needs ``(A z_T)_S = A[S, N1] A[N1, N2] z_C[N2]`` where N1 are the graph neighbours
of the seeds and N2 those of N1 (self loops make S in N1 in N2), so each step encodes
only the 2-hop neighbourhood of its seeds: memory per step does not grow with the
section size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ._module import FuseMapModule

__all__ = [
    "SectionData",
    "cross_panel_loss",
    "forward_section",
    "gather_subgraph",
    "infer_latent",
]


@dataclass
class SectionData:
    name: str
    code: int
    X: np.ndarray | sp.csr_matrix
    A: sp.csr_matrix
    train_idx: np.ndarray
    val_idx: np.ndarray
    w_cell: np.ndarray
    w_tissue: np.ndarray

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def train_mask(self) -> np.ndarray:
        """Boolean mask of the training cells (cached)."""
        m = getattr(self, "_train_mask", None)
        if m is None or len(m) != self.n:
            m = np.zeros(self.n, bool)
            m[self.train_idx] = True
            self._train_mask = m
        return m


def gather_subgraph(A: sp.csr_matrix, seeds: np.ndarray):
    """Return (n2, A1, A0, s_in1, s_in2) for seed cells ``seeds`` (sorted, unique).

    n2: cells whose z_C is needed; A1 = A[N1, N2] (|N1| x |N2|), A0 = A[S, N1]; s_in1 /
    s_in2: positions of the seeds in N1 / N2.
    """
    r0 = A[seeds]
    n1 = np.unique(r0.indices)
    r1 = A[n1]
    n2 = np.unique(r1.indices)
    A0 = sp.csr_matrix(
        (r0.data, np.searchsorted(n1, r0.indices), r0.indptr), shape=(len(seeds), len(n1))
    )
    A1 = sp.csr_matrix(
        (r1.data, np.searchsorted(n2, r1.indices), r1.indptr), shape=(len(n1), len(n2))
    )
    return n2, A1, A0, np.searchsorted(n1, seeds), np.searchsorted(n2, seeds)


def to_torch_sparse(M: sp.csr_matrix, device) -> torch.Tensor:
    coo = M.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(
        idx, val, coo.shape, device=device, check_invariants=False
    ).coalesce()


def rows_dense(X, idx: np.ndarray) -> np.ndarray:
    if sp.issparse(X):
        return X[idx].toarray()
    return np.ascontiguousarray(X[idx])


def forward_section(
    module: FuseMapModule,
    sd: SectionData,
    seeds: np.ndarray,
    device,
    sample: bool,
    block: bool = False,
    recon_from: str = "tissue",
) -> dict:
    """Losses and seed embeddings of one section for the seed cells ``seeds``.

    ``recon_from``: "tissue" reconstructs the seeds' expression from ``A z_T`` (the
    published code), "cell" from their own ``z_C`` (the paper's ``X ~ z_C E^T``, the form
    imputation uses), "both" averages the two mean squared errors.

    ``block=True`` also returns the posterior means of every *training* cell that the
    step encodes (as the published code feeds its discriminators): ``zc_all`` / ``zc_idx``
    (z_C on the 2-hop neighbourhood N2) and ``zt_all`` / ``zt_idx`` (z_T = A z_C on the
    1-hop neighbourhood N1, exact there because N2 holds all neighbours of N1).
    """
    seeds = np.sort(seeds)
    n2, A1, A0, s1, s2 = gather_subgraph(sd.A, seeds)
    x2 = torch.from_numpy(rows_dense(sd.X, n2)).to(device, non_blocking=True)
    mu, std = module.encode(sd.name, x2)
    z = mu + std * torch.randn_like(mu) if sample else mu
    A1t = to_torch_sparse(A1, device)
    zt1 = torch.sparse.mm(A1t, z)  # z_T on N1
    h = torch.sparse.mm(to_torch_sparse(A0, device), zt1)  # (A z_T) on S
    s2t = torch.from_numpy(s2).to(device)
    x_s = x2.index_select(0, s2t)
    if recon_from == "cell":
        recon = F.mse_loss(module.decode(sd.name, z.index_select(0, s2t)), x_s)
    else:
        recon = F.mse_loss(module.decode(sd.name, h), x_s)
        if recon_from == "both":
            recon = 0.5 * (recon + F.mse_loss(module.decode(sd.name, z.index_select(0, s2t)), x_s))
    mu_s, std_s = mu.index_select(0, s2t), std.index_select(0, s2t)
    kl = (0.5 * (mu_s.pow(2) + std_s.pow(2) - 1.0) - torch.log(std_s)).sum(1).mean()
    kl = kl / x2.shape[1]
    # the discriminators see the posterior means (the embeddings that are reported):
    # z_C = mu at the seeds and z_T = (A mu) at the seeds
    s1t = torch.from_numpy(s1).to(device)
    zt_mu1 = torch.sparse.mm(A1t, mu) if sample else zt1
    zt_mu = zt_mu1.index_select(0, s1t)
    out = {"recon": recon, "kl": kl, "zc": mu_s, "zt": zt_mu, "seeds": seeds, "x": x_s}
    if block:
        n1 = np.unique(sd.A[seeds].indices)
        tm = sd.train_mask
        k2, k1 = np.flatnonzero(tm[n2]), np.flatnonzero(tm[n1])
        out["zc_all"] = mu.index_select(0, torch.from_numpy(k2).to(device))
        out["zc_idx"] = n2[k2]
        out["zt_all"] = zt_mu1.index_select(0, torch.from_numpy(k1).to(device))
        out["zt_idx"] = n1[k1]
    return out


@torch.no_grad()
def infer_latent(
    module: FuseMapModule, name: str, X, A: sp.csr_matrix, device, batch: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """(z_C means, z_T = A z_C) for every cell of a section, in eval mode."""
    was = module.training
    module.eval()
    out = []
    for i in range(0, X.shape[0], batch):
        x = torch.from_numpy(rows_dense(X, np.arange(i, min(i + batch, X.shape[0])))).to(device)
        mu, _ = module.encode(name, x)
        out.append(mu.float().cpu().numpy())
    module.train(was)
    zc = np.concatenate(out, 0) if out else np.zeros((0, module.n_latent), np.float32)
    zt = np.asarray(A @ zc, dtype=np.float32)
    return zc.astype(np.float32), zt


def _panel_index(genes_from: list[str], genes_to: list[str], device):
    """Columns of ``genes_to`` found in ``genes_from`` (source and target positions) and
    the target positions of the genes ``genes_from`` lacks."""
    pos = {g: i for i, g in enumerate(genes_from)}
    dst = [j for j, g in enumerate(genes_to) if g in pos]
    src = [pos[genes_to[j]] for j in dst]
    miss = [j for j, g in enumerate(genes_to) if g not in pos]
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return t(src), t(dst), t(miss), [g for g in genes_to if g not in pos]


def cross_panel_loss(
    module: FuseMapModule, outs: list[dict], names: list[str], device, cache: dict
) -> torch.Tensor:
    """Cell-level agreement of the section encoders across panels (``panel_anchor``).

    For every ordered pair of sections (u, v): u's seed cells are read through v's
    panel - the genes both measure from u's model input, the genes u lacks from the
    decoder ``max(z_C E_g, 0)`` of u's own (detached) embedding - and v's encoder (eval
    mode: BatchNorm running statistics, no dropout) is asked to place them at u's
    posterior mean z_C (detached): mean squared error, averaged over the pairs. The
    reference-anchor loss of the query mapping (annotate.map_query, ``anchor``) applied
    between the sections of a joint training, so that one cell type lands in the same
    place whichever section's encoder reads it; the adversary alone aligns the sections'
    distributions, not their cells."""
    losses = []
    E = module.gene_embedding
    for u, ou in enumerate(outs):
        zu = ou["zc"].detach()
        xu = ou["x"].detach()
        for v, name_v in enumerate(names):
            if v == u:
                continue
            key = (names[u], name_v)
            if key not in cache:
                src, dst, miss, miss_genes = _panel_index(
                    module.section_genes[names[u]], module.section_genes[name_v], device
                )
                rows = torch.as_tensor(
                    [module.gene_index[g] for g in miss_genes], dtype=torch.long, device=device
                )
                cache[key] = (src, dst, miss, rows)
            src, dst, miss, rows = cache[key]
            if len(src) == 0:
                continue
            x = torch.zeros((len(zu), len(dst) + len(miss)), device=device, dtype=xu.dtype)
            x[:, dst] = xu.index_select(1, src)
            if len(miss):
                with torch.no_grad():
                    x[:, miss] = torch.relu(zu @ E.index_select(0, rows).t())
            enc = module.encoders[name_v]
            was = enc.training
            enc.eval()
            try:
                mu, _ = enc(x)
            finally:
                enc.train(was)
            losses.append(F.mse_loss(mu, zu))
    if not losses:
        return torch.zeros((), device=device)
    return torch.stack(losses).mean()
