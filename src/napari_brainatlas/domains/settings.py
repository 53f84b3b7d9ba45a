"""SpaCon's network and training options as one frozen dataclass (the defaults are the
model's defaults). ``SpaConModel(data, latent=8)`` applies keyword options to the default
settings with :func:`dataclasses.replace`."""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import BrainAtlasInputError
from ..models import coerce_fields

__all__ = ["SpaConSettings"]


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
