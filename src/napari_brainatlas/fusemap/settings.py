"""FuseMap's options as one frozen dataclass (the defaults are the model's defaults).

>>> s = FuseMapSettings(n_latent=32)
>>> FuseMap(sections, settings=dataclasses.replace(s, min_steps=0), seed=0)

``FuseMap(sections, n_latent=32)`` (the options as keywords) applies them to the default
settings with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import BrainAtlasInputError
from ..models import coerce_fields

__all__ = ["LEGACY_DEFAULTS", "FuseMapSettings"]


def _pair(v) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


@dataclass(frozen=True)
class FuseMapSettings:
    """Network, training and balance options of :class:`~napari_brainatlas.fusemap.FuseMap`.

    Attributes
    ----------
    n_latent, n_hidden, dropout, disc_hidden : network sizes (64, 512, 0.2, 256).
    batch_size : seed cells per section per step (64).
    lr : RMSprop learning rate of encoders, gene embedding and discriminators (1e-3).
    val_fraction : held-out cells per section for validation (0.15).
    instance_noise : instance noise on the discriminator inputs, in units of the batch's
        per-dimension std, annealed linearly to 0 over the pretraining epochs (1.5).
    adv_ratio : lambda is set at the first step so that lambda * CE = adv_ratio * AE (0.5).
    softmax_ce : the discriminator loss is the cross-entropy of the softmax probabilities
        (bounded), as in the published code (True); False: cross-entropy of the logits.
    adv_objective : "minmax" (published: encoders minimise AE - lambda * CE) or
        "confusion" (encoders push the discriminators towards uniform predictions; an
        alternative we tried, not better on the demo).
    patience : early-stopping patience of (pretraining, final training) = (3, 5).
    lr_patience : ReduceLROnPlateau patience of (pretraining, final training), factor 0.5
        (2, 3 as in the published code's defaults).
    leiden_resolution : resolution of the Leiden clusters of the balance step.
    max_val_cells : validation uses at most this many held-out cells per section per
        epoch (a fixed random subset; keeps validation cheap on huge sections).
    adv_cells : cells the discriminators see each step: "block" (default: every
        training cell the step encodes, the 2-hop neighbourhood for z_C and 1-hop for
        z_T, as the published code does; ~20x more cells per step, so the adversarial
        gradient reaches every encoded cell) or "seeds" (the batch's seed cells only).
    noise_schedule : "pretrain" (instance noise annealed to 0 over pretraining, off in
        final training; default) or "constant" (never annealed: the published code's
        anneal factor ``1 - (epoch - 1) / 1e10`` stays ~1).
    min_steps : at least this many optimisation steps per epoch (60; GLUE-style floor).
        An epoch is otherwise one pass over the largest section, which is only ~20-30
        steps on sections of ~2,000 cells; the floor lets the adversarial game run long
        enough. 0 = one pass per epoch. Has no effect once the largest section has more
        than ``min_steps * batch_size`` training cells.
    sample_latent : reconstruct from a reparameterised sample of z_C (True, default) or
        from its mean (False, as the published code).
    weight_average : decay of an exponential moving average of the weights over the
        optimisation steps of each phase (0.99, about the last 100 steps; warm-up
        ``min(decay, (1 + t) / (10 + t))``); each phase ends with the averaged weights,
        which validation also uses. 0 = off (the last iterate, as the published code).
        The adversarial game does not converge step by step; the iterates cycle around a
        mixed solution and their average is much closer to it.
    recon_from : what the reconstruction term decodes: "both" (default; the mean of the
        two mean squared errors), "tissue" (``ReLU(A z_T E_v^T)``, the published code)
        or "cell" (``ReLU(z_C E_v^T)``, the paper's coupled factorisation).
    panel_anchor : weight of the cross-panel agreement of the section encoders (0 = off,
        the paper, default): each section's seed cells are read through every other
        section's panel (shared genes measured, the others from the decoder) and that
        section's encoder is asked to place them where their own encoder does (MSE to
        the detached z_C; ``_training.cross_panel_loss``). On the dev half of the
        embedding benchmark (issue 26; osmFISH split 0, seed 0) weight 1 raised the
        cross-section kNN accuracy of z_C 0.426 -> 0.459 at equal mixing, and it was the
        default for the first test-half run. It was set back to 0 once label transfer
        read the panel views (``annotate.panel_views``), which ask the encoders the same
        question at transfer time: on the dev halves, transferred cell types with the
        views were as good or better without the anchor (joint MLP 0.679 vs 0.646 over 9
        dev splits of osmFISH, MERFISH and Slide-seq, better on 5) and CCF labels
        much better (from-reference benchmark, 20 dev queries: right division 71 % vs
        53 %, 61 % vs 41 % reading the embedding alone); kNN in z_C itself is 0.02-0.03
        lower without it. benchmarks/embedding/NOTES.md has the rows.
    min_cell_counts : cells with at most this many counts (integer input) are dropped and
        get NaN embeddings (0, default: every cell with a count is embedded; the paper
        drops cells with <= 5 counts, which left query cells without labels - issue 26).
        The query mapping preprocesses its query sections with the reference's value.
    epochs : default of ``FuseMap.train(epochs=None)`` and of ``napari-brainatlas embed``
        / the Embed dock: at most this many epochs in each of the two training phases
        (3 since issue 26: on the dev half, osmFISH split 0, seed 0, cross-section kNN
        accuracy 0.426 at 3, 0.407 at 5 and 0.384 at 15 epochs, mixing above PCA +
        Harmony at all three; Slide-seq dev splits 0-1 with the panel anchor 0.782 /
        0.809 at 3 vs 0.761 / 0.798 at 15; a third to a fifth of the training time).

    Why each default was chosen, with the measurements: benchmarks/embedding/NOTES.md.
    """

    n_latent: int = 64
    n_hidden: int = 512
    dropout: float = 0.2
    disc_hidden: int = 256
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.15
    instance_noise: float = 1.5
    adv_ratio: float = 0.5
    softmax_ce: bool = True
    adv_objective: str = "minmax"
    patience: tuple[int, int] = (3, 5)
    lr_patience: tuple[int, int] = (2, 3)
    leiden_resolution: float = 1.0
    max_val_cells: int = 10000
    adv_cells: str = "block"
    noise_schedule: str = "pretrain"
    min_steps: int = 60
    sample_latent: bool = True
    weight_average: float = 0.99
    recon_from: str = "both"
    panel_anchor: float = 0.0
    min_cell_counts: float = 0.0
    epochs: int = 3

    def __post_init__(self):
        coerce_fields(
            self,
            {
                **dict.fromkeys(
                    ("n_latent", "n_hidden", "disc_hidden", "batch_size", "max_val_cells"), int
                ),
                **dict.fromkeys(("min_steps", "epochs"), int),
                **dict.fromkeys(
                    (
                        "dropout",
                        "lr",
                        "val_fraction",
                        "instance_noise",
                        "adv_ratio",
                        "leiden_resolution",
                        "weight_average",
                        "panel_anchor",
                        "min_cell_counts",
                    ),
                    float,
                ),
                **dict.fromkeys(("softmax_ce", "sample_latent"), bool),
                **dict.fromkeys(
                    ("adv_objective", "adv_cells", "noise_schedule", "recon_from"), str
                ),
                "patience": _pair,
                "lr_patience": _pair,
            },
        )
        if not 0.0 <= self.weight_average < 1.0:
            raise BrainAtlasInputError("weight_average must be in [0, 1)")
        if self.adv_cells not in ("seeds", "block"):
            raise BrainAtlasInputError("adv_cells must be 'seeds' or 'block'")
        if self.noise_schedule not in ("pretrain", "constant"):
            raise BrainAtlasInputError("noise_schedule must be 'pretrain' or 'constant'")
        if self.recon_from not in ("tissue", "cell", "both"):
            raise BrainAtlasInputError("recon_from must be 'tissue', 'cell' or 'both'")
        if self.adv_objective not in ("minmax", "confusion"):
            raise BrainAtlasInputError("adv_objective must be 'minmax' or 'confusion'")
        if min(self.n_latent, self.n_hidden, self.disc_hidden, self.batch_size) < 1:
            raise BrainAtlasInputError(
                "n_latent, n_hidden, disc_hidden and batch_size must be >= 1"
            )
        if self.panel_anchor < 0:
            raise BrainAtlasInputError("panel_anchor must be 0 or more")
        if self.min_cell_counts < 0:
            raise BrainAtlasInputError("min_cell_counts must be 0 or more")
        if self.epochs < 0:
            raise BrainAtlasInputError("epochs must be 0 or more")


#: what a model folder written before an option existed was trained with (the option's
#: value before it was added), used by ``FuseMap.load`` for keys its config.json lacks
LEGACY_DEFAULTS = {
    "softmax_ce": True,
    "adv_objective": "minmax",
    "adv_cells": "seeds",
    "noise_schedule": "pretrain",
    "min_steps": 0,
    "sample_latent": True,
    "weight_average": 0.0,
    "recon_from": "tissue",
    "panel_anchor": 0.0,
    "min_cell_counts": 5.0,
}
