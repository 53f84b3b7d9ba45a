"""Small tuning experiments for FuseMap's training defaults (one set, one config per run).

    PYTHONPATH=src python benchmarks/embedding/tune.py --set demo --epochs 3 \
        --kw '{"min_steps": 60}' [--cfg '{"disc_steps": 3}'] [--train-kw '{...}'] [--harmony]

--set: demo | osmFISH | MERFISH (the quick benchmark's sets, run.load_sets(quick=True));
--kw: FuseMap constructor arguments; --cfg: config entries set after construction.
Prints one JSON line: iLISI / cross-section kNN accuracy of z_C (and z_T) plus time.
The runs behind the tuning table of RESULTS_embedding.md were made with this script.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="demo")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--kw", default="{}")
    ap.add_argument("--train-kw", default="{}")
    ap.add_argument("--cfg", default="{}", help="config entries set after construction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--harmony", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import run as R

    from napari_brainatlas.model import FuseMap

    sets = R.load_sets(True)
    s = sets[a.set]
    secs = s["sections"]
    lab, ex = s["cell_label"], s.get("exclude")
    out = dict(set=a.set, epochs=a.epochs, kw=json.loads(a.kw), train_kw=json.loads(a.train_kw),
               cfg=json.loads(a.cfg))
    if a.harmony:
        harm = R.harmony_baseline(secs, a.seed)[0]
        out["harmony"] = R.evaluate(a.set, harm, secs, lab, ex)
    t = time.time()
    m = FuseMap([x.copy() for x in secs], seed=a.seed, **json.loads(a.kw))
    m.config.update(json.loads(a.cfg))
    m.train(max_epochs=a.epochs, **json.loads(a.train_kw))
    out["train_s"] = round(time.time() - t, 1)
    out["n_hist"] = len(m.history)
    out["last"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.history[-1].items()}
    zc = m.get_latent_representation("cell")
    r = R.evaluate(a.set, zc, secs, lab, ex)
    out["zc"] = {k: round(v, 3) for k, v in r.items()}
    if s.get("tissue_label"):
        zt = m.get_latent_representation("tissue")
        r = R.evaluate(a.set, zt, secs, s["tissue_label"], ex)
        out["zt"] = {k: round(v, 3) for k, v in r.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
