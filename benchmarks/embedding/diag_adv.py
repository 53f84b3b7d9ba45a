"""Diagnose the adversarial part of FuseMap training on one set (small and fast).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/embedding/diag_adv.py --set demo \
        --steps 300 --every 50 [--kw '{...}'] [--cfg '{...}'] [--disc-lr X] [--ae-lr X]
        [--ema DECAY] [--anneal A]

Trains with the model's own ``_step`` (pretrain phase settings, fixed anneal) and every
``--every`` steps logs:
* disc_own: accuracy of the cell discriminator on its own training input (train-mode
  posterior means of the step's seeds, no noise);
* disc_eval: accuracy of the same discriminator on the eval-mode embedding of all cells;
* lr_eval / lr_train: 3-fold logistic-regression accuracy of the section from the
  eval-mode embedding / from the train-mode embedding (dropout + batch statistics);
* iLISI and cross-section kNN accuracy of the eval-mode embedding.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--kw", default="{}")
    ap.add_argument("--cfg", default="{}")
    ap.add_argument("--anneal", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disc-lr", type=float, default=None)
    ap.add_argument("--ae-lr", type=float, default=None)
    ap.add_argument("--ema", type=float, default=0.0, help="also report EMA weights")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import run as R
    from metrics import cross_knn_accuracy, ilisi
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from napari_brainatlas.model import FuseMap
    from napari_brainatlas.model._training import forward_section, infer_latent

    s = R.load_sets(True)[a.set]
    secs = s["sections"]
    lab, ex = s["cell_label"], s.get("exclude")
    m = FuseMap([x.copy() for x in secs], seed=a.seed, **json.loads(a.kw))
    m.config.update(json.loads(a.cfg))
    L = np.concatenate([x.obs[lab].astype(str).to_numpy()[p.kept]
                        for x, p in zip(secs, m.prepared)])
    ok = L != ex if ex else np.ones(len(L), bool)
    dev = m.device
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    lr = m.config["lr"]
    opt_ae = torch.optim.RMSprop(m._ae_params(), lr=a.ae_lr or lr)
    opt_d = torch.optim.RMSprop(m._disc_params(), lr=a.disc_lr or lr)
    m._anneal = a.anneal
    m.module.train()
    B = m.config["batch_size"]

    def report(step, t0):
        mod = m.module
        zc = [infer_latent(mod, sd.name, sd.X, sd.A, dev)[0] for sd in m.data]
        Z = np.concatenate(zc)
        y = np.concatenate([np.full(len(z), i) for i, z in enumerate(zc)])
        # train-mode embedding: posterior means in train mode, batches of seeds
        ztr = []
        with torch.no_grad():
            for sd in m.data:
                idx = rng.permutation(sd.n)
                part = np.zeros((sd.n, mod.n_latent), np.float32)
                for i in range(0, sd.n, B):
                    o = forward_section(mod, sd, idx[i:i + B], dev, sample=False)
                    part[o["seeds"]] = o["zc"].cpu().numpy()
                ztr.append(part)
        Ztr = np.concatenate(ztr)
        mod.eval()
        with torch.no_grad():
            pe = mod.disc_cell(torch.from_numpy(Z)).argmax(1).numpy()
        mod.train()
        with torch.no_grad():
            mod.disc_cell.eval()
            po = mod.disc_cell(torch.from_numpy(Ztr)).argmax(1).numpy()
            mod.disc_cell.train()
        sub = rng.choice(len(Z), min(3000, len(Z)), replace=False)
        lre = cross_val_score(LogisticRegression(max_iter=300), Z[sub], y[sub], cv=3).mean()
        lrt = cross_val_score(LogisticRegression(max_iter=300), Ztr[sub], y[sub], cv=3).mean()
        rec = dict(step=step, disc_own=round(float((po == y).mean()), 3),
                   disc_eval=round(float((pe == y).mean()), 3),
                   lr_eval=round(float(lre), 3), lr_train=round(float(lrt), 3),
                   iLISI=round(ilisi(Z[ok], y[ok]), 3),
                   knn=round(cross_knn_accuracy(Z[ok], y[ok], L[ok]), 3),
                   zstd_eval=round(float(Z.std(0).mean()), 3),
                   zstd_train=round(float(Ztr.std(0).mean()), 3),
                   t=round(time.time() - t0, 1))
        print(json.dumps(rec), flush=True)

    t0 = time.time()
    acc = {}
    ema = None
    if a.ema:
        ema = {k: v.detach().clone() for k, v in m.module.state_dict().items()
               if v.dtype.is_floating_point}

    def report_ema(step):
        raw = {k: v.detach().clone() for k, v in m.module.state_dict().items()}
        m.module.load_state_dict({**raw, **ema})
        zc = [infer_latent(m.module, sd.name, sd.X, sd.A, dev)[0] for sd in m.data]
        m.module.load_state_dict(raw)
        Z = np.concatenate(zc)
        y = np.concatenate([np.full(len(z), i) for i, z in enumerate(zc)])
        sub = rng.choice(len(Z), min(3000, len(Z)), replace=False)
        lre = cross_val_score(LogisticRegression(max_iter=300), Z[sub], y[sub], cv=3).mean()
        print(json.dumps(dict(step=step, ema=a.ema, lr_eval=round(float(lre), 3),
                              iLISI=round(ilisi(Z[ok], y[ok]), 3),
                              knn=round(cross_knn_accuracy(Z[ok], y[ok], L[ok]), 3))),
              flush=True)
    report(0, t0)
    for step in range(1, a.steps + 1):
        seeds = [np.unique(rng.choice(sd.train_idx, min(B, len(sd.train_idx)), replace=False))
                 for sd in m.data]
        logs = m._step(seeds, opt_ae, opt_d)
        if ema is not None:
            with torch.no_grad():
                for k, v in m.module.state_dict().items():
                    if k in ema:
                        ema[k].mul_(a.ema).add_(v.detach(), alpha=1 - a.ema)
        for k, v in logs.items():
            acc[k] = acc.get(k, 0.0) + v
        if step % a.every == 0:
            print(json.dumps({k: round(v / a.every, 4) for k, v in acc.items()}), flush=True)
            acc = {}
            report(step, t0)
            if ema is not None:
                report_ema(step)


if __name__ == "__main__":
    main()
