"""CellFormer's tokenisation, network and training options as one frozen dataclass (the
defaults are the model's defaults). ``CellFormer(adatas, d_model=32)`` applies keyword
options to the default settings with :func:`dataclasses.replace`."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import BrainAtlasInputError
from ..models import coerce_fields

__all__ = ["CellFormerSettings"]


@dataclass(frozen=True)
class CellFormerSettings:
    """Attributes
    ----------
    max_genes : tokens per cell (the highest-expressed genes), 64.
    n_bins : expression bins, 16.
    d_model, n_layers, n_heads, dim_feedforward, dropout : network (64, 2, 4, 128, 0.0).
    mask_fraction : share of tokens whose bin is masked in training (0.3).
    batch_size, lr, weight_decay : AdamW training (32, 3e-3, 1e-2; linear warm-up over
        5 % of the steps, then cosine decay to 5 %).
    binning : "gene" (per-section per-gene quantile bins) or "cell" (per-cell bins).
    pooling : cell embedding = "mean" of the gene-token outputs or the "cls" output.
    loss : "mse" (regress the bin) or "ce" (classify it).
    cell_loss : weight of the head that reconstructs every bin from the cell embedding.
    epochs : default of ``CellFormer.train(epochs=None)`` (10).
    """

    max_genes: int = 64
    n_bins: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dim_feedforward: int = 128
    dropout: float = 0.0
    mask_fraction: float = 0.3
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    binning: str = "gene"
    pooling: str = "mean"
    loss: str = "mse"
    cell_loss: float = 1.0
    epochs: int = 10

    def __post_init__(self):
        ints = ("max_genes", "n_bins", "d_model", "n_layers", "n_heads", "dim_feedforward")
        floats = ("dropout", "mask_fraction", "lr", "weight_decay", "cell_loss")
        coerce_fields(
            self,
            {
                **dict.fromkeys(ints + ("batch_size", "epochs"), int),
                **dict.fromkeys(floats, float),
                **dict.fromkeys(("binning", "pooling", "loss"), str),
            },
        )
        if min(getattr(self, k) for k in ints + ("batch_size",)) < 1:
            raise BrainAtlasInputError(f"{', '.join(ints)} and batch_size must be >= 1")
        if self.d_model % self.n_heads:
            raise BrainAtlasInputError("d_model must be a multiple of n_heads")
        if self.binning not in ("gene", "cell"):
            raise BrainAtlasInputError("binning must be 'gene' or 'cell'")
        if self.pooling not in ("mean", "cls"):
            raise BrainAtlasInputError("pooling must be 'mean' or 'cls'")
        if self.loss not in ("mse", "ce"):
            raise BrainAtlasInputError("loss must be 'mse' or 'ce'")
        if not 0 < self.mask_fraction < 1:
            raise BrainAtlasInputError("mask_fraction must be between 0 and 1")
        if self.epochs < 0:
            raise BrainAtlasInputError("epochs must be 0 or more")
