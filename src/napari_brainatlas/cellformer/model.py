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

    model = CellFormer([adata1, adata2])        # or one AnnData; options: CellFormerSettings
    model.train(epochs=10, progress=progress, cancel=cancel)
    out = model.write_embeddings()              # copies with obsm['X_cellformer']
    z = model.get_latent_representation(write=False)   # (n_cells, d)
    model.save("cellformer_model"); CellFormer.load("cellformer_model", adatas)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn

from .._device import resolve_device
from .._errors import BrainAtlasInputError, Cancelled
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
from .settings import CellFormerSettings

__all__ = [
    "LATENT_KEY",
    "CellFormer",
    "CellFormerModule",
    "CellFormerSettings",
    "resolve_device",
    "tokenize",
]

LATENT_KEY = "X_cellformer"
#: format of the model folder (2: per-gene bins, mean pooling, bilinear cell head with
#: detection, model.pt + genes.json; 3: the same model in the shared model layout)
FORMAT_VERSION = 3
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


class CellFormer(TrainableModel):
    """Transformer cell encoder over one or several sections (see module docstring).

    Parameters
    ----------
    adatas : AnnData or list of AnnData (counts in ``layers['counts']`` or ``X``).
    genes : the vocabulary; default the union of the sections' genes (sorted).
    settings : :class:`~napari_brainatlas.cellformer.CellFormerSettings` (tokens,
        network, training; default ``CellFormerSettings()``).
    seed : seeds the initialisation, batching and masking.
    device : "auto" (CUDA when present), "cpu", "cuda".
    **options : settings fields as keywords (``d_model=32, batch_size=128``), applied
        with :func:`dataclasses.replace`.

    The model protocol (:mod:`napari_brainatlas.models`): :meth:`train`, :attr:`history`,
    :attr:`is_trained`, :meth:`save`, :meth:`load`.
    """

    format_version = FORMAT_VERSION
    accepted_versions = (2, FORMAT_VERSION)

    def __init__(
        self,
        adatas,
        genes: Sequence[str] | None = None,
        *,
        settings: CellFormerSettings | None = None,
        seed: int = 0,
        device: str = "auto",
        **options,
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
        self.settings = s = resolve_settings(CellFormerSettings, settings, options, "CellFormer")
        self.seed = int(seed)
        self.genes = genes
        self.vocab = {g: i + N_SPECIAL for i, g in enumerate(genes)}
        self.device = resolve_device(device)
        torch.manual_seed(self.seed)
        self.module = CellFormerModule(
            len(genes),
            s.n_bins,
            s.d_model,
            s.n_layers,
            s.n_heads,
            s.dim_feedforward,
            s.dropout,
            s.loss,
            s.pooling,
        ).to(self.device)
        self.history = []
        self.is_trained = False
        self.cancelled = False
        self._tokens: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def config(self) -> dict:
        """The settings as a plain dict, with ``seed`` (read-only view)."""
        d = settings_to_dict(self.settings)
        del d["epochs"]
        return {**d, "seed": self.seed}

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
        self,
        epochs: int | None = None,
        *,
        progress: Callable | None = None,
        cancel: Callable | None = None,
    ) -> list[dict]:
        """Masked-value training for ``epochs`` passes over all cells.

        epochs : passes over all cells (default ``settings.epochs``, 10).
        progress : ``progress(done, total, info)`` after every epoch; ``info`` is the
            epoch's record (epoch, loss, mlm, cell, accuracy). For one release ``info``
            also stands for the loss where the old ``progress(epoch, epochs, loss)``
            callbacks used a number (``float(info)``, ``f"{info:.4f}"``), with a
            DeprecationWarning.
        cancel : ``cancel() -> bool`` polled before every step; True raises
            :class:`~napari_brainatlas.Cancelled`. The model then holds the weights
            reached, ``history`` the finished epochs, ``cancelled`` True and
            ``is_trained`` what it was before the call.
        Returns :attr:`history` (one dict per epoch: epoch, loss, mlm, cell, accuracy).
        """
        if not self.adatas:
            raise BrainAtlasInputError("this model has no sections to train on")
        epochs = int(self.settings.epochs if epochs is None else epochs)
        cfg = self.config
        arrays = self._training_arrays()
        n = len(arrays["G"])
        opt = torch.optim.AdamW(
            self.module.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
        )
        steps_per_epoch = max(1, math.ceil(n / cfg["batch_size"]))
        total = max(1, steps_per_epoch * epochs)
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
        for ep in range(epochs):
            self.module.train()
            order = rng.permutation(n)
            sums = dict.fromkeys(("loss", "mlm", "cell", "correct", "masked", "batches"), 0.0)
            for s in range(steps_per_epoch):
                if cancel is not None and cancel():
                    self.cancelled = True
                    self.module.eval()
                    raise Cancelled("CellFormer training cancelled")
                idx = order[s * cfg["batch_size"] : (s + 1) * cfg["batch_size"]]
                if idx.size == 0:
                    continue
                for k, v in self._step(arrays, idx, opt, rng, gen).items():
                    sums[k] += v
                sums["batches"] += 1
                sched.step()
            nb = max(sums["batches"], 1)
            rec = {
                "epoch": e0 + ep + 1,
                "loss": sums["loss"] / nb,
                "mlm": sums["mlm"] / nb,
                "cell": sums["cell"] / nb,
                "accuracy": sums["correct"] / max(sums["masked"], 1),
            }
            self.history.append(rec)
            if progress is not None:
                progress(ep + 1, epochs, _EpochInfo(rec))
        self.module.eval()
        self.is_trained = True
        return self.history

    def _training_arrays(self) -> dict:
        """Tokens of every cell (G, V), detection targets (DET: every gene of the cell's
        panel, detected or not), section of each cell (SEC) and panels (PANEL)."""
        toks = self._all_tokens()
        G = np.concatenate([t[0] for t in toks])
        V = np.concatenate([t[1] for t in toks])
        if not (G != PAD).any():
            raise BrainAtlasInputError("no cell expresses any gene")
        n_cols = len(self.genes) + N_SPECIAL
        DET = sp.vstack([detected(a, self.vocab, n_cols) for a in self.adatas]).tocsr()
        SEC = np.concatenate([np.full(a.n_obs, i) for i, a in enumerate(self.adatas)])
        PANEL = np.zeros((len(self.adatas), n_cols), dtype=bool)
        for i, a in enumerate(self.adatas):
            ids = [self.vocab[str(x)] for x in a.var_names if str(x) in self.vocab]
            PANEL[i, ids] = True
        return {"G": G, "V": V, "DET": DET, "SEC": SEC, "PANEL": PANEL}

    def _step(self, arrays: dict, idx: np.ndarray, opt, rng, gen, max_cand: int = 256) -> dict:
        """One optimisation step on cells ``idx``; the step's sums for the epoch record."""
        cfg, dev, module = self.config, self.device, self.module
        g, v = self._trim(arrays["G"][idx], arrays["V"][idx])
        in_panel = arrays["PANEL"][arrays["SEC"][idx]]  # (B, n_cols)
        cand = np.flatnonzero(in_panel.any(0))
        if cand.size > max_cand:
            cand = np.sort(rng.choice(cand, max_cand, replace=False))
        det_t = torch.from_numpy(arrays["DET"][idx][:, cand].toarray().astype(np.float32)).to(dev)
        det_w = torch.from_numpy(in_panel[:, cand].astype(np.float32)).to(dev)
        cand_t = torch.from_numpy(cand).to(dev)
        g = torch.from_numpy(g).to(dev)
        v = torch.from_numpy(v).to(dev)
        real = g != PAD
        mask = (torch.rand(g.shape, generator=gen) < cfg["mask_fraction"]).to(dev) & real
        # at least one masked token per cell that has tokens
        first = torch.zeros_like(mask)
        n_tok = real.sum(1)
        pick = (torch.rand(len(g), generator=gen).to(dev) * n_tok.clamp(min=1)).long()
        first[torch.arange(len(g), device=dev), pick] = True
        mask = mask | (first & real & (mask.sum(1, keepdim=True) == 0))
        vin = torch.where(mask, torch.full_like(v, cfg["n_bins"] + 1), v)
        cls, tok = module(g, vin)
        cemb = module.cell_embedding(cls, tok, g)
        target = (v - 1).clamp(min=0)
        logits = module.mlm_head(tok)
        cl = module.cell_logits(cemb, g)[..., 1:]
        # which of the panel's genes the cell expresses, from the cell embedding
        pl = module.cell_logits(cemb, cand_t[None].expand(len(idx), -1))[..., 0]
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
            pred = (logits[..., 0][mask] * cfg["n_bins"]).floor().clamp(0, cfg["n_bins"] - 1)
            pred = pred.long()
        loss = mlm + cfg["cell_loss"] * cell
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            correct = float((pred == target[mask]).sum())
        return {
            "loss": float(loss.detach()),
            "mlm": float(mlm.detach()),
            "cell": float(cell.detach()),
            "correct": correct,
            "masked": float(mask.sum()),
        }

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

    def write_embeddings(self, copy: bool = True) -> list[AnnData]:
        """The model's sections with ``obsm['X_cellformer']``: new AnnData objects by
        default (``copy=True``, as every model; the given sections are left alone);
        ``copy=False`` writes into them (as :meth:`get_latent_representation` does)."""
        if not self.adatas:
            raise BrainAtlasInputError("this model has no sections; pass them to load()")
        out = []
        for a, (g, v) in zip(self.adatas, self._all_tokens()):
            b = a.copy() if copy else a
            b.obsm[LATENT_KEY] = self._embed_tokens(g, v)
            out.append(b)
        return out

    # ------------------------------------------------------------------ save / load
    def _write_files(self, folder: Path) -> dict:
        """weights.pt (state dict) and genes.csv (the vocabulary, in token order)."""
        save_state(self.module, folder / WEIGHTS)
        pd.DataFrame({"gene": self.genes}).to_csv(folder / "genes.csv", index=False)
        return {
            "settings": settings_to_dict(self.settings),
            "seed": self.seed,
            "is_trained": self.is_trained,
        }

    @classmethod
    def load(cls, path: str | Path, adatas=None, device: str = "auto") -> CellFormer:
        """Read a model folder written by :meth:`save` (weights loaded with
        ``weights_only=True``; also folders of format 2: model.pt, genes.json);
        ``adatas`` are the sections to embed (optional)."""
        return super().load(path, adatas=adatas, device=device)

    @classmethod
    def _legacy_config(cls, folder: ModelFolder) -> dict | None:
        """Format 2: config.json {"format", "version", "config", "history"}, model.pt,
        genes.json."""
        if folder.has("weights.pt") or not (folder.has("model.pt") or folder.has("genes.json")):
            return None
        meta = folder.json("config.json")
        if meta.get("format") != "napari-brainatlas.cellformer":
            raise folder.error("config.json", "holds no CellFormer model")
        version = meta.get("version", 1)
        if version != 2:
            raise folder.error(
                "config.json",
                f"holds a CellFormer model of format {version}; this version reads formats "
                f"2 and {FORMAT_VERSION} (train the model again)",
            )
        if not isinstance(meta.get("config"), dict):
            raise folder.error("config.json", "lacks the key 'config'")
        settings = dict(meta["config"])
        seed = settings.pop("seed", 0)
        hist = meta.get("history", [])
        if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
            raise folder.error("config.json", "holds a broken history")
        return {
            "model": cls.__name__,
            "format_version": 2,
            "settings": settings,
            "seed": seed,
            "is_trained": meta.get("is_trained", True),
            "_history": hist,
            "_genes": folder.json("genes.json", list),
        }

    @classmethod
    def _from_folder(cls, folder, cfg, adatas=None, device="auto") -> CellFormer:
        legacy = cfg["format_version"] == 2
        if "seed" not in cfg:
            raise folder.error("config.json", "lacks the key 'seed'")
        settings = settings_from_dict(CellFormerSettings, cfg["settings"], folder)
        if legacy:
            genes, history, weights = cfg["_genes"], cfg["_history"], "model.pt"
        else:
            table = folder.csv("genes.csv", dtype=str, keep_default_na=False)
            if list(table.columns) != ["gene"]:
                raise folder.error("genes.csv", "does not have the one column gene")
            genes, history, weights = list(table["gene"]), folder.history(), WEIGHTS
        if not genes or len(set(genes)) != len(genes):
            raise folder.error("genes.json" if legacy else "genes.csv", "is empty or repeats genes")
        state = folder.weights(weights)
        model = cls(
            adatas if adatas is not None else [],
            genes=genes,
            settings=settings,
            seed=int(cfg["seed"]),
            device=device,
        )
        load_state(model.module, state, folder, weights)
        model.module.to(model.device).eval()
        model.history = history
        model.is_trained = bool(cfg.get("is_trained", True))
        return model


class _EpochInfo(dict):
    """An epoch's record handed to ``progress(done, total, info)``. For one release it
    also stands for the epoch's loss where the old ``progress(epoch, epochs, loss)``
    callbacks used a number (``float(info)``, ``f"{info:.4f}"``), with a
    DeprecationWarning."""

    def _loss(self) -> float:
        warnings.warn(
            "CellFormer progress(done, total, info): info is the epoch's record; using it "
            "as the loss is deprecated, read info['loss']",
            DeprecationWarning,
            stacklevel=3,
        )
        return float(self["loss"])

    def __float__(self) -> float:
        return self._loss()

    def __format__(self, spec: str) -> str:
        return format(self._loss(), spec) if spec else str(self)
