"""FuseMap: joint cell / tissue / gene embedding of spatial transcriptomics sections.

scvi-tools style entry point (the shared model protocol, :mod:`napari_brainatlas.models`)::

    model = FuseMap(sections, settings=FuseMapSettings(n_latent=32), seed=0)
    model.train(epochs=3, progress=progress, cancel=cancel)  # pretrain, balance, final
    embedded = model.write_embeddings()        # copies with obsm['X_fusemap_cell' / '_tissue']
    genes = model.gene_embedding()             # DataFrame genes x k
    model.save("model_dir"); FuseMap.load("model_dir", sections)

See :mod:`._module` for the network, :mod:`.settings` for the options and method.md for
the published method.

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

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData

from .._device import resolve_device
from .._errors import BrainAtlasInputError, Cancelled
from ..models import (
    WEIGHTS,
    ModelFolder,
    TrainableModel,
    early_stop_text,
    load_state,
    resolve_settings,
    save_state,
    settings_from_dict,
    settings_to_dict,
)
from . import distributed as D
from ._balance import balance_weights
from ._module import FuseMapModule
from ._training import cross_panel_loss
from .data import (
    PreparedSection,
    SectionData,
    forward_section,
    infer_latent,
    preprocess_section,
    spatial_graph,
)
from .settings import LEGACY_DEFAULTS, FuseMapSettings

__all__ = ["FuseMap", "resolve_device"]

#: format of the model folder :meth:`FuseMap.save` writes (1: before the shared layout)
FORMAT_VERSION = 2
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


@dataclass
class _PhaseOptim:
    """The optimisers, LR schedulers and weight average of one training phase."""

    ae: torch.optim.Optimizer
    disc: torch.optim.Optimizer
    sched: list
    avg: _WeightAverage


class FuseMap(TrainableModel):
    """FuseMap model over a list of sections.

    Parameters
    ----------
    sections : list of AnnData, one per section (``obsm['spatial']`` in um; integer
        counts in ``layers['counts']`` or ``X``; gene panels may differ). The objects are
        never modified (:meth:`write_embeddings` returns copies unless ``copy=False``).
    section_names : names (encoder keys); default ``obs['section']`` when it has a
        single value, else ``section{i}``. '.' is replaced by '_'; duplicates get suffixes.
    settings : :class:`~napari_brainatlas.fusemap.FuseMapSettings` (network, training
        and balance options; default ``FuseMapSettings()``).
    seed : seeds every random choice; training on CPU is deterministic for a seed (on
        the same machine and thread count).
    device : "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1"...
    **options : settings fields as keywords (``n_latent=32, min_steps=0``), applied to
        ``settings`` with :func:`dataclasses.replace`; an unknown name is a
        BrainAtlasInputError.

    The model protocol (:mod:`napari_brainatlas.models`): :meth:`train`, :attr:`history`,
    :attr:`is_trained`, :meth:`save`, :meth:`load`.
    """

    format_version = FORMAT_VERSION
    accepted_versions = (1, FORMAT_VERSION)

    def __init__(
        self,
        sections: list[AnnData],
        section_names: list[str] | None = None,
        *,
        settings: FuseMapSettings | None = None,
        seed: int = 0,
        device: str = "auto",
        **options,
    ):
        if isinstance(sections, AnnData):
            sections = [sections]
        sections = list(sections)
        if not sections:
            raise BrainAtlasInputError("give at least one section")
        self.settings = resolve_settings(FuseMapSettings, settings, options, "FuseMap")
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.lambda_adv: float | None = None
        self.history = []
        self.is_trained = False
        self.cancelled = False
        self._anneal, self._burnin = 1.0, 1
        self._latent_cache: dict[str, list[np.ndarray]] = {}
        self._attach(sections, _section_names(sections, section_names))
        s = self.settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module = FuseMapModule(
                {p.name: p.genes for p in self.prepared},
                n_latent=s.n_latent,
                n_hidden=s.n_hidden,
                dropout=s.dropout,
                disc_hidden=s.disc_hidden,
            ).to(self.device)
        D.broadcast_module(self.module)

    @property
    def config(self) -> dict:
        """The settings as a plain dict, with ``seed`` (read-only view)."""
        return {**settings_to_dict(self.settings), "seed": self.seed}

    # ------------------------------------------------------------------ data
    def _attach(self, sections: list[AnnData], names: list[str]) -> None:
        self.adatas = sections
        self.section_names = names
        self.prepared: list[PreparedSection] = [
            preprocess_section(a, n, min_cell_counts=self.settings.min_cell_counts)
            for a, n in zip(sections, names)
        ]
        rng = np.random.default_rng(self.seed)
        self.data: list[SectionData] = []
        for code, p in enumerate(self.prepared):
            A = spatial_graph(p.coords)
            perm = rng.permutation(p.n_cells)
            n_val = int(np.rint(self.settings.val_fraction * p.n_cells))
            n_val = min(max(n_val, 1), p.n_cells - 2) if p.n_cells > 3 else 0
            val = np.sort(perm[:n_val])
            train = np.sort(perm[n_val:])
            mv = self.settings.max_val_cells
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
        s = self.settings.instance_noise * self._anneal
        if s <= 0 or z.shape[0] < 2:
            return z
        sd = z.detach().std(dim=0) + 1e-10
        return z + s * sd * torch.randn_like(z)

    def _wce(self, logits, y, w):
        if self.settings.softmax_ce:
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
        block = self.settings.adv_cells == "block"
        smp = self.settings.sample_latent
        rf = self.settings.recon_from
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
        w_panel = self.settings.panel_anchor
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
            d_loss = self._wce(m.disc_cell(self._noise(zcd)), y, wc) + self._wce(
                m.disc_tissue(self._noise(ztd)), yt, wt
            )
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            D.allreduce_grads(self._disc_params())
            opt_d.step()
            logs["disc"] = float(d_loss.detach())
            # 2) autoencoders minimise AE - lambda * CE
            if self.settings.adv_objective == "confusion":
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
                self.lambda_adv = float(self.settings.adv_ratio * a / max(abs(c), 1e-8))
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
        bs = max(256, self.settings.batch_size)
        for sd in self.data:
            val = sd.val_idx[rank::world]
            for i in range(0, len(val), bs):
                o = forward_section(
                    self.module,
                    sd,
                    val[i : i + bs],
                    self.device,
                    sample=False,
                    recon_from=self.settings.recon_from,
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
        lr = self.settings.lr
        opt_ae = torch.optim.RMSprop(self._ae_params(), lr=lr)
        opt_d = torch.optim.RMSprop(self._disc_params(), lr=lr)
        sched = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                o,
                mode="min",
                factor=0.5,
                patience=self.settings.lr_patience[0 if phase == "pretrain" else 1],
            )
            for o in (opt_ae, opt_d)
        ]
        self.module.train()
        opt = _PhaseOptim(
            opt_ae, opt_d, sched, _WeightAverage(self.module, self.settings.weight_average)
        )
        try:
            return self._run_epochs(
                phase, n_epochs, patience, epoch0, total_epochs, progress, cancel, rng, opt
            )
        finally:
            opt.avg.apply()

    def _run_epochs(
        self, phase, n_epochs, patience, epoch0, total_epochs, progress, cancel, rng, opt
    ) -> int:
        rank, world = D.rank_world()
        B = self.settings.batch_size
        best, bad = math.inf, 0
        for ep in range(n_epochs):
            burn = max(self._burnin, 1)
            if self.settings.noise_schedule == "constant":
                self._anneal = 1.0
            else:
                self._anneal = max(1.0 - (epoch0 + ep) / burn, 0.0) if phase == "pretrain" else 0.0
            shards = [rng.permutation(sd.train_idx)[rank::world] for sd in self.data]
            n_glob = max(len(sd.train_idx) for sd in self.data)
            n_steps = max(
                1,
                math.ceil(n_glob / (B * world)),
                math.ceil(self.settings.min_steps / world),
            )
            ptr = [0] * len(shards)
            acc: dict[str, float] = {}
            for _ in range(n_steps):
                if cancel is not None and cancel():
                    self.cancelled = True
                    return epoch0 + ep
                seeds = self._next_seeds(shards, ptr, rng, B)
                for k, v in self._step(seeds, opt.ae, opt.disc).items():
                    acc[k] = acc.get(k, 0.0) + v / n_steps
                opt.avg.update()
            with opt.avg.swapped():
                val = self._validate()
            for s in opt.sched:
                s.step(val)
            rec = dict(
                phase=phase,
                epoch=epoch0 + ep + 1,
                val_loss=val,
                lr=opt.ae.param_groups[0]["lr"],
                steps=n_steps,
                **acc,
            )
            if self.lambda_adv is not None:
                rec["lambda"] = self.lambda_adv
            improved = val < best - 1e-6
            best, bad = (val, 0) if improved else (best, bad + 1)
            if not improved and bad >= patience and ep + 1 < n_epochs:
                rec["stopped"] = early_stop_text(phase, ep + 1, n_epochs, patience)
            self.history.append(rec)
            if progress is not None:
                progress(epoch0 + ep + 1, total_epochs, dict(rec))
            if "stopped" in rec:
                break
        return epoch0 + n_epochs

    def _next_seeds(self, shards, ptr, rng, B) -> list[np.ndarray]:
        """The next ``B`` seed cells of every section's shard (smaller sections cycled;
        ``shards`` and ``ptr`` advance in place)."""
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
        return seeds

    def train(
        self,
        epochs: int | None = None,
        *,
        progress: Callable | None = None,
        cancel: Callable | None = None,
        pretrain_epochs: int | None = None,
        final_epochs: int | None = None,
        balance: bool = True,
        max_epochs: int | None = None,
    ) -> list[dict]:
        """Train: (1) pretrain, (2) balance weights, (3) final training.

        Parameters
        ----------
        epochs : at most this many epochs in each of the two training phases (default
            ``settings.epochs``, 3); an epoch passes every training cell of the largest
            section once as a seed and is at least ``min_steps`` steps (smaller sections
            are cycled). ``pretrain_epochs`` / ``final_epochs`` override it per phase.
        progress : ``progress(done, total, info)`` after every epoch; epochs count over
            both phases (``total`` = pretrain + final); ``info`` is the epoch's record:
            phase, epoch, recon, kl, disc, adv, loss, val_loss, lr, lambda, steps.
        cancel : ``cancel() -> bool`` polled before every step; True raises
            :class:`~napari_brainatlas.Cancelled` at once. The model then holds the
            weights reached (the running phase's weight average applied), ``history``
            the finished epochs, ``cancelled`` True, and ``is_trained`` what it was
            before the call (False for a new model).
        balance : compute balance weights between the phases (else weights stay 1).
        max_epochs : deprecated spelling of ``epochs`` (kept for one release): with it,
            a cancel does not raise but returns (``cancelled`` True, ``is_trained``
            True), as before.

        Returns :attr:`history` (one dict per epoch). Under ``torch.distributed`` each
        rank must call this with the same arguments and ``cancel`` must answer the same
        on every rank (see :mod:`.distributed`).
        """
        if not getattr(self, "data", None):
            raise BrainAtlasInputError(
                "this model was loaded without sections; give sections to FuseMap.load to "
                "train it further"
            )
        legacy = max_epochs is not None
        if legacy:
            warnings.warn(
                "FuseMap.train(max_epochs=...) is deprecated: use train(epochs=...); "
                "train(epochs=...) raises napari_brainatlas.Cancelled when cancelled",
                DeprecationWarning,
                stacklevel=2,
            )
            if epochs is None:
                epochs = max_epochs
        if epochs is None:
            epochs = self.settings.epochs
        n_pre = int(epochs if pretrain_epochs is None else pretrain_epochs)
        n_fin = int(epochs if final_epochs is None else final_epochs)
        was_trained = self.is_trained
        self._train_phases(n_pre, n_fin, balance, progress, cancel)
        if self.cancelled and not legacy:
            self.is_trained = was_trained
            raise Cancelled("FuseMap training cancelled")
        self.is_trained = True
        return self.history

    def _train_phases(self, n_pre: int, n_fin: int, balance: bool, progress, cancel) -> None:
        total = n_pre + n_fin
        self._burnin = n_pre
        rank, _ = D.rank_world()
        self.cancelled = False
        self._latent_cache.clear()
        patience = self.settings.patience
        devs = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devs):
            torch.manual_seed(self.seed * 1000 + 17 + rank)
            rng = np.random.default_rng(self.seed + 1)
            ep = self._run_phase("pretrain", n_pre, patience[0], 0, total, progress, cancel, rng)
            if not self.cancelled and n_fin > 0:
                if balance and self.n_sections > 1:
                    self.compute_balance_weights()
                self._run_phase(
                    "final", n_fin, patience[1], max(ep, n_pre), total, progress, cancel, rng
                )
        self.module.eval()
        self._latent_cache.clear()

    def compute_balance_weights(self) -> None:
        """Phase 2: set per-cell adversarial weights from Leiden clusters (see ._balance)."""
        zc, zt = [], []
        for sd in self.data:
            a, b = infer_latent(self.module, sd.name, sd.X, sd.A, self.device)
            zc.append(a)
            zt.append(b)
        kw = {"resolution": self.settings.leiden_resolution, "seed": self.seed}
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

    def write_embeddings(self, copy: bool = True) -> list[AnnData]:
        """Sections with ``obsm['X_fusemap_cell']`` and ``obsm['X_fusemap_tissue']`` (and
        ``uns['fusemap']['section_name']``); dropped cells hold NaN rows.

        ``copy=True`` (default, as every model): new AnnData objects are returned and the
        sections given to the constructor are left alone. ``copy=False`` writes into
        those objects (in memory; files are never touched) and returns them - the
        default before the shared model protocol.
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
    def _write_files(self, folder: Path) -> dict:
        """weights.pt (state_dict), genes.csv (gene list + embedding, rows in the
        module's order), panels.csv (section, gene: each section's panel in order)."""
        save_state(self.module, folder / WEIGHTS)
        self.gene_embedding().to_csv(folder / "genes.csv")
        rows = [(n, g) for n in self.section_names for g in self.module.section_genes[n]]
        pd.DataFrame(rows, columns=["section", "gene"]).to_csv(folder / "panels.csv", index=False)
        return {
            "settings": settings_to_dict(self.settings),
            "seed": self.seed,
            "section_names": list(self.section_names),
            "lambda_adv": self.lambda_adv,
            "is_trained": self.is_trained,
        }

    @classmethod
    def load(
        cls, path: str | Path, sections: list[AnnData] | None = None, device: str = "auto"
    ) -> FuseMap:
        """Load a model folder written by :meth:`save` (weights via
        ``torch.load(weights_only=True)``; also folders of format 1, written before the
        shared model layout). With ``sections`` (the same sections, in the same order)
        the model can embed them again; without, only the module and the gene
        embedding are available."""
        return super().load(path, sections=sections, device=device)

    @classmethod
    def _legacy_config(cls, folder: ModelFolder) -> dict | None:
        """Format 1: flat config.json (settings, genes, section names), panels.json."""
        if not folder.has("panels.json"):
            return None
        cfg = folder.config((1,), ("section_names", "genes"))
        known = set(settings_to_dict(FuseMapSettings()))
        values = {**LEGACY_DEFAULTS, **{k: v for k, v in cfg.items() if k in known}}
        panels = folder.json("panels.json")
        return {
            **cfg,
            "settings": values,
            "seed": cfg.get("seed", 0),
            "_panels": panels,
            "_genes": list(cfg["genes"]),
        }

    @classmethod
    def _from_folder(cls, folder, cfg, sections=None, device="auto") -> FuseMap:
        for k in ("seed", "section_names"):
            if k not in cfg:
                raise folder.error("config.json", f"lacks the key {k!r}")
        # options added after a folder was written: what it was trained with
        values = {**LEGACY_DEFAULTS, **cfg["settings"]}
        settings = settings_from_dict(FuseMapSettings, values, folder)
        names = [str(n) for n in cfg["section_names"]]
        legacy = "_panels" in cfg  # format 1
        if legacy:
            panels, genes = cfg["_panels"], [str(g) for g in cfg["_genes"]]
            if set(panels) != set(names):
                raise folder.error("panels.json", "does not list the sections config.json names")
            history = folder.history() if folder.has("history.json") else []
        else:
            genes, panels = _read_gene_tables(folder, names, settings.n_latent)
            history = folder.history()
        state = folder.weights()
        rows = state.get("gene_embedding")
        if not legacy and rows is not None and rows.shape[0] != len(genes):
            raise folder.error(
                "genes.csv", f"lists {len(genes)} genes, weights.pt holds {rows.shape[0]}"
            )
        self = cls.__new__(cls)
        self.settings, self.seed = settings, int(cfg["seed"])
        self.device = resolve_device(device)
        self.lambda_adv = cfg.get("lambda_adv")
        self.is_trained = bool(cfg.get("is_trained", True))
        self.cancelled = False
        self._anneal, self._burnin = 1.0, 1
        self._latent_cache = {}
        self.history = history
        self.module = FuseMapModule(
            {n: panels[n] for n in names},
            n_latent=settings.n_latent,
            n_hidden=settings.n_hidden,
            dropout=settings.dropout,
            disc_hidden=settings.disc_hidden,
            genes=genes,
        )
        load_state(self.module, state, folder)
        self.module.to(self.device).eval()
        self.section_names = names
        self.adatas, self.prepared = [], []
        if sections is not None:
            self._attach_saved(sections, names, panels)
        return self

    def _attach_saved(self, sections, names, panels) -> None:
        if isinstance(sections, AnnData):
            sections = [sections]
        if len(sections) != len(names):
            raise BrainAtlasInputError(
                f"the model has {len(names)} sections but {len(sections)} were given"
            )
        self._attach(list(sections), names)
        for pr in self.prepared:
            if pr.genes != list(panels[pr.name]):
                raise BrainAtlasInputError(
                    f"section {pr.name!r} does not have the genes the model was trained on"
                )

    def __repr__(self) -> str:
        return (
            f"FuseMap({self.n_sections} sections, {len(self.module.genes)} genes, "
            f"k={self.settings.n_latent}, trained={self.is_trained}, device={self.device})"
        )


def _read_gene_tables(
    folder: ModelFolder, names: list[str], n_latent: int
) -> tuple[list[str], dict]:
    """Gene list (genes.csv's first column, in the module's row order; the other columns
    the gene embedding) and per-section panels (panels.csv) of a model folder."""
    emb = folder.csv("genes.csv", keep_default_na=False, dtype={0: str})
    genes = [str(g) for g in emb.iloc[:, 0]]
    values = emb.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if values.shape[1] != n_latent:
        raise folder.error(
            "genes.csv", f"has {values.shape[1]} embedding columns, config.json says {n_latent}"
        )
    if not np.isfinite(values).all() or len(set(genes)) != len(genes):
        raise folder.error("genes.csv", "is cut short or damaged (empty or repeated entries)")
    pan = folder.csv("panels.csv", dtype=str, keep_default_na=False)
    if list(pan.columns) != ["section", "gene"]:
        raise folder.error("panels.csv", "does not have the columns section, gene")
    panels = {n: list(g["gene"]) for n, g in pan.groupby("section", sort=False)}
    missing = [n for n in names if n not in panels]
    if missing:
        raise folder.error("panels.csv", f"has no panel for section {missing[0]!r}")
    if set(panels) != set(names):
        raise folder.error("panels.csv", "lists sections config.json does not name")
    unknown = {g for p in panels.values() for g in p} - set(genes)
    if unknown:
        raise folder.error("panels.csv", f"names genes genes.csv lacks ({sorted(unknown)[0]})")
    return genes, panels
