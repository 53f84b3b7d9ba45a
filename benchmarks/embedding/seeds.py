"""FuseMap z_C vs PCA + Harmony over several seeds (seed-to-seed spread of the targets).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/embedding/seeds.py \
        --sets demo,osmFISH,MERFISH --seeds 0,1,2 --epochs 15 --out seeds.jsonl [--kw '{...}']
    python benchmarks/embedding/seeds.py --table seeds.jsonl     # markdown table

The quick benchmark's sets (run.load_sets(quick=True), built with fixed split seeds: the
data do not change with --seeds); for each set and seed: FuseMap (constructor defaults
plus --kw, seed=s, train(max_epochs=--epochs)) and PCA + Harmony (random_state=s), both
scored with run.evaluate (iLISI, cross-section kNN accuracy of the cell label ...).
One JSON line per set and seed is appended to --out as soon as it is done.
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


def run(sets_arg, seeds, epochs, kw, out):
    import torch

    torch.set_num_threads(1)
    import run as R

    from napari_brainatlas.model import FuseMap

    sets = R.load_sets(True)
    for key in sets_arg:
        s = sets[key]
        secs, lab, ex = s["sections"], s["cell_label"], s.get("exclude")
        for seed in seeds:
            harm = R.harmony_baseline(secs, seed)[0]
            t = time.time()
            m = FuseMap([a.copy() for a in secs], seed=seed, **kw)
            m.train(max_epochs=epochs)
            row = {"set": key, "seed": seed, "epochs": epochs, "kw": kw,
                       "epochs_run": len(m.history),
                       "steps": sum(int(h.get("steps", 0)) for h in m.history),
                       "train_s": round(time.time() - t, 1),
                       "fusemap": R.evaluate(key, m.get_latent_representation("cell"), secs, lab,
                                          ex),
                       "harmony": R.evaluate(key, harm, secs, lab, ex)}
            if s.get("tissue_label"):
                row["fusemap_tissue"] = R.evaluate(
                    key, m.get_latent_representation("tissue"), secs, s["tissue_label"], ex)
            line = json.dumps(row)
            print(line, flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(line + "\n")


def table(path):
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    L = [("| set | seed | steps | FuseMap iLISI | Harmony iLISI | FuseMap kNN acc | "
         "Harmony kNN acc | mixing | labels |"), "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        f, h = r["fusemap"], r["harmony"]
        mix, lab = f["iLISI"] > h["iLISI"], f["cross_kNN_acc"] > h["cross_kNN_acc"]
        L.append(f"| {r['set']} | {r['seed']} | {r['steps']} | {f['iLISI']:.3f} | "
                 f"{h['iLISI']:.3f} | {f['cross_kNN_acc']:.3f} | {h['cross_kNN_acc']:.3f} | "
                 f"{'met' if mix else 'MISSED'} | {'met' if lab else 'MISSED'} |")
        by.setdefault(r["set"], []).append(r)
    L += ["", ("| set | seeds | FuseMap iLISI mean (min-max) | Harmony iLISI mean | "
          "FuseMap kNN acc mean (min-max) | Harmony kNN acc mean |"), "|---|---|---|---|---|---|"]
    for k, rs in by.items():
        def st(m, key, rs=rs):
            v = [r[m][key] for r in rs]
            return sum(v) / len(v), min(v), max(v)
        fi, hi = st("fusemap", "iLISI"), st("harmony", "iLISI")
        fk, hk = st("fusemap", "cross_kNN_acc"), st("harmony", "cross_kNN_acc")
        L.append(f"| {k} | {len(rs)} | {fi[0]:.3f} ({fi[1]:.3f}-{fi[2]:.3f}) | {hi[0]:.3f} | "
                 f"{fk[0]:.3f} ({fk[1]:.3f}-{fk[2]:.3f}) | {hk[0]:.3f} |")
    print("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="demo,osmFISH,MERFISH")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--kw", default="{}", help="FuseMap constructor arguments (JSON)")
    ap.add_argument("--out", default="")
    ap.add_argument("--table", default="", help="print a markdown table of a JSONL file")
    a = ap.parse_args()
    if a.table:
        table(a.table)
        return
    run([s for s in a.sets.split(",") if s], [int(s) for s in a.seeds.split(",") if s],
        a.epochs, json.loads(a.kw), a.out)


if __name__ == "__main__":
    main()
