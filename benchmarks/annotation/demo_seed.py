"""Demo annotation benchmark (full size, 15 epochs) at one seed, with optional FuseMap kwargs.

    OMP_NUM_THREADS=1 python benchmarks/annotation/demo_seed.py SEED ['{"recon_from": "tissue"}']

Runs run.py's demo dataset only (``run_dataset``: same split, baselines and metrics) with
FuseMap's constructor defaults overridden by the JSON kwargs, and prints one JSON line of
label-transfer accuracies and the mean imputation R. Used for the round-4 re-check in
RESULTS_annotation.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))


def main() -> None:
    import numpy as np
    import run as R
    import torch

    from napari_brainatlas import model as M

    torch.set_num_threads(1)
    seed = int(sys.argv[1])
    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}

    class WithKwargs(M.FuseMap):
        def __init__(self, *a, **k):
            k.update(kw)
            super().__init__(*a, **k)

    M.FuseMap = WithKwargs  # run_dataset imports FuseMap from the package at call time
    refs, q, hidden = R.demo_sets(False)
    rows, imp, _ = R.run_dataset("demo", refs, q, ["celltype", "region"], hidden, 15, seed=seed)
    out = {"seed": seed, "kw": kw}
    for r in rows:
        out[f"{r['label']}|{r['method']}"] = round(r["accuracy"], 3)
    out["impR"] = round(float(np.nanmean([r["fusemap_r"] for r in imp])), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
