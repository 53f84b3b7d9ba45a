"""Options of the query mapping (:func:`~napari_brainatlas.annotate.map_query`,
:class:`~napari_brainatlas.annotate.QueryMapping`) as one frozen dataclass; the defaults
are the mapping's defaults. ``map_query(model, queries, epochs=5, anchor=0)`` applies
keyword options to the default settings with :func:`dataclasses.replace`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import BrainAtlasInputError
from ..fusemap.settings import FuseMapSettings
from ..models import coerce_fields

__all__ = ["QueryMappingSettings"]


def _maybe(cast):
    return lambda v: None if v is None else cast(v)


@dataclass(frozen=True)
class QueryMappingSettings:
    """Attributes
    ----------
    epochs : default of ``train(epochs=None)``: at most this many epochs (an epoch passes
        every training cell of the largest query section once, and every anchor cell);
        FuseMap's ``FuseMapSettings.epochs``, the one default of docks, CLI and workflows.
    adversarial : True: use the adversarial term when reference embeddings are
        available; False: never; "auto" (default): only when the reference anchor cannot
        be used (no reference counts at hand); see :mod:`~napari_brainatlas.annotate.query`.
    batch_size, lr : seed cells per query section per step and the RMSprop learning rate
        (None: the reference model's).
    patience : early stopping after this many epochs without a better validation loss (3).
    val_fraction : held-out query cells for validation (0.15).
    init : "reference" (start each query encoder from the reference encoder sharing the
        most genes) or "random" (the paper).
    min_steps : at least this many steps per epoch (60, as FuseMap's own floor). An epoch
        is otherwise one pass over the largest query section or anchor set, a handful of
        steps on small data: a Slide-seq query of 183 + 100 cells trained 15 steps in 3
        epochs, and its MLP label transfer fell from 0.87 to 0.81 against 75 steps (dev
        half of the embedding benchmark, issue 26). Was 0 (no floor).
    anchor : weight of the reference-anchor loss (5.0; 0 = off, the paper).
    validate_anchor : hold out 10 % of the anchor cells (at most 2,000 per section) and
        early-stop on the objective that is trained, validation AE loss + ``anchor`` x
        their anchor loss (False, default: the validation AE loss of the query cells
        alone, which can stop while the anchor term still improves; True was not better
        on the dev half: osmFISH split 0, kNN 0.433 vs 0.438).
    """

    epochs: int = FuseMapSettings.epochs
    adversarial: bool | str = "auto"
    batch_size: int | None = None
    lr: float | None = None
    patience: int = 3
    val_fraction: float = 0.15
    init: str = "reference"
    min_steps: int = 60
    anchor: float = 5.0
    validate_anchor: bool = False

    def __post_init__(self):
        adv = self.adversarial
        if not (isinstance(adv, (bool, np.bool_)) or adv == "auto"):
            raise BrainAtlasInputError(f"adversarial must be True, False or 'auto', not {adv!r}")
        if isinstance(adv, np.bool_):
            object.__setattr__(self, "adversarial", bool(adv))
        if self.init not in ("reference", "random"):
            raise BrainAtlasInputError(f"init must be 'reference' or 'random', not {self.init!r}")
        coerce_fields(
            self,
            {
                "epochs": int,
                "batch_size": _maybe(int),
                "lr": _maybe(float),
                "patience": int,
                "val_fraction": float,
                "min_steps": int,
                "anchor": float,
                "validate_anchor": bool,
            },
        )
        if self.epochs < 0:
            raise BrainAtlasInputError("epochs must be 0 or more")
