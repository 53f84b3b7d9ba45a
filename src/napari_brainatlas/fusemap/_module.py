"""The FuseMap network in torch (method.md, "Model").

Structure (what query mapping and imputation build on):

* ``FuseMapModule.encoders``: ``nn.ModuleDict`` keyed by section name; each a
  :class:`SectionEncoder` ``Linear(G_v, 512) - BN - LeakyReLU(0.2) - Dropout(0.2) -
  Linear(512, 512) - BN - LeakyReLU(0.2) - Dropout(0.2)`` with two heads giving the mean
  and the standard deviation (softplus + 1e-4) of the k-dimensional cell embedding z_C.
* ``FuseMapModule.gene_embedding``: one ``nn.Parameter`` (n_all_genes x k), Xavier
  uniform init, shared by every section; ``gene_index`` maps an upper-case gene symbol to
  its row and ``section_genes[name]`` lists the genes (columns) of each section, so
  section v reads rows ``gene_rows(v)``.
* ``disc_cell`` / ``disc_tissue``: :class:`Discriminator` MLPs ``k-256-256-V``
  (LeakyReLU 0.2, dropout 0.2) predicting the section of a cell from z_C / z_T.

Graph aggregation and decoding are parameter-free, as in the published code:
``z_T = A z_C`` (one propagation step with the normalised adjacency; the paper
describes GCN layers with weights and a GCN decoder back to z_C - not used here, as in
the code) and ``X_v ~ ReLU(A z_T E_v^T)`` (inner product with the section's gene rows,
no bias); by default the training loss also reconstructs ``X_v ~ ReLU(z_C E_v^T)`` (the
paper's form; ``FuseMap(recon_from=...)``). Imputation uses ``ReLU(z_C E^T)``
(method.md, "Imputation").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Discriminator", "Dropout", "FuseMapModule", "SectionEncoder"]


class Dropout(nn.Module):
    """Inverted dropout like ``nn.Dropout`` (zero each entry with probability ``p`` in
    training, scale the rest by ``1 / (1 - p)``; identity in eval mode) with the mask
    drawn by numpy's PCG64 from a seed taken from torch's global generator, so it stays
    deterministic under ``torch.manual_seed``.

    Why: on CPU ``torch.dropout`` draws its Bernoulli mask element by element from
    torch's Mersenne Twister, which took about a quarter of a FuseMap training step
    (profile of a 100,000-cell epoch, benchmarks/embedding/NOTES.md); 16-bit uniforms
    from PCG64 cost a fraction of it. The masks differ from ``nn.Dropout``'s (same
    distribution; ``p`` is rounded to a multiple of 1/65536). No parameters or buffers,
    so model folders saved with ``nn.Dropout`` load unchanged.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout probability must be in [0, 1)")
        self.p = float(p)
        self._thr = np.uint16(min(round(self.p * 65536), 65535))
        self._scale = np.float32(1.0 / (1.0 - self.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        seed = int(torch.randint(0, 2**62, (1,)))
        u = np.frombuffer(np.random.default_rng(seed).bytes(2 * x.numel()), dtype=np.uint16)
        mask = (u >= self._thr).astype(np.float32).reshape(tuple(x.shape))
        mask *= self._scale
        return x * torch.from_numpy(mask).to(x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SectionEncoder(nn.Module):
    """Dedicated encoder of one section: expression (n, G_v) -> (mean, std) of z_C."""

    def __init__(self, n_genes: int, n_latent: int = 64, n_hidden: int = 512, dropout: float = 0.2):
        super().__init__()
        self.n_genes = int(n_genes)
        self.net = nn.Sequential(
            nn.Linear(n_genes, n_hidden),
            nn.BatchNorm1d(n_hidden),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            nn.Linear(n_hidden, n_hidden),
            nn.BatchNorm1d(n_hidden),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
        )
        self.mean = nn.Linear(n_hidden, n_latent)
        self.std = nn.Linear(n_hidden, n_latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mean(h), nn.functional.softplus(self.std(h)) + 1e-4


class Discriminator(nn.Module):
    """MLP k-256-256-V giving section logits."""

    def __init__(self, n_latent: int, n_sections: int, n_hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_latent, n_hidden),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            nn.Linear(n_hidden, n_hidden),
            nn.LeakyReLU(0.2),
            Dropout(dropout),
            nn.Linear(n_hidden, n_sections),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def check_section_name(name: str) -> str:
    name = str(name)
    if not name or "." in name:
        raise ValueError(f"section name {name!r} must be non-empty and contain no '.'")
    return name


class FuseMapModule(nn.Module):
    """All trainable pieces of FuseMap (see module docstring)."""

    def __init__(
        self,
        section_genes: dict[str, list[str]],
        n_latent: int = 64,
        n_hidden: int = 512,
        dropout: float = 0.2,
        disc_hidden: int = 256,
        genes: list[str] | None = None,
    ):
        super().__init__()
        self.n_latent = int(n_latent)
        self.section_genes = {check_section_name(k): list(v) for k, v in section_genes.items()}
        if genes is None:
            genes = []
            seen = set()
            for gl in self.section_genes.values():
                for g in gl:
                    if g not in seen:
                        seen.add(g)
                        genes.append(g)
        self.genes = list(genes)
        self.gene_index = {g: i for i, g in enumerate(self.genes)}
        E = torch.empty(len(self.genes), self.n_latent)
        nn.init.xavier_uniform_(E)
        self.gene_embedding = nn.Parameter(E)
        self.encoders = nn.ModuleDict(
            {
                name: SectionEncoder(len(gl), n_latent, n_hidden, dropout)
                for name, gl in self.section_genes.items()
            }
        )
        n_sec = len(self.section_genes)
        self.disc_cell = Discriminator(n_latent, n_sec, disc_hidden, dropout)
        self.disc_tissue = Discriminator(n_latent, n_sec, disc_hidden, dropout)
        self._rows: dict[str, torch.Tensor] = {}

    @property
    def section_names(self) -> list[str]:
        return list(self.section_genes)

    def gene_rows(self, name: str) -> torch.Tensor:
        """Rows of ``gene_embedding`` for the genes of section ``name`` (its column order)."""
        dev = self.gene_embedding.device
        r = self._rows.get(name)
        if r is None or r.device != dev:
            r = torch.as_tensor(
                [self.gene_index[g] for g in self.section_genes[name]], dtype=torch.long, device=dev
            )
            self._rows[name] = r
        return r

    def encode(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of z_C for expression rows ``x`` of section ``name``."""
        return self.encoders[name](x)

    def decode(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """``ReLU(h E_v^T)``: expression of section ``name``'s genes from embeddings ``h``
        (``h = A z_T`` for the training reconstruction, ``z_C`` for imputation)."""
        E = self.gene_embedding.index_select(0, self.gene_rows(name))
        return torch.relu(h @ E.t())

    def gene_frame(self):
        """The gene embedding E as a pandas DataFrame (genes x k, columns e0..e{k-1})."""
        import pandas as pd

        E = self.gene_embedding.detach().float().cpu().numpy()
        return pd.DataFrame(
            E, index=pd.Index(self.genes, name="gene"), columns=[f"e{i}" for i in range(E.shape[1])]
        )

    def impute(self, z_cell: torch.Tensor, genes: list[str] | None = None) -> torch.Tensor:
        """``max(z_C E^T, 0)`` over ``genes`` (default: every gene in the embedding)."""
        if genes is None:
            E = self.gene_embedding
        else:
            idx = torch.as_tensor(
                [self.gene_index[g] for g in genes],
                dtype=torch.long,
                device=self.gene_embedding.device,
            )
            E = self.gene_embedding.index_select(0, idx)
        return torch.relu(z_cell @ E.t())

    # -- pieces for transfer to a query (next issue) ------------------------------------
    def add_genes(self, genes: list[str]) -> list[int]:
        """Append Xavier-initialised rows for genes not yet embedded; returns their rows.

        The Parameter is replaced by a larger one (re-create optimisers afterwards); the
        existing rows keep their values.
        """
        new = [g for g in dict.fromkeys(genes) if g not in self.gene_index]
        if not new:
            return []
        extra = torch.empty(len(new), self.n_latent, device=self.gene_embedding.device)
        nn.init.xavier_uniform_(extra)
        start = len(self.genes)
        self.gene_embedding = nn.Parameter(torch.cat([self.gene_embedding.data, extra], 0))
        for i, g in enumerate(new):
            self.gene_index[g] = start + i
            self.genes.append(g)
        self._rows.clear()
        return list(range(start, start + len(new)))

    def add_section(
        self, name: str, genes: list[str], n_hidden: int | None = None, dropout: float = 0.2
    ) -> SectionEncoder:
        """Add a new encoder (and embedding rows for unseen genes) for a query section."""
        name = check_section_name(name)
        if name in self.section_genes:
            raise ValueError(f"section {name!r} already exists")
        self.add_genes(genes)
        self.section_genes[name] = list(genes)
        first = next(iter(self.encoders.values()), None)
        hid = n_hidden or (first.mean.in_features if first is not None else 512)
        enc = SectionEncoder(len(genes), self.n_latent, hid, dropout).to(self.gene_embedding.device)
        self.encoders[name] = enc
        return enc
