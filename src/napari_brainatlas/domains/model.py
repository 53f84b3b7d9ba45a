"""A graph attention autoencoder in plain torch (no torch-sparse, no PyG).

:class:`GATLayer` is a GAT layer (Velickovic et al. 2018) over an edge list: per head,
``e_ij = LeakyReLU(a_src . W x_j + a_dst . W x_i)`` for every edge ``j -> i``, a softmax
over each destination's incoming edges (max by ``scatter_reduce('amax')``, sums by
``index_add_``), and ``h_i = sum_j softmax(e)_ij W x_j``. It works bipartite-style: the
sources are any node set, the destinations the first ``n_dst`` of them (the seeds of a
neighbour-sampled mini-batch), so a batch needs only its seeds' 1-hop neighbourhood.

:class:`SpaConNet`: two encoders of the same form, one over the spatial graph and one
over the connectivity graph, ``z = Linear(ELU(GAT(x)))``, and one decoder
``x_hat = MLP(z)`` shared by both. Training (see :mod:`.spacon`) reconstructs a cell's
expression features from ``z_spatial``, from ``z_connect`` and from a random mix of the
two, so both embeddings live in one latent space and any mix of them decodes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Encoder", "GATLayer", "SpaConNet", "mix_weight"]


def mix_weight(alpha: float) -> float:
    """SpaCon's mixing curve ``f(alpha) = (exp(-4 alpha) - 1) / (exp(-4) - 1)``:
    f(0) = 0 (spatial only), f(1) = 1 (connectivity only), concave in between."""
    import math

    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError("alpha must be within [0, 1]")
    return (math.exp(-4.0 * a) - 1.0) / (math.exp(-4.0) - 1.0) + 0.0  # no -0.0


class GATLayer(nn.Module):
    """Multi-head graph attention over ``edge_index`` (2, E) = (src, dst).

    ``forward(x, edge_index, n_dst)``: ``x`` (N, in) features of every node the edges
    touch; destinations are nodes ``0 .. n_dst-1``; returns (n_dst, heads * out) if
    ``concat`` else the mean over heads (n_dst, out). Destinations without incoming
    edges get zeros. ``edge_bias`` (E,) is added to the attention logits (e.g. log
    connection weights).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim))
        self.negative_slope = negative_slope
        self.dropout = dropout
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        n_dst: int | None = None,
        edge_bias: torch.Tensor | None = None,
        return_attention: bool = False,
    ):
        n_dst = x.shape[0] if n_dst is None else int(n_dst)
        H, C = self.heads, self.out_dim
        src, dst = edge_index[0], edge_index[1]
        h = self.lin(x).view(-1, H, C)  # (N, H, C)
        a_src = (h * self.att_src).sum(-1)  # (N, H)
        a_dst = (h[:n_dst] * self.att_dst).sum(-1)  # (n_dst, H)
        e = nn.functional.leaky_relu(a_src[src] + a_dst[dst], self.negative_slope)
        if edge_bias is not None:
            e = e + edge_bias.view(-1, 1)
        # softmax over each destination's incoming edges
        emax = torch.full((n_dst, H), float("-inf"), dtype=e.dtype, device=e.device)
        emax = emax.scatter_reduce(
            0, dst.view(-1, 1).expand(-1, H), e.detach(), reduce="amax", include_self=True
        )
        ex = torch.exp(e - emax[dst])
        den = torch.zeros((n_dst, H), dtype=e.dtype, device=e.device).index_add_(0, dst, ex)
        att = ex / den[dst].clamp_min(1e-16)
        if self.dropout and self.training:
            att = nn.functional.dropout(att, self.dropout)
        msg = h[src] * att.unsqueeze(-1)  # (E, H, C)
        out = torch.zeros((n_dst, H, C), dtype=h.dtype, device=h.device).index_add_(0, dst, msg)
        out = out.reshape(n_dst, H * C) if self.concat else out.mean(1)
        out = out + self.bias
        return (out, att) if return_attention else out


class Encoder(nn.Module):
    """``z = Linear(ELU(GAT(x)))`` over one graph."""

    def __init__(self, in_dim: int, hidden: int, latent: int, heads: int = 2):
        super().__init__()
        self.gat = GATLayer(in_dim, hidden, heads=heads, concat=True)
        self.out = nn.Linear(hidden * heads, latent)

    def forward(self, x, edge_index, n_dst, edge_bias=None):
        return self.out(nn.functional.elu(self.gat(x, edge_index, n_dst, edge_bias)))


class SpaConNet(nn.Module):
    """Spatial encoder, connectivity encoder, shared expression decoder."""

    def __init__(self, in_dim: int, hidden: int = 64, latent: int = 16, heads: int = 2):
        super().__init__()
        self.config = {
            "in_dim": int(in_dim),
            "hidden": int(hidden),
            "latent": int(latent),
            "heads": int(heads),
        }
        self.enc_spatial = Encoder(in_dim, hidden, latent, heads)
        self.enc_connect = Encoder(in_dim, hidden, latent, heads)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, in_dim))

    def encode(self, xs, es, ns, xc, ec, nc, bias_c=None):
        return self.enc_spatial(xs, es, ns), self.enc_connect(xc, ec, nc, bias_c)

    def decode(self, z):
        return self.decoder(z)
