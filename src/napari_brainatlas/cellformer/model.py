"""CellFormer: a small Transformer cell encoder over (gene, expression-bin) tokens.

Each cell is a set of tokens, one per expressed gene (at most ``max_genes``, the highest
values first) plus a CLS token. A token is the sum of a gene-identity embedding and an
embedding of the gene's expression bin: log1p of the library-size-normalised count,
binned per cell into ``n_bins`` bins at the quantiles of the cell's own non-zero values
(so cells measured on different platforms and panels share one value scale). Training
masks about 15 % of the value bins and predicts them (cross-entropy) from the other
tokens; a second head predicts every token's bin from the CLS output and the gene
embedding alone, which makes the CLS output a summary of the whole cell. The cell
embedding is the CLS output (``obsm['X_cellformer']``).

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
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import nn

from .._device import resolve_device
from .._errors import BrainAtlasInputError

__all__ = ["CellFormer", "CellFormerModule", "tokenize", "LATENT_KEY", "resolve_device"]

LATENT_KEY = "X_cellformer"
FORMAT_VERSION = 1
PAD, CLS = 0, 1  # gene token ids; real genes start at 2
N_SPECIAL = 2


# ----------------------------------------------------------------------- tokens
def _counts(adata: AnnData):
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if X is None:
        raise BrainAtlasInputError("a section has no expression matrix")
    return sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else \
        np.asarray(X, dtype=np.float32)


def tokenize(adata: AnnData, vocab: dict[str, int], max_genes: int = 64, n_bins: int = 16
             ) -> tuple[np.ndarray, np.ndarray]:
    """(gene ids, value bins), each (n_cells, max_genes) int64, 0-padded.

    Genes not in ``vocab`` are ignored. Per cell: values = log1p(count / total * 1e4);
    the ``max_genes`` largest non-zero values are kept (ties: gene order); bins 1..n_bins
    at the quantiles of the kept values.
    """
    X = _counts(adata)
    if (X.data if sp.issparse(X) else X).size and \
            np.nanmin(X.data if sp.issparse(X) else X) < 0:
        raise BrainAtlasInputError("expression values must not be negative")
    cols = np.array([vocab.get(str(g), -1) for g in adata.var_names], dtype=np.int64)
    n = adata.n_obs
    genes = np.zeros((n, max_genes), dtype=np.int64)
    bins = np.zeros((n, max_genes), dtype=np.int64)
    dense = X.toarray() if sp.issparse(X) and X.shape[1] <= 4096 else X
    edges_q = np.linspace(0, 1, n_bins + 1)[1:-1]
    for i in range(n):
        if sp.issparse(dense):
            row = dense.getrow(i)
            idx, v = row.indices, row.data.astype(np.float64)
        else:
            v_all = np.asarray(dense[i], dtype=np.float64)
            idx = np.flatnonzero(v_all > 0)
            v = v_all[idx]
        ok = (v > 0) & (cols[idx] >= 0) & np.isfinite(v)
        idx, v = idx[ok], v[ok]
        if v.size == 0:
            continue
        total = v.sum()
        v = np.log1p(v / total * 1e4)
        order = np.argsort(-v, kind="stable")[:max_genes]
        idx, v = idx[order], v[order]
        b = np.digitize(v, np.quantile(v, edges_q)) + 1 if v.size > 1 else \
            np.full(1, n_bins, dtype=np.int64)
        k = v.size
        genes[i, :k] = cols[idx]
        bins[i, :k] = np.clip(b, 1, n_bins)
    return genes, bins


# ----------------------------------------------------------------------- network
class CellFormerModule(nn.Module):
    """Token embeddings -> nn.TransformerEncoder -> masked-bin and CLS heads."""

    def __init__(self, n_genes: int, n_bins: int = 16, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, dim_feedforward: int = 128, dropout: float = 0.1):
        super().__init__()
        self.n_bins = n_bins
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
        self.token_mlp = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 2 * d_model),
                                       nn.GELU(), nn.Linear(2 * d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward, dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.mlm_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                      nn.Linear(d_model, n_bins))
        self.cell_head = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(),
                                       nn.Linear(d_model, n_bins))

    def forward(self, genes: torch.Tensor, values: torch.Tensor):
        """genes, values: (B, L) without CLS; returns (cls (B, d), tokens (B, L, d))."""
        b = genes.shape[0]
        g = torch.cat([torch.full((b, 1), CLS, dtype=genes.dtype, device=genes.device),
                       genes], 1)
        v = torch.cat([torch.zeros((b, 1), dtype=values.dtype, device=values.device),
                       values], 1)
        pad = g == PAD
        ge = self.gene_emb(g)
        h = ge * self.value_scale(v) + self.value_emb(v)
        h = h + self.token_mlp(h)
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        return h[:, 0], h[:, 1:]

    def cell_logits(self, cls: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """Bin logits of every gene token from the CLS output and the gene embedding."""
        ge = self.gene_emb(genes)
        c = cls[:, None, :].expand_as(ge)
        return self.cell_head(torch.cat([c, ge], -1))


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
    n_bins : expression bins per cell, 16.
    d_model, n_layers, n_heads, dim_feedforward, dropout : network (64, 2, 4, 128, 0.1).
    mask_fraction : share of tokens whose bin is masked in training (0.15).
    batch_size, lr, weight_decay : AdamW training (128, 1e-3, 1e-2).
    device : "auto" (CUDA when present), "cpu", "cuda".
    seed : seeds the initialisation, batching and masking.
    """

    def __init__(self, adatas, genes: Sequence[str] | None = None, max_genes: int = 64,
                 n_bins: int = 16, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 dim_feedforward: int = 128, dropout: float = 0.1,
                 mask_fraction: float = 0.15, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 1e-2, device: str = "auto", seed: int = 0):
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
        if not 0 < mask_fraction < 1:
            raise BrainAtlasInputError("mask_fraction must be between 0 and 1")
        self.genes = genes
        self.vocab = {g: i + N_SPECIAL for i, g in enumerate(genes)}
        self.config = dict(max_genes=int(max_genes), n_bins=int(n_bins), d_model=int(d_model),
                           n_layers=int(n_layers), n_heads=int(n_heads),
                           dim_feedforward=int(dim_feedforward), dropout=float(dropout),
                           mask_fraction=float(mask_fraction), batch_size=int(batch_size),
                           lr=float(lr), weight_decay=float(weight_decay), seed=int(seed))
        self.device = resolve_device(device)
        torch.manual_seed(seed)
        self.module = CellFormerModule(len(genes), n_bins, d_model, n_layers, n_heads,
                                       dim_feedforward, dropout).to(self.device)
        self.history: list[dict] = []
        self.is_trained = False
        self.cancelled = False
        self._tokens: list[tuple[np.ndarray, np.ndarray]] | None = None

    # ------------------------------------------------------------------ data
    def _tokens_of(self, adata: AnnData):
        return tokenize(adata, self.vocab, self.config["max_genes"], self.config["n_bins"])

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
    def train(self, epochs: int = 10, progress: Callable | None = None,
              cancel: Callable | None = None) -> list[dict]:
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
        opt = torch.optim.AdamW(self.module.parameters(), lr=cfg["lr"],
                                weight_decay=cfg["weight_decay"])
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
            sums = dict(loss=0.0, mlm=0.0, cell=0.0, correct=0.0, masked=0.0, batches=0)
            for s in range(steps_per_epoch):
                if cancel is not None and cancel():
                    self.cancelled = True
                    break
                idx = order[s * cfg["batch_size"]:(s + 1) * cfg["batch_size"]]
                if idx.size == 0:
                    continue
                g, v = self._trim(G[idx], V[idx])
                g = torch.from_numpy(g).to(self.device)
                v = torch.from_numpy(v).to(self.device)
                real = g != PAD
                mask = (torch.rand(g.shape, generator=gen) < cfg["mask_fraction"]).to(
                    self.device) & real
                # at least one masked token per cell that has tokens
                first = torch.zeros_like(mask)
                n_tok = real.sum(1)
                pick = (torch.rand(len(g), generator=gen).to(self.device) *
                        n_tok.clamp(min=1)).long()
                first[torch.arange(len(g), device=self.device), pick] = True
                mask = mask | (first & real & (mask.sum(1, keepdim=True) == 0))
                vin = torch.where(mask, torch.full_like(v, cfg["n_bins"] + 1), v)
                cls, tok = self.module(g, vin)
                target = (v - 1).clamp(min=0)
                logits = self.module.mlm_head(tok)
                mlm = F.cross_entropy(logits[mask], target[mask])
                cl = self.module.cell_logits(cls, g)
                cell = F.cross_entropy(cl[real], target[real])
                loss = mlm + cell
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
                opt.step()
                sched.step()
                with torch.no_grad():
                    sums["correct"] += float((logits[mask].argmax(-1) == target[mask]).sum())
                    sums["masked"] += float(mask.sum())
                sums["loss"] += float(loss.detach())
                sums["mlm"] += float(mlm.detach())
                sums["cell"] += float(cell.detach())
                sums["batches"] += 1
            nb = max(sums["batches"], 1)
            rec = dict(epoch=e0 + ep + 1, loss=sums["loss"] / nb, mlm=sums["mlm"] / nb,
                       cell=sums["cell"] / nb,
                       accuracy=sums["correct"] / max(sums["masked"], 1))
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
    def _embed_tokens(self, G: np.ndarray, V: np.ndarray, batch_size: int = 512
                      ) -> np.ndarray:
        self.module.eval()
        out = []
        for s in range(0, len(G), batch_size):
            g, v = self._trim(G[s:s + batch_size], V[s:s + batch_size])
            cls, _ = self.module(torch.from_numpy(g).to(self.device),
                                 torch.from_numpy(v).to(self.device))
            out.append(cls.float().cpu().numpy())
        d = self.config["d_model"]
        return np.concatenate(out) if out else np.zeros((0, d), np.float32)

    def get_latent_representation(self, adata: AnnData | None = None,
                                  write: bool = True) -> np.ndarray:
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
        meta = dict(format="napari-brainatlas.cellformer", version=FORMAT_VERSION,
                    config=self.config, history=self.history, is_trained=self.is_trained)
        (path / "config.json").write_text(json.dumps(meta, indent=1))
        (path / "genes.json").write_text(json.dumps(self.genes))
        return path

    @classmethod
    def load(cls, path: str | Path, adatas=None, device: str = "auto") -> "CellFormer":
        """Read a model folder written by :meth:`save` (weights loaded with
        ``weights_only=True``); ``adatas`` are the sections to embed (optional)."""
        path = Path(path)
        files = [path / "model.pt", path / "config.json", path / "genes.json"]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise BrainAtlasInputError(f"{path} is not a CellFormer model folder (lacks "
                                       f"{', '.join(missing)})")
        try:
            meta = json.loads((path / "config.json").read_text())
            genes = json.loads((path / "genes.json").read_text())
        except (OSError, ValueError) as exc:
            raise BrainAtlasInputError(f"cannot read the model in {path}: {exc}") from None
        if meta.get("format") != "napari-brainatlas.cellformer":
            raise BrainAtlasInputError(f"{path} holds no CellFormer model")
        model = cls(adatas if adatas is not None else [], genes=genes, device=device,
                    **meta["config"])
        try:
            state = torch.load(path / "model.pt", map_location=model.device,
                               weights_only=True)
            model.module.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - torch raises many types
            raise BrainAtlasInputError(f"cannot load the weights in {path}: "
                                       f"{type(exc).__name__}") from None
        model.module.eval()
        model.history = list(meta.get("history", []))
        model.is_trained = bool(meta.get("is_trained", True))
        return model
