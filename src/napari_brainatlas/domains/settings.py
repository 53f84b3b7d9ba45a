"""SpaCon's network and training options as one frozen dataclass (the defaults are the
model's defaults). ``SpaConModel(data, latent=8)`` applies keyword options to the default
settings with :func:`dataclasses.replace`."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import BrainAtlasInputError
from ..models import coerce_fields

__all__ = ["SpaConPrepareSettings", "SpaConSettings"]


def _maybe_int(v):
    return None if v is None else int(v)


@dataclass(frozen=True)
class SpaConSettings:
    """Attributes
    ----------
    hidden, latent, heads : the graph attention autoencoder (64, 16, 2 heads).
    batch_size : seed cells per step (1024; capped at the number of cells).
    lr : Adam learning rate (2e-3; weight decay 1e-5).
    epochs : default of ``SpaConModel.train(epochs=None)`` (30).
    steps_per_epoch : cap on the steps of an epoch (None: one pass over all cells).
    num_threads : torch threads while training, restored afterwards (None: leave as is;
        1 is fastest on a busy machine).
    """

    hidden: int = 64
    latent: int = 16
    heads: int = 2
    batch_size: int = 1024
    lr: float = 2e-3
    epochs: int = 30
    steps_per_epoch: int | None = None
    num_threads: int | None = None

    def __post_init__(self):
        coerce_fields(
            self,
            {
                "hidden": int,
                "latent": int,
                "heads": int,
                "batch_size": int,
                "lr": float,
                "epochs": int,
                "steps_per_epoch": _maybe_int,
                "num_threads": _maybe_int,
            },
        )
        if min(self.hidden, self.latent, self.heads, self.batch_size) < 1:
            raise BrainAtlasInputError("hidden, latent, heads and batch_size must be >= 1")
        if self.epochs < 1:
            raise BrainAtlasInputError("epochs must be at least 1")


@dataclass(frozen=True)
class SpaConPrepareSettings:
    """How :func:`~napari_brainatlas.domains.prepare_arrays` builds SpaCon's input.

    Attributes
    ----------
    n_pcs : principal components of the standardised expression kept as features (30).
    k_spatial : neighbours of a cell in the spatial kNN graph (8).
    top_k, per_region : the connectivity graph links a cell to cells of its region's
        ``top_k`` most connected regions, ``per_region`` cells in each (4, 3).
    center_sections : subtract each section's mean expression first (False).
    """

    n_pcs: int = 30
    k_spatial: int = 8
    top_k: int = 4
    per_region: int = 3
    center_sections: bool = False

    def __post_init__(self):
        coerce_fields(
            self,
            {
                "n_pcs": int,
                "k_spatial": int,
                "top_k": int,
                "per_region": int,
                "center_sections": bool,
            },
        )
