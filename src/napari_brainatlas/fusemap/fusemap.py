"""FuseMap: joint cell / tissue / gene embedding of spatial transcriptomics sections.

scvi-tools style entry point::

    model = FuseMap(sections)                  # list of AnnData, one per section
    model.train(max_epochs=15)                 # pretrain, balance weights, final training
    model.write_embeddings()                   # obsm['X_fusemap_cell' / 'X_fusemap_tissue']
    genes = model.gene_embedding()             # DataFrame genes x k
    model.save("model_dir"); FuseMap.load("model_dir", sections)

See :mod:`._module` for the network and method.md for the published method.

Training, step by step (one step = ``batch_size`` seed cells from every section, the
smaller sections cycled; an epoch passes every training cell of the largest section, and
is at least ``min_steps`` steps long):

1. every section's encoder encodes the 2-hop graph neighbourhood of its seeds
   (see :mod:`._training`); z_C is sampled (reparameterised), ``z_T = A z_C``;
   ``X_hat = ReLU(A z_T E_v^T)`` (published code) and ``X_hat_C = ReLU(z_C E_v^T)``
   (paper); AE loss = mean over sections of ``recon + KL(q(z_C) || N(0, I)) / |T_v|``
   (KL summed over dimensions, averaged over seeds) with ``recon`` the mean of
   ``MSE(X, X_hat)`` and ``MSE(X, X_hat_C)`` (``recon_from="both"``, default; "tissue"
   / "cell" keep one of them);
2. the discriminators take one RMSprop step on the (balance-weighted) cross-entropy of
   the section labels of the posterior means z_C of every encoded training cell (2-hop
   neighbourhood) and ``A z_C`` (1-hop) (+ instance noise; ``adv_cells``);
3. encoders and gene embedding take one RMSprop step on ``AE - lambda * CE``; lambda is
   fixed at the first step so that ``lambda * CE = 0.5 * AE``.

4. an exponential moving average of all weights is updated (``weight_average``); each
   phase ends with the averaged weights (the adversarial game cycles from step to step
   instead of converging, and the average of the iterates is far better mixed).

After each epoch the AE loss of the held-out 15 % (validation, with the averaged
weights) drives ReduceLROnPlateau (x0.5) and early stopping. Phases: pretrain -> balance weights (:mod:`._balance`) ->
final training with the weights on both adversarial terms.

Where the paper and the published code differ, this follows the code (method.md):
``z_T`` is one parameter-free propagation ``A z_C`` (paper: GCN layers with weights and
a GCN decoder back to z_C); the discriminators see posterior means; their loss is the cross-entropy of
the softmax probabilities (``softmax_ce=True``, bounded; the paper writes the plain
cross-entropy, ``softmax_ce=False``); instance noise is 1.5 x the batch's per-dimension
std; LR patience 2 (pretrain) / 3 (final). Choices of ours, each measured on the demo
(see the parameters): the noise is annealed to 0 over pretraining (the published code's
factor stays ~1); the reconstruction uses a sample of z_C (the code: its mean); an epoch has at
least ``min_steps`` steps; the reconstruction term is the mean of the code's
``ReLU(A z_T E_v^T)`` and the paper's ``ReLU(z_C E_v^T)`` (``recon_from``); each phase ends with an exponential moving average of its
weights (``weight_average``; the published code keeps the last iterate);
validation is capped at ``max_val_cells`` held-out cells per section; the
balance-weight formula is ours (the paper gives only the recipe).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData

from .._device import resolve_device
from .._errors import BrainAtlasInputError
from . import distributed as D
from ._balance import balance_weights
from ._graph import spatial_graph
from ._module import FuseMapModule
from ._preprocess import PreparedSection, preprocess_section
from ._training import SectionData, cross_panel_loss, forward_section, infer_latent

__all__ = ["FuseMap", "resolve_device"]

FORMAT_VERSION = 1
CELL_KEY = "X_fusemap_cell"
TISSUE_KEY = "X_fusemap_tissue"


def _section_names(sections: list[AnnData], names) -> list[str]:
    if names is None:
        names = []
        for i, a in enumerate(sections):
            n = None
            if "section" in a.obs.columns:
                u = pd.unique(a.obs["section"].astype(str))
                if len(u) == 1:
                    n = u[0]
            names.append(n if n else f"section{i}")
    names = [str(n).replace(".", "_") or f"section{i}" for i, n in enumerate(names)]
    if len(names) != len(sections):
        raise BrainAtlasInputError("give one section name per section")
    seen: dict[str, int] = {}
    out = []
    for n in names:  # make unique
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        seen.setdefault(n, 0)
        out.append(n)
    return out


class _WeightAverage:
    """Exponential moving average of every floating-point entry of a module's state
    (parameters and BatchNorm statistics) with the warm-up ``min(decay, (1+t)/(10+t))``
    (t = steps so far in the phase): over a phase of T steps it weighs mostly the last
    ~T/10 steps, until ``1 / (1 - decay)`` steps bound the window.

    ``apply()`` loads the average into the module; ``swapped()`` does so temporarily.
    A decay of 0 disables it (every method is then a no-op).
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay, self.t = module, float(decay), 0
        self.avg = None
        if self.decay > 0:
            self.avg = {
                k: v.detach().clone()
                for k, v in module.state_dict().items()
                if v.dtype.is_floating_point
            }

    @torch.no_grad()
    def update(self) -> None:
        if self.avg is None:
            return
        self.t += 1
        d = min(self.decay, (1.0 + self.t) / (10.0 + self.t))
        for k, v in self.module.state_dict().items():
            a = self.avg.get(k)
            if a is not None:
                a.mul_(d).add_(v.detach(), alpha=1.0 - d)

    @torch.no_grad()
    def apply(self) -> None:
        if self.avg is not None and self.t > 0:
            self.module.load_state_dict(self.avg, strict=False)

    def swapped(self):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            if self.avg is None or self.t == 0:
                yield
                return
            raw = {
                k: v.detach().clone() for k, v in self.module.state_dict().items() if k in self.avg
            }
            self.module.load_state_dict(self.avg, strict=False)
            try:
                yield
            finally:
                self.module.load_state_dict(raw, strict=False)

        return ctx()


def _check_config(cfg: dict) -> None:
    """One BrainAtlasInputError (a ValueError) for a bad training option."""
    if not 0.0 <= float(cfg.get("weight_average", 0.0)) < 1.0:
        raise BrainAtlasInputError("weight_average must be in [0, 1)")
    if cfg.get("adv_cells", "seeds") not in ("seeds", "block"):
        raise BrainAtlasInputError("adv_cells must be 'seeds' or 'block'")
    if cfg.get("noise_schedule", "pretrain") not in ("pretrain", "constant"):
        raise BrainAtlasInputError("noise_schedule must be 'pretrain' or 'constant'")
    if float(cfg.get("panel_anchor", 0.0)) < 0:
        raise BrainAtlasInputError("panel_anchor must be 0 or more")
    if cfg.get("recon_from", "tissue") not in ("tissue", "cell", "both"):
        raise BrainAtlasInputError("recon_from must be 'tissue', 'cell' or 'both'")


class FuseMap:
    """FuseMap model over a list of sections.

    Parameters
    ----------
    sections : list of AnnData, one per section (``obsm['spatial']`` in um; integer
        counts in ``layers['counts']`` or ``X``; gene panels may differ). The objects are
        not modified until :meth:`write_embeddings` is called.
    section_names : names (encoder keys); default ``obs['section']`` when it has a
        single value, else ``section{i}``. '.' is replaced by '_'; duplicates get suffixes.
    n_latent, n_hidden, dropout, disc_hidden : network sizes (64, 512, 0.2, 256).
    batch_size : seed cells per section per step (64).
    lr : RMSprop learning rate of encoders, gene embedding and discriminators (1e-3).
    val_fraction : held-out cells per section for validation (0.15).
    instance_noise : instance noise on the discriminator inputs, in units of the batch's
        per-dimension std, annealed linearly to 0 over the pretraining epochs (1.5).
    softmax_ce : the discriminator loss is the cross-entropy of the softmax probabilities
        (bounded), as in the published code (True); False: cross-entropy of the logits.
    adv_ratio : lambda is set at the first step so that lambda * CE = adv_ratio * AE (0.5).
    adv_objective : "minmax" (published: encoders minimise AE - lambda * CE) or
        "confusion" (encoders push the discriminators towards uniform predictions; an
        alternative we tried, not better on the demo).
    patience : early-stopping patience of (pretraining, final training) = (3, 5).
    lr_patience : ReduceLROnPlateau patience of (pretraining, final training), factor 0.5
        (2, 3 as in the published code's defaults).
    leiden_resolution : resolution of the Leiden clusters of the balance step.
    max_val_cells : validation uses at most this many held-out cells per section per
        epoch (a fixed random subset; keeps validation cheap on huge sections).
    min_steps : at least this many optimisation steps per epoch (60; GLUE-style floor).
        An epoch is otherwise one pass over the largest section, which is only ~20-30
        steps on sections of ~2,000 cells, far fewer than the published model gets on
        atlas-sized sections; the floor lets the adversarial game run long enough
        (measured: iLISI of z_C 0.19 -> 0.27 on the demo, 0.33 -> 0.46 on osmFISH at
        3 + 3 epochs, label kNN accuracy unchanged; benchmarks/embedding/NOTES.md).
        0 = one pass per epoch. Has no effect once the largest section has more than
        ``min_steps * batch_size`` training cells.
    adv_cells : cells the discriminators see each step: "block" (default: every
        training cell the step encodes, the 2-hop neighbourhood for z_C and 1-hop for
        z_T, as the published code does; ~20x more cells per step, so the adversarial
        gradient reaches every encoded cell) or "seeds" (the batch's seed cells only).
        Measured with weight averaging and ``recon_from="both"`` (demo, seed 0, 15 + 15
        epochs): iLISI of z_C 0.565 -> 0.633, kNN accuracy 0.833 -> 0.816; without
        weight averaging (192 steps) "block" was not better.
    noise_schedule : "pretrain" (instance noise annealed to 0 over pretraining, off in
        final training; default) or "constant" (never annealed: the published code's
        anneal factor ``1 - (epoch - 1) / 1e10`` stays ~1; worse on the demo).
    sample_latent : reconstruct from a reparameterised sample of z_C (True, default) or
        from its mean (False, as the published code; not better on the demo).
    weight_average : decay of an exponential moving average of the weights over the
        optimisation steps of each phase (0.99, about the last 100 steps; warm-up
        ``min(decay, (1 + t) / (10 + t))``); each phase ends with the averaged weights,
        which validation also uses. 0 = off (the last iterate, as the published code).
        Why: the adversarial game does not converge step by step - the section-specific
        encoders move whole sections across the discriminators' boundary after each
        discriminator update, so the discriminators sit at chance while a fresh
        classifier still separates the sections of the last iterate; the iterates cycle
        around a mixed solution and their average is much closer to it (Polyak / EMA
        averaging of GAN iterates). Measured on the demo at 600 steps: iLISI of z_C
        0.36 -> 0.46, cross-section kNN accuracy 0.66 -> 0.73
        (benchmarks/embedding/NOTES.md).
    recon_from : what the reconstruction term decodes: "both" (default; the mean of the
        two mean squared errors below), "tissue" (``ReLU(A z_T E_v^T)``, the published
        code, only) or "cell" (``ReLU(z_C E_v^T)``, the paper's coupled factorisation of
        z_C and E and the form imputation uses, only). Why "both": with the code's term
        alone z_C is trained only through 2-hop graph averages of itself, so a cell's own
        type is weakly constrained; adding the paper's term keeps the tissue term (z_T)
        and ties each z_C to its own expression. Measured (seed 0, 15 + 15 epochs):
        cross-section kNN accuracy of z_C 0.742 -> 0.833 (demo), 0.868 -> 0.943
        (MERFISH), iLISI 0.542 -> 0.565 / 0.950 -> 0.937
        (benchmarks/embedding/NOTES.md). Models saved without this key load
        as "tissue" (how they were trained).
    panel_anchor : weight of the cross-panel agreement of the section encoders (1.0; 0 =
        off, the paper): each section's seed cells are read through every other
        section's panel (shared genes measured, the others from the decoder) and that
        section's encoder is asked to place them where their own encoder does (MSE to
        the detached z_C; ``_training.cross_panel_loss``). The adversary aligns the
        sections' distributions, not their cells; with panels sharing 10-20 genes the
        sections' encoders placed one cell type apart. Measured on the dev half of the
        embedding benchmark (issue 26; osmFISH split 0, seed 0, 3 + 3 epochs):
        cross-section kNN accuracy of z_C 0.426 -> 0.459 at equal mixing (iLISI 0.669 /
        0.674); weight 3 was worse (0.434) (benchmarks/embedding/NOTES.md).
    min_cell_counts : cells with at most this many counts (integer input) are dropped and
        get NaN embeddings (0: every cell with a count is embedded; the paper drops cells
        with <= 5 counts, which left query cells without labels - issue 26).
    device : "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1"...
    seed : seeds every random choice; training on CPU is deterministic for a seed (on
        the same machine and thread count).
    """

    def __init__(
        self,
        sections: list[AnnData],
        section_names: list[str] | None = None,
        n_latent: int = 64,
        n_hidden: int = 512,
        dropout: float = 0.2,
        disc_hidden: int = 256,
        batch_size: int = 64,
        lr: float = 1e-3,
        val_fraction: float = 0.15,
        instance_noise: float = 1.5,
        adv_ratio: float = 0.5,
        softmax_ce: bool = True,
        adv_objective: str = "minmax",
        patience: tuple[int, int] = (3, 5),
        lr_patience: tuple[int, int] = (2, 3),
        leiden_resolution: float = 1.0,
        max_val_cells: int = 10000,
        adv_cells: str = "block",
        noise_schedule: str = "pretrain",
        min_steps: int = 60,
        sample_latent: bool = True,
        weight_average: float = 0.99,
        recon_from: str = "both",
        panel_anchor: float = 1.0,
        min_cell_counts: float = 0,
        device: str = "auto",
        seed: int = 0,
    ):
        if isinstance(sections, AnnData):
            sections = [sections]
        sections = list(sections)
        if not sections:
            raise BrainAtlasInputError("give at least one section")
        self.config = {
            "n_latent": int(n_latent),
            "n_hidden": int(n_hidden),
            "dropout": float(dropout),
            "disc_hidden": int(disc_hidden),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "val_fraction": float(val_fraction),
            "instance_noise": float(instance_noise),
            "adv_ratio": float(adv_ratio),
            "softmax_ce": bool(softmax_ce),
            "adv_objective": str(adv_objective),
            "patience": [int(patience[0]), int(patience[1])],
            "lr_patience": [int(lr_patience[0]), int(lr_patience[1])],
            "leiden_resolution": float(leiden_resolution),
            "max_val_cells": int(max_val_cells),
            "adv_cells": str(adv_cells),
            "noise_schedule": str(noise_schedule),
            "min_steps": int(min_steps),
            "sample_latent": bool(sample_latent),
            "weight_average": float(weight_average),
            "recon_from": str(recon_from),
            "panel_anchor": float(panel_anchor),
            "min_cell_counts": float(min_cell_counts),
            "seed": int(seed),
        }
        _check_config(self.config)
        self.device = resolve_device(device)
        self.lambda_adv: float | None = None
        self.history: list[dict] = []
        self.is_trained = False
        self.cancelled = False
        self._anneal, self._burnin = 1.0, 1
        self._latent_cache: dict[str, list[np.ndarray]] = {}
        self._attach(sections, _section_names(sections, section_names))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config["seed"])
            self.module = FuseMapModule(
                {p.name: p.genes for p in self.prepared},
                n_latent=n_latent,
                n_hidden=n_hidden,
                dropout=dropout,
                disc_hidden=disc_hidden,
            ).to(self.device)
        D.broadcast_module(self.module)

    # ------------------------------------------------------------------ data
    def _attach(self, sections: list[AnnData], names: list[str]) -> None:
        self.adatas = sections
        self.section_names = names
        self.prepared: list[PreparedSection] = [
            preprocess_section(a, n, min_cell_counts=self.config.get("min_cell_counts", 5))
            for a, n in zip(sections, names)
        ]
        rng = np.random.default_rng(self.config["seed"])
        self.data: list[SectionData] = []
        for code, p in enumerate(self.prepared):
            A = spatial_graph(p.coords)
            perm = rng.permutation(p.n_cells)
            n_val = int(np.rint(self.config["val_fraction"] * p.n_cells))
            n_val = min(max(n_val, 1), p.n_cells - 2) if p.n_cells > 3 else 0
            val = np.sort(perm[:n_val])
            train = np.sort(perm[n_val:])
            mv = self.config["max_val_cells"]
            if len(val) > mv:
                val = np.sort(rng.choice(val, mv, replace=False))
            self.data.append(
                SectionData(
                    name=p.name,
                    code=code,
                    X=p.X,
                    A=A,
                    train_idx=train,
                    val_idx=val,
                    w_cell=np.ones(p.n_cells, np.float32),
                    w_tissue=np.ones(p.n_cells, np.float32),
                )
            )

    @property
    def n_sections(self) -> int:
        return len(self.section_names)

    # ------------------------------------------------------------------ training
    def _noise(self, z: torch.Tensor) -> torch.Tensor:
        """Instance noise: N(0, (c * anneal * std_batch)^2) per latent dimension, with c =
        ``instance_noise`` and anneal going linearly from 1 to 0 over the pretraining
        epochs (as in the published code: align_noise_coef 1.5, GLUE-style burn-in)."""
        s = self.config["instance_noise"] * self._anneal
        if s <= 0 or z.shape[0] < 2:
            return z
        sd = z.detach().std(dim=0) + 1e-10
        return z + s * sd * torch.randn_like(z)

    def _wce(self, logits, y, w):
        if self.config.get("softmax_ce", True):
            # published code: cross-entropy of the softmax probabilities (a bounded loss)
            logits = torch.softmax(logits, dim=1)
        return (F.cross_entropy(logits, y, reduction="none") * w).mean()

    @staticmethod
    def _wconf(logits, w):
        """Cross-entropy of the discriminator's prediction against the uniform
        distribution over sections (the 'confusion' generator objective)."""
        return (-(torch.log_softmax(logits, dim=1)).mean(1) * w).mean()

    def _ae_params(self):
        return [self.module.gene_embedding] + list(self.module.encoders.parameters())

    def _disc_params(self):
        return list(self.module.disc_cell.parameters()) + list(self.module.disc_tissue.parameters())

    def _step(self, seeds_per_section, opt_ae, opt_d) -> dict:
        m, dev = self.module, self.device
        block = self.config.get("adv_cells", "seeds") == "block"
        smp = bool(self.config.get("sample_latent", True))
        rf = self.config.get("recon_from", "tissue")
        outs = [
            forward_section(m, sd, s, dev, sample=smp, block=block, recon_from=rf)
            for sd, s in zip(self.data, seeds_per_section)
        ]
        ae = torch.stack([o["recon"] + o["kl"] for o in outs]).mean()
        logs = {
            "recon": float(torch.stack([o["recon"] for o in outs]).mean().detach()),
            "kl": float(torch.stack([o["kl"] for o in outs]).mean().detach()),
        }
        adversarial = self.n_sections > 1
        w_panel = float(self.config.get("panel_anchor", 0.0))
        if w_panel > 0 and adversarial:
            cache = self.__dict__.setdefault("_panel_cache", {})
            pl = cross_panel_loss(m, outs, [sd.name for sd in self.data], dev, cache)
            logs["panel"] = float(pl.detach())
        if adversarial:
            kc, ic, kt, it = (
                ("zc_all", "zc_idx", "zt_all", "zt_idx")
                if block
                else ("zc", "seeds", "zt", "seeds")
            )
            zc = torch.cat([o[kc] for o in outs])
            zt = torch.cat([o[kt] for o in outs])
            y = torch.cat(
                [
                    torch.full((len(o[ic]),), sd.code, dtype=torch.long)
                    for o, sd in zip(outs, self.data)
                ]
            ).to(dev)
            yt = (
                y
                if not block
                else torch.cat(
                    [
                        torch.full((len(o[it]),), sd.code, dtype=torch.long)
                        for o, sd in zip(outs, self.data)
                    ]
                ).to(dev)
            )
            wc = torch.from_numpy(
                np.concatenate([sd.w_cell[o[ic]] for o, sd in zip(outs, self.data)])
            ).to(dev)
            wt = torch.from_numpy(
                np.concatenate([sd.w_tissue[o[it]] for o, sd in zip(outs, self.data)])
            ).to(dev)
            # 1) discriminators minimise the (weighted) cross-entropy
            zcd, ztd = zc.detach(), zt.detach()
            for _ in range(self.config.get("disc_steps", 1)):
                d_loss = self._wce(m.disc_cell(self._noise(zcd)), y, wc) + self._wce(
                    m.disc_tissue(self._noise(ztd)), yt, wt
                )
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                D.allreduce_grads(self._disc_params())
                opt_d.step()
            logs["disc"] = float(d_loss.detach())
            # 2) autoencoders minimise AE - lambda * CE
            if self.config.get("adv_objective", "minmax") == "confusion":
                adv = -(
                    self._wconf(m.disc_cell(self._noise(zc)), wc)
                    + self._wconf(m.disc_tissue(self._noise(zt)), wt)
                )
            else:
                adv = self._wce(m.disc_cell(self._noise(zc)), y, wc) + self._wce(
                    m.disc_tissue(self._noise(zt)), yt, wt
                )
            if self.lambda_adv is None:
                a, c = D.allreduce_sum([float(ae.detach()), float(adv.detach())])
                self.lambda_adv = float(self.config["adv_ratio"] * a / max(abs(c), 1e-8))
            loss = ae - self.lambda_adv * adv
            if w_panel > 0:
                loss = loss + w_panel * pl
            logs["adv"] = float(adv.detach())
        else:
            loss = ae
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        D.allreduce_grads(self._ae_params())
        opt_ae.step()
        logs["loss"] = float(loss.detach())
        return logs

    @torch.no_grad()
    def _validate(self) -> float:
        rank, world = D.rank_world()
        self.module.eval()
        tot, cnt = 0.0, 0.0
        bs = max(256, self.config["batch_size"])
        for sd in self.data:
            val = sd.val_idx[rank::world]
            for i in range(0, len(val), bs):
                o = forward_section(
                    self.module,
                    sd,
                    val[i : i + bs],
                    self.device,
                    sample=False,
                    recon_from=self.config.get("recon_from", "tissue"),
                )
                k = len(o["seeds"])
                tot += float(o["recon"] + o["kl"]) * k
                cnt += k
        self.module.train()
        tot, cnt = D.allreduce_sum([tot, cnt])
        return tot / max(cnt, 1.0)

    def _run_phase(
        self,
        phase: str,
        n_epochs: int,
        patience: int,
        epoch0: int,
        total_epochs: int,
        progress,
        cancel,
        rng,
    ) -> int:
        lr = self.config["lr"]
        opt_ae = torch.optim.RMSprop(self._ae_params(), lr=lr)
        opt_d = torch.optim.RMSprop(self._disc_params(), lr=lr)
        sched = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                o,
                mode="min",
                factor=0.5,
                patience=self.config["lr_patience"][0 if phase == "pretrain" else 1],
            )
            for o in (opt_ae, opt_d)
        ]
        B = self.config["batch_size"]
        self.module.train()
        avg = _WeightAverage(self.module, self.config.get("weight_average", 0.0))
        try:
            return self._run_epochs(
                phase,
                n_epochs,
                patience,
                epoch0,
                total_epochs,
                progress,
                cancel,
                rng,
                opt_ae,
                opt_d,
                sched,
                B,
                avg,
            )
        finally:
            avg.apply()

    def _run_epochs(
        self,
        phase,
        n_epochs,
        patience,
        epoch0,
        total_epochs,
        progress,
        cancel,
        rng,
        opt_ae,
        opt_d,
        sched,
        B,
        avg,
    ) -> int:
        rank, world = D.rank_world()
        best, bad = math.inf, 0
        for ep in range(n_epochs):
            burn = max(self._burnin, 1)
            if self.config.get("noise_schedule", "pretrain") == "constant":
                self._anneal = 1.0
            else:
                self._anneal = max(1.0 - (epoch0 + ep) / burn, 0.0) if phase == "pretrain" else 0.0
            shards = [rng.permutation(sd.train_idx)[rank::world] for sd in self.data]
            n_glob = max(len(sd.train_idx) for sd in self.data)
            n_steps = max(
                1,
                math.ceil(n_glob / (B * world)),
                math.ceil(self.config.get("min_steps", 0) / world),
            )
            ptr = [0] * len(shards)
            acc: dict[str, float] = {}
            for _ in range(n_steps):
                if cancel is not None and cancel():
                    self.cancelled = True
                    return epoch0 + ep
                seeds = []
                for v, sh in enumerate(shards):
                    if len(sh) == 0:
                        sh = shards[v] = rng.permutation(self.data[v].train_idx)
                    if ptr[v] + B > len(sh):  # smaller sections are cycled
                        if ptr[v] < len(sh) and len(sh) >= B:
                            sel = np.concatenate([sh[ptr[v] :], sh[: B - (len(sh) - ptr[v])]])
                            ptr[v] = B - (len(sh) - ptr[v])
                        else:
                            sel = sh[:B]
                            ptr[v] = min(B, len(sh))
                    else:
                        sel = sh[ptr[v] : ptr[v] + B]
                        ptr[v] += B
                    seeds.append(np.unique(sel))
                for k, v in self._step(seeds, opt_ae, opt_d).items():
                    acc[k] = acc.get(k, 0.0) + v / n_steps
                avg.update()
            with avg.swapped():
                val = self._validate()
            for s in sched:
                s.step(val)
            rec = dict(
                phase=phase,
                epoch=epoch0 + ep + 1,
                val_loss=val,
                lr=opt_ae.param_groups[0]["lr"],
                steps=n_steps,
                **acc,
            )
            if self.lambda_adv is not None:
                rec["lambda"] = self.lambda_adv
            self.history.append(rec)
            if progress is not None:
                progress(epoch0 + ep + 1, total_epochs, dict(rec))
            if val < best - 1e-6:
                best, bad = val, 0
            else:
                bad += 1
                if bad >= patience:
                    break
        return epoch0 + n_epochs

    def train(
        self,
        max_epochs: int = 3,
        progress: Callable | None = None,
        cancel: Callable | None = None,
        pretrain_epochs: int | None = None,
        final_epochs: int | None = None,
        balance: bool = True,
    ) -> list[dict]:
        """Train: (1) pretrain, (2) balance weights, (3) final training.

        Parameters
        ----------
        max_epochs : upper bound of epochs for each of the two training phases (3; an
            epoch passes every training cell of the largest section once as a seed, and
            is at least ``min_steps`` steps; smaller sections are cycled). 3 since issue
            26: on the dev half (osmFISH split 0, seed 0) cross-section kNN accuracy was
            0.426 at 3, 0.407 at 5 and 0.384 at 15 (early stopped at 18 epochs), mixing
            above PCA + Harmony at all three; on Slide-seq dev splits 0-1 with the
            panel anchor kNN 0.782 / 0.809 at 3 vs 0.761 / 0.798 at 15; a third to a
            fifth of the training time. ``pretrain_epochs`` / ``final_epochs`` override it.
        progress : ``progress(epoch, n_epochs, losses)`` after every epoch; epochs count
            over both phases (``n_epochs`` = pretrain + final); ``losses`` holds phase,
            recon, kl, disc, adv, loss, val_loss, lr, lambda, steps (steps in the epoch).
        cancel : ``cancel() -> bool`` polled before every step; True stops training at
            once (the model keeps the weights reached, ``self.cancelled`` is True).
        balance : compute balance weights between the phases (else weights stay 1).

        Returns the history (one dict per epoch). Under ``torch.distributed`` each rank
        must call this with the same arguments and ``cancel`` must answer the same on
        every rank (see :mod:`.distributed`).
        """
        n_pre = int(max_epochs if pretrain_epochs is None else pretrain_epochs)
        n_fin = int(max_epochs if final_epochs is None else final_epochs)
        total = n_pre + n_fin
        self._burnin = n_pre
        rank, _ = D.rank_world()
        self.cancelled = False
        self._latent_cache.clear()
        devs = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devs):
            torch.manual_seed(self.config["seed"] * 1000 + 17 + rank)
            rng = np.random.default_rng(self.config["seed"] + 1)
            ep = self._run_phase(
                "pretrain", n_pre, self.config["patience"][0], 0, total, progress, cancel, rng
            )
            if not self.cancelled and n_fin > 0:
                if balance and self.n_sections > 1:
                    self.compute_balance_weights()
                self._run_phase(
                    "final",
                    n_fin,
                    self.config["patience"][1],
                    max(ep, n_pre),
                    total,
                    progress,
                    cancel,
                    rng,
                )
        self.module.eval()
        self.is_trained = True
        self._latent_cache.clear()
        return self.history

    def compute_balance_weights(self) -> None:
        """Phase 2: set per-cell adversarial weights from Leiden clusters (see ._balance)."""
        zc, zt = [], []
        for sd in self.data:
            a, b = infer_latent(self.module, sd.name, sd.X, sd.A, self.device)
            zc.append(a)
            zt.append(b)
        kw = {"resolution": self.config["leiden_resolution"], "seed": self.config["seed"]}
        wc = balance_weights(zc, **kw)
        wt = balance_weights(zt, **kw)
        for sd, a, b in zip(self.data, wc, wt):
            ta, tb = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
            D.broadcast_tensor(ta)
            D.broadcast_tensor(tb)
            sd.w_cell, sd.w_tissue = ta.numpy(), tb.numpy()

    # ------------------------------------------------------------------ outputs
    def _latent_kept(self) -> dict[str, list[np.ndarray]]:
        if not self._latent_cache:
            if not hasattr(self, "data"):
                raise BrainAtlasInputError(
                    "this model was loaded without sections; "
                    "give sections to FuseMap.load to embed them"
                )
            zc, zt = [], []
            for sd in self.data:
                a, b = infer_latent(self.module, sd.name, sd.X, sd.A, self.device)
                zc.append(a)
                zt.append(b)
            self._latent_cache = {"cell": zc, "tissue": zt}
        return self._latent_cache

    def get_latent_representation(self, kind: str = "cell", section: str | int | None = None):
        """Embeddings (posterior means) aligned to the caller's cells.

        kind : "cell" (z_C) or "tissue" (z_T = A z_C).
        section : a name or index -> one (n_obs, k) array; None -> a list, one per section.
        Cells dropped by preprocessing (<= 5 counts) get NaN rows.
        """
        if kind not in ("cell", "tissue"):
            raise ValueError("kind must be 'cell' or 'tissue'")
        lat = self._latent_kept()[kind]
        out = []
        for p, z in zip(self.prepared, lat):
            full = np.full((p.n_obs, z.shape[1]), np.nan, dtype=np.float32)
            full[p.kept] = z
            out.append(full)
        if section is None:
            return out
        i = section if isinstance(section, int) else self.section_names.index(str(section))
        return out[i]

    def write_embeddings(self, copy: bool = False) -> list[AnnData]:
        """Put ``obsm['X_fusemap_cell']`` and ``obsm['X_fusemap_tissue']`` into each section.

        By default writes into the AnnData objects given to the constructor (in memory;
        files are never touched) and returns them; ``copy=True`` leaves them alone and
        returns copies with the embeddings. Dropped cells hold NaN rows.
        """
        cell = self.get_latent_representation("cell")
        tissue = self.get_latent_representation("tissue")
        out = []
        for a, c, t, name in zip(self.adatas, cell, tissue, self.section_names):
            b = a.copy() if copy else a
            b.obsm[CELL_KEY] = c
            b.obsm[TISSUE_KEY] = t
            b.uns.setdefault("fusemap", {})
            if isinstance(b.uns["fusemap"], dict):
                b.uns["fusemap"]["section_name"] = name
            out.append(b)
        return out

    def gene_embedding(self) -> pd.DataFrame:
        """The universal gene embedding E as a DataFrame (genes x k)."""
        return self.module.gene_frame()

    def impute(self, section: str | int, genes: list[str] | None = None) -> pd.DataFrame:
        """``max(z_C E^T, 0)`` for the kept cells of ``section`` over ``genes`` (default all)."""
        i = section if isinstance(section, int) else self.section_names.index(str(section))
        z = self._latent_kept()["cell"][i]
        genes = list(self.module.genes) if genes is None else [g.upper() for g in genes]
        with torch.no_grad():
            x = self.module.impute(torch.from_numpy(z).to(self.device), genes).cpu().numpy()
        p = self.prepared[i]
        return pd.DataFrame(x, index=self.adatas[i].obs_names[p.kept], columns=genes)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the model folder: weights.pt (state_dict), config.json, genes.csv (gene
        list + embedding), panels.json (per-section gene panels), history.json."""
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise BrainAtlasInputError(f"{out} exists and is not a folder")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise BrainAtlasInputError(f"{out} is not empty")
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, out / "weights.pt")
        cfg = dict(
            self.config,
            format_version=FORMAT_VERSION,
            model="FuseMap",
            section_names=self.section_names,
            lambda_adv=self.lambda_adv,
            is_trained=self.is_trained,
            genes=list(self.module.genes),
        )
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
        (out / "panels.json").write_text(json.dumps(self.module.section_genes, indent=1))
        self.gene_embedding().to_csv(out / "genes.csv")
        (out / "history.json").write_text(json.dumps(self.history, indent=1, default=float))
        return out

    @classmethod
    def load(
        cls, path: str | Path, sections: list[AnnData] | None = None, device: str = "auto"
    ) -> FuseMap:
        """Load a model folder written by :meth:`save` (weights via
        ``torch.load(weights_only=True)``). With ``sections`` (the same sections, in the
        same order) the model can embed them again; without, only the module and the gene
        embedding are available."""
        p = Path(path)
        try:
            cfg = json.loads((p / "config.json").read_text())
            panels = json.loads((p / "panels.json").read_text())
            state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        except (OSError, ValueError) as exc:
            raise BrainAtlasInputError(f"cannot read model folder {p}: {exc}") from exc
        self = cls.__new__(cls)
        keys = (
            "n_latent",
            "n_hidden",
            "dropout",
            "disc_hidden",
            "batch_size",
            "lr",
            "val_fraction",
            "instance_noise",
            "adv_ratio",
            "softmax_ce",
            "adv_objective",
            "patience",
            "lr_patience",
            "leiden_resolution",
            "max_val_cells",
            "adv_cells",
            "noise_schedule",
            "min_steps",
            "sample_latent",
            "weight_average",
            "recon_from",
            "panel_anchor",
            "min_cell_counts",
            "seed",
        )
        self.config = {k: cfg[k] for k in keys if k in cfg}
        _check_config(self.config)
        self.device = resolve_device(device)
        self.lambda_adv = cfg.get("lambda_adv")
        self.is_trained = bool(cfg.get("is_trained", True))
        self.cancelled = False
        self._anneal, self._burnin = 1.0, 1
        self._latent_cache = {}
        hist = p / "history.json"
        self.history = json.loads(hist.read_text()) if hist.exists() else []
        names = list(cfg["section_names"])
        self.module = FuseMapModule(
            panels,
            n_latent=cfg["n_latent"],
            n_hidden=cfg["n_hidden"],
            dropout=cfg["dropout"],
            disc_hidden=cfg["disc_hidden"],
            genes=cfg["genes"],
        )
        self.module.load_state_dict(state)
        self.module.to(self.device).eval()
        self.section_names = names
        self.adatas, self.prepared = [], []
        if sections is not None:
            if isinstance(sections, AnnData):
                sections = [sections]
            if len(sections) != len(names):
                raise BrainAtlasInputError(
                    f"the model has {len(names)} sections but {len(sections)} were given"
                )
            self._attach(list(sections), names)
            for pr in self.prepared:
                if pr.genes != panels[pr.name]:
                    raise BrainAtlasInputError(
                        f"section {pr.name!r} does not have the genes the model was trained on"
                    )
        return self

    def __repr__(self) -> str:
        return (
            f"FuseMap({self.n_sections} sections, {len(self.module.genes)} genes, "
            f"k={self.config['n_latent']}, trained={self.is_trained}, device={self.device})"
        )
