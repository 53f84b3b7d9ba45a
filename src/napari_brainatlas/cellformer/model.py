"""CellFormer: a small Transformer cell encoder over (gene, expression-bin) tokens.

Each cell is a set of tokens, one per expressed gene (at most ``max_genes``, the highest
values first) plus a CLS token. A token combines a gene-identity embedding with an
embedding of the gene's expression bin. Values are log1p of the library-size-normalised
count (CP10k); by default (``binning="gene"``) they are binned into ``n_bins`` bins at the
quantiles of each gene's non-zero values over the cells of the section (a per-section,
per-gene rank scale, so platforms and panels share one value scale); ``binning="cell"``
bins at the quantiles of the cell's own values (scGPT). Training masks 30 % of the value
bins and regresses them (MSE on the bin centre scaled to 0..1, ``loss="mse"``; ``"ce"``:
cross-entropy over bins) from the other tokens; a second head regresses every token's
bin from the cell embedding and the gene embedding alone, which makes the cell embedding
a summary of the whole cell. The cell embedding (``obsm['X_cellformer']``) is the mean of
the gene-token outputs (``pooling="mean"``) or the CLS output (``"cls"``); it is computed
in eval mode from the unmasked tokens.

Gene vocabulary = the union of the genes of all sections, so sections with different
panels train one model (genes are matched by name).

scvi-tools style::

    model = CellFormer([adata1, adata2])        # or one AnnData
    model.train(epochs=10)
    z = model.get_latent_representation()       # (n_cells, d); writes obsm['X_cellformer']
    model.save("cellformer_model"); CellFormer.load("cellformer_model", adatas)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn

from .._device import resolve_device
from .._errors import BrainAtlasInputError

__all__ = ["LATENT_KEY", "CellFormer", "CellFormerModule", "resolve_device", "tokenize"]

LATENT_KEY = "X_cellformer"
FORMAT_VERSION = 2  # 2: per-gene bins, mean pooling, bilinear cell head with detection
PAD, CLS = 0, 1  # gene token ids; real genes start at 2
N_SPECIAL = 2


# ----------------------------------------------------------------------- tokens
def _counts(adata: AnnData):
    X = adata.layers.get("counts")
    if X is None:  # (adata.X only read when there is no counts layer)
        X = adata.X
    if X is None:
        raise BrainAtlasInputError("a section has no expression matrix")
    return sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)


def _lognorm(X) -> np.ndarray | sp.csr_matrix:
    """log1p(count / cell total * 1e4) (totals over the given columns)."""
    tot = np.asarray(X.sum(1), dtype=np.float64).ravel()
    inv = np.divide(1e4, tot, out=np.zeros_like(tot), where=tot > 0)
    if sp.issparse(X):
        Y = sp.csr_matrix(sp.diags(inv) @ X, dtype=np.float64)
        Y.data = np.log1p(Y.data)
        Y.eliminate_zeros()
        return Y
    return np.log1p(np.asarray(X, dtype=np.float64) * inv[:, None])


def _gene_bins(Y, n_bins: int):
    """Per gene: bins 1..n_bins at the quantiles (mid-ranks, ties share a bin) of the
    gene's non-zero values over the cells given; zeros stay 0. Same layout as ``Y``."""
    from scipy.stats import rankdata

    if sp.issparse(Y):
        C = sp.csc_matrix(Y)
        B = C.copy()
        B.data = B.data.astype(np.float64)
        for j in range(C.shape[1]):
            a, b = C.indptr[j], C.indptr[j + 1]
            if b > a:
                r = rankdata(C.data[a:b])
                B.data[a:b] = np.ceil(r / (b - a) * n_bins)
        return sp.csr_matrix(B)
    B = np.zeros_like(Y)
    for j in range(Y.shape[1]):
        nz = np.flatnonzero(Y[:, j] > 0)
        if nz.size:
            r = rankdata(Y[nz, j])
            B[nz, j] = np.ceil(r / nz.size * n_bins)
    return B


def tokenize(
    adata: AnnData,
    vocab: dict[str, int],
    max_genes: int = 64,
    n_bins: int = 16,
    binning: str = "gene",
) -> tuple[np.ndarray, np.ndarray]:
    """(gene ids, value bins), each (n_cells, max_genes) int64, 0-padded.

    Genes not in ``vocab`` are ignored. Values = log1p(count / cell total * 1e4) over the
    vocabulary genes. Per cell the ``max_genes`` largest non-zero values are kept (ties:
    gene order). Bins 1..n_bins:

    - ``binning="gene"`` (default): at the quantiles of each gene's non-zero values over
      the cells of ``adata`` (a per-section, per-gene rank scale: high bin = high for
      this gene, comparable across platforms);
    - ``binning="cell"``: at the quantiles of the cell's own kept values (scGPT style).
    """
    if binning not in ("gene", "cell"):
        raise BrainAtlasInputError("binning must be 'gene' or 'cell'")
    X = _counts(adata)
    if (X.data if sp.issparse(X) else X).size and np.nanmin(X.data if sp.issparse(X) else X) < 0:
        raise BrainAtlasInputError("expression values must not be negative")
    cols_all = np.array([vocab.get(str(g), -1) for g in adata.var_names], dtype=np.int64)
    keep = np.flatnonzero(cols_all >= 0)
    cols = cols_all[keep]
    X = X[:, keep]
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        X.data[~np.isfinite(X.data)] = 0
        X.eliminate_zeros()
    else:
        X = np.where(np.isfinite(X), X, 0)
    n = adata.n_obs
    genes = np.zeros((n, max_genes), dtype=np.int64)
    bins = np.zeros((n, max_genes), dtype=np.int64)
    if X.shape[1] == 0:
        return genes, bins
    Y = _lognorm(X)
    B = _gene_bins(Y, n_bins) if binning == "gene" else None
    edges_q = np.linspace(0, 1, n_bins + 1)[1:-1]
    if sp.issparse(Y):
        Y.sort_indices()
        if B is not None:  # same sparsity pattern as Y: row data align
            B.sort_indices()
    for i in range(n):
        if sp.issparse(Y):
            a, b = Y.indptr[i], Y.indptr[i + 1]
            idx, v = Y.indices[a:b], Y.data[a:b]
            bi = B.data[a:b] if B is not None else None
        else:
            idx = np.flatnonzero(Y[i] > 0)
            v = Y[i, idx]
            bi = B[i, idx] if B is not None else None
        if v.size == 0:
            continue
        order = np.argsort(-v, kind="stable")[:max_genes]
        idx, v = idx[order], v[order]
        if bi is not None:
            b = bi[order]
        elif v.size > 1:
            b = np.digitize(v, np.quantile(v, edges_q)) + 1
        else:
            b = np.full(1, n_bins)
        k = v.size
        genes[i, :k] = cols[idx]
        bins[i, :k] = np.clip(np.asarray(b, dtype=np.int64), 1, n_bins)
    return genes, bins


def detected(adata: AnnData, vocab: dict[str, int], n_cols: int) -> sp.csr_matrix:
    """(n_cells, n_cols) boolean CSR: gene (column = vocabulary id) has a count > 0."""
    X = _counts(adata)
    cols = np.array([vocab.get(str(g), -1) for g in adata.var_names], dtype=np.int64)
    keep = np.flatnonzero(cols >= 0)
    X = (
        sp.csr_matrix(X[:, keep])
        if sp.issparse(X)
        else sp.csr_matrix(np.where(np.isfinite(X[:, keep]), X[:, keep], 0))
    )
    X.data = np.where(np.isfinite(X.data), X.data, 0)
    X.eliminate_zeros()
    M = sp.csr_matrix(
        (np.ones(X.nnz, dtype=bool), cols[keep][X.indices], X.indptr), shape=(X.shape[0], n_cols)
    )
    M.sort_indices()
    return M


# ----------------------------------------------------------------------- network
class CellFormerModule(nn.Module):
    """Token embeddings -> nn.TransformerEncoder -> masked-value and cell heads."""

    def __init__(
        self,
        n_genes: int,
        n_bins: int = 16,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        loss: str = "mse",
        pooling: str = "mean",
    ):
        super().__init__()
        self.n_bins = n_bins
        self.pooling = pooling
        n_out = n_bins if loss == "ce" else 1  # bin logits, or the value (regression)
        self.gene_emb = nn.Embedding(n_genes + N_SPECIAL, d_model, padding_idx=PAD)
        # value ids: 0 none (CLS / pad), 1..n_bins, n_bins + 1 = [MASK]
        self.value_emb = nn.Embedding(n_bins + 2, d_model, padding_idx=0)
        # a learned scale per bin (initialised to bin / n_bins; 1 for CLS, 0.5 for [MASK])
        # multiplies the gene embedding: a token is gene x level + level, so a plain sum
        # over the tokens already says which gene is expressed how much
        self.value_scale = nn.Embedding(n_bins + 2, 1)
        with torch.no_grad():
            # the level embedding starts small: at first a cell is its genes x levels
            nn.init.normal_(self.value_emb.weight, std=0.1)
            self.value_emb.weight[0].zero_()
            scale = torch.arange(n_bins + 2, dtype=torch.float32) / n_bins
            scale[0] = 1.0
            scale[-1] = 0.5
            self.value_scale.weight.copy_(scale[:, None])
        # token-wise MLP: lets a token say "this gene at this level" (not only gene + level)
        self.token_mlp = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Linear(2 * d_model, d_model),
        )
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.mlm_head = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, n_out)
        )
        # bilinear cell head (as scGPT's MVC): output k for gene g = <W c, q_k(g)> + b_k,
        # q_k(g) a query from the gene embedding; column 0: logit that the gene is
        # detected in the cell, then the value output(s)
        self.n_cell_out = n_out + 1
        self.cell_proj = nn.Linear(d_model, d_model)
        self.cell_query = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, self.n_cell_out * d_model)
        )
        self.cell_bias = nn.Parameter(torch.zeros(self.n_cell_out))

    def forward(self, genes: torch.Tensor, values: torch.Tensor):
        """genes, values: (B, L) without CLS; returns (cls (B, d), tokens (B, L, d))."""
        b = genes.shape[0]
        g = torch.cat([torch.full((b, 1), CLS, dtype=genes.dtype, device=genes.device), genes], 1)
        v = torch.cat([torch.zeros((b, 1), dtype=values.dtype, device=values.device), values], 1)
        pad = g == PAD
        ge = self.gene_emb(g)
        h = ge * self.value_scale(v) + self.value_emb(v)
        h = h + self.token_mlp(h)
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        return h[:, 0], h[:, 1:]

    def cell_embedding(
        self, cls: torch.Tensor, tok: torch.Tensor, genes: torch.Tensor
    ) -> torch.Tensor:
        """The cell embedding: the mean of the gene-token outputs (``pooling="mean"``) or
        the CLS output (``"cls"``)."""
        if self.pooling == "cls":
            return cls
        real = (genes != PAD).unsqueeze(-1).to(tok.dtype)
        return (tok * real).sum(1) / real.sum(1).clamp(min=1.0)

    def cell_logits(self, cls: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """Bin logits (or values) of every gene token from the cell embedding and the gene
        embedding."""
        q = self.cell_query(self.gene_emb(genes))  # (B, L, k * d)
        q = q.view(*genes.shape, self.n_cell_out, -1)  # (B, L, k, d)
        c = self.cell_proj(cls)[:, None, None, :]  # (B, 1, 1, d)
        return (q * c).sum(-1) / math.sqrt(q.shape[-1]) + self.cell_bias


# ----------------------------------------------------------------------- model
def _section_list(adatas) -> list[AnnData]:
    if isinstance(adatas, AnnData):
        return [adatas]
    out = list(adatas or [])
    for a in out:
        if not isinstance(a, AnnData):
            raise BrainAtlasInputError("CellFormer takes AnnData objects (one per section)")
    return out


class CellFormer:
    """Transformer cell encoder over one or several sections (see module docstring).

    Parameters
    ----------
    adatas : AnnData or list of AnnData (counts in ``layers['counts']`` or ``X``).
    genes : the vocabulary; default the union of the sections' genes (sorted).
    max_genes : tokens per cell (the highest-expressed genes), 64.
    n_bins : expression bins, 16.
    d_model, n_layers, n_heads, dim_feedforward, dropout : network (64, 2, 4, 128, 0.0).
    mask_fraction : share of tokens whose bin is masked in training (0.3).
    batch_size, lr, weight_decay : AdamW training (32, 3e-3, 1e-2; linear warm-up over
        5 % of the steps, then cosine decay to 5 %).
    binning : "gene" (per-section per-gene quantile bins) or "cell" (per-cell bins).
    pooling : cell embedding = "mean" of the gene-token outputs or the "cls" output.
    loss : "mse" (regress the bin) or "ce" (classify it); cell_loss weighs the head
        that reconstructs every bin from the cell embedding (1.0).
    device : "auto" (CUDA when present), "cpu", "cuda".
    seed : seeds the initialisation, batching and masking.
    """

    def __init__(
        self,
        adatas,
        genes: Sequence[str] | None = None,
        max_genes: int = 64,
        n_bins: int = 16,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dim_feedforward: int = 128,
        dropout: float = 0.0,
        mask_fraction: float = 0.3,
        batch_size: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        binning: str = "gene",
        pooling: str = "mean",
        loss: str = "mse",
        cell_loss: float = 1.0,
        device: str = "auto",
        seed: int = 0,
    ):
        self.adatas = _section_list(adatas)
        if genes is None:
            if not self.adatas:
                raise BrainAtlasInputError("give at least one section (or a gene list)")
            genes = sorted(set().union(*[map(str, a.var_names) for a in self.adatas]))
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            raise BrainAtlasInputError("the gene vocabulary has duplicate names")
        if not genes:
            raise BrainAtlasInputError("the sections have no genes")
        if d_model % n_heads:
            raise BrainAtlasInputError("d_model must be a multiple of n_heads")
        if binning not in ("gene", "cell"):
            raise BrainAtlasInputError("binning must be 'gene' or 'cell'")
        if pooling not in ("mean", "cls"):
            raise BrainAtlasInputError("pooling must be 'mean' or 'cls'")
        if loss not in ("mse", "ce"):
            raise BrainAtlasInputError("loss must be 'mse' or 'ce'")
        if not 0 < mask_fraction < 1:
            raise BrainAtlasInputError("mask_fraction must be between 0 and 1")
        self.genes = genes
        self.vocab = {g: i + N_SPECIAL for i, g in enumerate(genes)}
        self.config = {
            "max_genes": int(max_genes),
            "n_bins": int(n_bins),
            "d_model": int(d_model),
            "n_layers": int(n_layers),
            "n_heads": int(n_heads),
            "dim_feedforward": int(dim_feedforward),
            "dropout": float(dropout),
            "mask_fraction": float(mask_fraction),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "binning": str(binning),
            "pooling": str(pooling),
            "loss": str(loss),
            "cell_loss": float(cell_loss),
            "seed": int(seed),
        }
        self.device = resolve_device(device)
        torch.manual_seed(seed)
        self.module = CellFormerModule(
            len(genes), n_bins, d_model, n_layers, n_heads, dim_feedforward, dropout, loss, pooling
        ).to(self.device)
        self.history: list[dict] = []
        self.is_trained = False
        self.cancelled = False
        self._tokens: list[tuple[np.ndarray, np.ndarray]] | None = None

    # ------------------------------------------------------------------ data
    def _tokens_of(self, adata: AnnData):
        return tokenize(
            adata,
            self.vocab,
            self.config["max_genes"],
            self.config["n_bins"],
            self.config["binning"],
        )

    def _all_tokens(self):
        if self._tokens is None:
            self._tokens = [self._tokens_of(a) for a in self.adatas]
        return self._tokens

    @staticmethod
    def _trim(g: np.ndarray, v: np.ndarray):
        """Drop all-pad columns at the right of a batch."""
        used = int((g != PAD).sum(1).max()) if len(g) else 0
        used = max(used, 1)
        return g[:, :used], v[:, :used]

    # ------------------------------------------------------------------ training
    def train(
        self, epochs: int = 10, progress: Callable | None = None, cancel: Callable | None = None
    ) -> list[dict]:
        """Masked-value training for ``epochs`` passes over all cells.

        progress : ``progress(epoch, epochs, loss)`` after every epoch.
        cancel : ``cancel() -> bool`` polled before every step; True stops at once
            (weights reached are kept, ``self.cancelled`` is True).
        Returns the history (one dict per epoch: epoch, loss, mlm, cell, accuracy).
        """
        if not self.adatas:
            raise BrainAtlasInputError("this model has no sections to train on")
        cfg = self.config
        toks = self._all_tokens()
        G = np.concatenate([t[0] for t in toks])
        V = np.concatenate([t[1] for t in toks])
        if not (G != PAD).any():
            raise BrainAtlasInputError("no cell expresses any gene")
        n = len(G)
        # detection targets: every gene of the cell's panel, detected (1) or not (0)
        n_cols = len(self.genes) + N_SPECIAL
        DET = sp.vstack([detected(a, self.vocab, n_cols) for a in self.adatas]).tocsr()
        SEC = np.concatenate([np.full(a.n_obs, i) for i, a in enumerate(self.adatas)])
        PANEL = np.zeros((len(self.adatas), n_cols), dtype=bool)
        for i, a in enumerate(self.adatas):
            ids = [self.vocab[str(x)] for x in a.var_names if str(x) in self.vocab]
            PANEL[i, ids] = True
        max_cand = 256
        opt = torch.optim.AdamW(
            self.module.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
        )
        steps_per_epoch = max(1, math.ceil(n / cfg["batch_size"]))
        total = max(1, steps_per_epoch * int(epochs))
        warm = max(1, total // 20)

        def lr_at(step: int) -> float:  # linear warm-up, then cosine down to 5 %
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        rng = np.random.default_rng(cfg["seed"] + 1 + len(self.history))
        gen = torch.Generator().manual_seed(cfg["seed"] + 7 + len(self.history))
        self.cancelled = False
        e0 = len(self.history)
        for ep in range(int(epochs)):
            self.module.train()
            order = rng.permutation(n)
            sums = {
                "loss": 0.0,
                "mlm": 0.0,
                "cell": 0.0,
                "correct": 0.0,
                "masked": 0.0,
                "batches": 0,
            }
            for s in range(steps_per_epoch):
                if cancel is not None and cancel():
                    self.cancelled = True
                    break
                idx = order[s * cfg["batch_size"] : (s + 1) * cfg["batch_size"]]
                if idx.size == 0:
                    continue
                g, v = self._trim(G[idx], V[idx])
                in_panel = PANEL[SEC[idx]]  # (B, n_cols)
                cand = np.flatnonzero(in_panel.any(0))
                if cand.size > max_cand:
                    cand = np.sort(rng.choice(cand, max_cand, replace=False))
                det_t = torch.from_numpy(DET[idx][:, cand].toarray().astype(np.float32)).to(
                    self.device
                )
                det_w = torch.from_numpy(in_panel[:, cand].astype(np.float32)).to(self.device)
                cand_t = torch.from_numpy(cand).to(self.device)
                g = torch.from_numpy(g).to(self.device)
                v = torch.from_numpy(v).to(self.device)
                real = g != PAD
                mask = (torch.rand(g.shape, generator=gen) < cfg["mask_fraction"]).to(
                    self.device
                ) & real
                # at least one masked token per cell that has tokens
                first = torch.zeros_like(mask)
                n_tok = real.sum(1)
                pick = (
                    torch.rand(len(g), generator=gen).to(self.device) * n_tok.clamp(min=1)
                ).long()
                first[torch.arange(len(g), device=self.device), pick] = True
                mask = mask | (first & real & (mask.sum(1, keepdim=True) == 0))
                vin = torch.where(mask, torch.full_like(v, cfg["n_bins"] + 1), v)
                cls, tok = self.module(g, vin)
                cemb = self.module.cell_embedding(cls, tok, g)
                target = (v - 1).clamp(min=0)
                logits = self.module.mlm_head(tok)
                cl = self.module.cell_logits(cemb, g)[..., 1:]
                # which of the panel's genes the cell expresses, from the cell embedding
                pl = self.module.cell_logits(cemb, cand_t[None].expand(len(idx), -1))[..., 0]
                det = F.binary_cross_entropy_with_logits(
                    pl, det_t, weight=det_w, reduction="sum"
                ) / det_w.sum().clamp(min=1.0)
                if cfg["loss"] == "ce":
                    mlm = F.cross_entropy(logits[mask], target[mask])
                    cell = F.cross_entropy(cl[real], target[real]) + det
                    pred = logits[mask].argmax(-1)
                else:  # regression on the bin centre scaled to (0, 1); the MSE is divided
                    # by 1/12 (the variance of uniform bins), so guessing scores about 1
                    tv = (target.to(logits.dtype) + 0.5) / cfg["n_bins"]
                    mlm = 12.0 * F.mse_loss(logits[..., 0][mask], tv[mask])
                    cell = 12.0 * F.mse_loss(cl[..., 0][real], tv[real]) + det
                    pred = (
                        (logits[..., 0][mask] * cfg["n_bins"])
                        .floor()
                        .clamp(0, cfg["n_bins"] - 1)
                        .long()
                    )
                loss = mlm + cfg["cell_loss"] * cell
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
                opt.step()
                sched.step()
                with torch.no_grad():
                    sums["correct"] += float((pred == target[mask]).sum())
                    sums["masked"] += float(mask.sum())
                sums["loss"] += float(loss.detach())
                sums["mlm"] += float(mlm.detach())
                sums["cell"] += float(cell.detach())
                sums["batches"] += 1
            nb = max(sums["batches"], 1)
            rec = {
                "epoch": e0 + ep + 1,
                "loss": sums["loss"] / nb,
                "mlm": sums["mlm"] / nb,
                "cell": sums["cell"] / nb,
                "accuracy": sums["correct"] / max(sums["masked"], 1),
            }
            if sums["batches"]:
                self.history.append(rec)
            if progress is not None and sums["batches"]:
                progress(ep + 1, int(epochs), rec["loss"])
            if self.cancelled:
                break
        self.module.eval()
        self.is_trained = True
        return self.history

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def _embed_tokens(self, G: np.ndarray, V: np.ndarray, batch_size: int = 512) -> np.ndarray:
        self.module.eval()
        out = []
        for s in range(0, len(G), batch_size):
            g, v = self._trim(G[s : s + batch_size], V[s : s + batch_size])
            gt = torch.from_numpy(g).to(self.device)
            cls, tok = self.module(gt, torch.from_numpy(v).to(self.device))
            out.append(self.module.cell_embedding(cls, tok, gt).float().cpu().numpy())
        d = self.config["d_model"]
        return np.concatenate(out) if out else np.zeros((0, d), np.float32)

    def get_latent_representation(
        self, adata: AnnData | None = None, write: bool = True
    ) -> np.ndarray:
        """Cell embeddings (n, d).

        Without ``adata``: every cell of the model's sections, stacked in their order;
        each section gets ``obsm['X_cellformer']``. With ``adata``: that one (genes
        outside the vocabulary are ignored), written to its obsm when ``write``.
        """
        if adata is not None:
            z = self._embed_tokens(*self._tokens_of(adata))
            if write:
                adata.obsm[LATENT_KEY] = z
            return z
        if not self.adatas:
            raise BrainAtlasInputError("this model has no sections; pass adata=")
        zs = [self._embed_tokens(g, v) for g, v in self._all_tokens()]
        if write:
            for a, z in zip(self.adatas, zs):
                a.obsm[LATENT_KEY] = z
        return np.concatenate(zs)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write ``model.pt`` (state_dict), ``config.json`` and ``genes.json`` to a folder."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise BrainAtlasInputError(f"{path} exists and is not a folder")
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise BrainAtlasInputError(f"{path} is not empty (use overwrite=True)")
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, path / "model.pt")
        meta = {
            "format": "napari-brainatlas.cellformer",
            "version": FORMAT_VERSION,
            "config": self.config,
            "history": self.history,
            "is_trained": self.is_trained,
        }
        (path / "config.json").write_text(json.dumps(meta, indent=1))
        (path / "genes.json").write_text(json.dumps(self.genes))
        return path

    @classmethod
    def load(cls, path: str | Path, adatas=None, device: str = "auto") -> CellFormer:
        """Read a model folder written by :meth:`save` (weights loaded with
        ``weights_only=True``); ``adatas`` are the sections to embed (optional)."""
        path = Path(path)
        files = [path / "model.pt", path / "config.json", path / "genes.json"]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise BrainAtlasInputError(
                f"{path} is not a CellFormer model folder (lacks {', '.join(missing)})"
            )
        try:
            meta = json.loads((path / "config.json").read_text())
            genes = json.loads((path / "genes.json").read_text())
        except (OSError, ValueError) as exc:
            raise BrainAtlasInputError(f"cannot read the model in {path}: {exc}") from None
        if meta.get("format") != "napari-brainatlas.cellformer":
            raise BrainAtlasInputError(f"{path} holds no CellFormer model")
        if int(meta.get("version", 1)) != FORMAT_VERSION:
            raise BrainAtlasInputError(
                f"{path} holds a CellFormer model of format {meta.get('version', 1)}; this "
                f"version reads format {FORMAT_VERSION} (train the model again)"
            )
        config = dict(meta["config"])
        model = cls(adatas if adatas is not None else [], genes=genes, device=device, **config)
        try:
            state = torch.load(path / "model.pt", map_location=model.device, weights_only=True)
            model.module.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - torch raises many types
            raise BrainAtlasInputError(
                f"cannot load the weights in {path}: {type(exc).__name__}"
            ) from None
        model.module.eval()
        model.history = list(meta.get("history", []))
        model.is_trained = bool(meta.get("is_trained", True))
        return model
