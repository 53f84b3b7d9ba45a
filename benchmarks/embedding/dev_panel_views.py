"""Dev half only: label transfer in FuseMap's panel views against the embedding alone
(the experiment behind ``TransferSettings.views="panels"``, issue 26).

For each split x seed: FuseMap joint and the reference chain at the frozen defaults; the
reference cells' labels go to the query cells by kNN-15 or the MLP (balance "sqrt", as
transfer_labels for cell types) in
  zc    - the embedding alone (reference z_C -> query z_C; what the benchmark reported),
  q     - the query view (reference cells read through the query's encoder),
  r     - the reference view (query cells read through each reference encoder),
  both  - the mean of the q and r probabilities (what became the default),
  all   - the mean of zc, q and r;
with PCA and PCA + Harmony kNN on the same split for scale. One JSON row per split x seed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/embedding/dev_panel_views.py \
        --out benchmarks/embedding/dev/panel_views_dev.jsonl osmFISH:0:0 MERFISH:0:0 ...

(rows of the 2026-12-07 run: benchmarks/embedding/dev/panel_views_dev.jsonl; 15 dev
splits, seed 0; summary in NOTES.md.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).parent))
import evaluate as E  # noqa: E402
import methods as M  # noqa: E402
import splits as S  # noqa: E402


def _knn(Zr, yr, Zq, cats, k=15):
    idx = NearestNeighbors(n_neighbors=min(k, len(Zr))).fit(Zr).kneighbors(Zq)[1]
    v = np.zeros((len(Zq), len(cats)))
    np.add.at(v, (np.arange(len(Zq))[:, None], np.searchsorted(cats, yr)[idx]), 1.0 / k)
    return v


def _mlp(Zr, yr, Zq, cats, seed=0):
    from napari_brainatlas.annotate.classifier import MLPLabelClassifier

    clf = MLPLabelClassifier(balance="sqrt", seed=seed).fit(Zr, yr)
    p = np.zeros((len(Zq), len(cats)))
    p[:, np.searchsorted(cats, clf.classes_)] = clf.predict_proba(Zq)
    return p


def views(split, module, sec) -> dict:
    """Accuracy of every variant; ``sec[i] = (name, X, genes, z_C of kept rows, kept)``."""
    from napari_brainatlas.annotate.panel_views import read_through_panel

    out: dict = {}
    for q in split.query:
        nq, Xq, gq, zq, kq = sec[q]
        Zr0, Zr1, yr = [], [], []
        for r in split.reference:
            _, Xr, gr, zr, kr = sec[r]
            lab = E._labels(split.sections[r])[kr]
            ok = np.array([v is not None for v in lab]) & np.isfinite(zr).all(1)
            Zr0.append(zr[ok])
            yr.append(lab[ok].astype(str))
            Xs = Xr[np.flatnonzero(ok)]
            Zr1.append(read_through_panel(module, Xs, gr, zr[ok], nq))
        yr = np.concatenate(yr)
        cats = np.unique(yr)
        Z0, Z1 = np.concatenate(Zr0), np.concatenate(Zr1)
        zq_r = [read_through_panel(module, Xq, gq, zq, sec[r][0]) for r in split.reference]
        P = {}
        for kind, f in (("knn", _knn), ("mlp", _mlp)):
            p0, p1 = f(Z0, yr, zq, cats), f(Z1, yr, zq, cats)
            p2 = np.zeros_like(p0)
            off = 0
            for z, zr in zip(zq_r, Zr0):  # each reference section's cells, in its encoder
                p2 += f(zr, yr[off : off + len(zr)], z, cats) if kind == "knn" else 0
                off += len(zr)
            if kind == "mlp":  # one MLP on all reference z_C, each query view through it
                p2 = np.mean([f(Z0, yr, z, cats) for z in zq_r], 0)
            else:
                p2 /= len(zq_r)
            P.update(
                {
                    f"{kind}_zc": p0,
                    f"{kind}_q": p1,
                    f"{kind}_r": p2,
                    f"{kind}_both": p1 + p2,
                    f"{kind}_all": p0 + p1 + p2,
                }
            )
        for key, p in P.items():
            pred = np.full(split.sections[q].n_obs, None, dtype=object)
            pred[kq] = cats[p.argmax(1)]
            out.setdefault(key, {})[q] = pred
    return {k: E.label_metrics(v, split)["acc"] for k, v in out.items()}


def _sections_joint(m):
    lat = m.get_latent_representation("cell")
    return {
        i: (n, p.X, p.genes, np.nan_to_num(lat[i][p.kept]), p.kept)
        for i, (n, p) in enumerate(zip(m.section_names, m.prepared))
    }


def run(set_name: str, idx: int, seed: int, max_cells: int, cfg: dict | None = None) -> dict:
    from napari_brainatlas.annotate import map_query
    from napari_brainatlas.fusemap import FuseMap

    split = S.cap_cells(S.make_split(set_name, idx), max_cells)
    if split.spec.half != "dev":
        raise SystemExit(f"{set_name}:{idx} is a test split: this experiment is dev-only")
    cfg = dict(cfg or {})
    row = {"set": set_name, "split": idx, "seed": seed, "fm_cfg": cfg}
    t0 = time.time()
    for name, r in zip(("pca", "harmony"), M.pca_harmony(split, seed)):
        row[name] = E.label_metrics(E.knn_predict(r["emb"], split), split)["acc"]
    with torch.random.fork_rng(devices=[]):
        m = FuseMap([a.copy() for a in split.sections], seed=seed, **cfg)
        m.train()
    row["joint"] = views(split, m.module, _sections_joint(m))
    refs = [split.sections[r].copy() for r in split.reference]
    qrys = [split.sections[q].copy() for q in split.query]
    with torch.random.fork_rng(devices=[]):
        mr = FuseMap(refs, seed=seed, **cfg)
        mr.train()
        mp = map_query(mr, qrys, seed=seed)
    own = _sections_joint(mr)
    sec = {r: own[j] for j, r in enumerate(split.reference)}
    latq = mp.get_latent_representation("cell")
    for j, q in enumerate(split.query):
        p = mp._q[j].p
        sec[q] = (mp.query_names[j], p.X, p.genes, np.nan_to_num(latq[j][p.kept]), p.kept)
    row["chain"] = views(split, mp.module, sec)
    row["s"] = round(time.time() - t0)
    return row


def summary(rows: list[dict]) -> str:
    L = []
    for mode in ("joint", "chain"):
        base = np.array([r[mode]["mlp_zc"] for r in rows])
        h = np.array([r["harmony"] for r in rows])
        for k in rows[0][mode]:
            d = np.array([r[mode][k] for r in rows])
            L.append(
                f"{mode:5s} {k:9s} {d.mean():.3f}  vs Harmony kNN {np.mean(d - h):+.3f} "
                f"(ahead on {np.mean(d > h):.0%})  vs MLP on z_C {np.mean(d - base):+.3f} "
                f"(better on {np.mean(d > base):.0%})"
            )
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobs", nargs="*", help="SET:SPLIT:SEED")
    ap.add_argument("--out", default="benchmarks/embedding/dev/panel_views_dev.jsonl")
    ap.add_argument("--max-cells", type=int, default=1000)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--fm-cfg", default="{}", help="FuseMap options as JSON")
    a = ap.parse_args(argv)
    for job in a.jobs:
        s, i, seed = job.split(":")
        row = run(s, int(i), int(seed), a.max_cells, json.loads(a.fm_cfg))
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in Path(a.out).read_text().splitlines() if x.strip()]
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
