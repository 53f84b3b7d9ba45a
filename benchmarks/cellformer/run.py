"""kNN label accuracy of CellFormer embeddings vs PCA (and FuseMap when importable).

    PYTHONPATH=src python benchmarks/cellformer/run.py [--epochs 6] [--fusemap]

Demo (make_demo_sections(seed=0, n_sections=4, cells_per_mm2=100), label celltype):
5-fold CV over all cells and leave-one-section-out. Real osmFISH (label ClusterName,
'Excluded' cells left out of scoring): 5-fold CV. kNN: 15 neighbours, Euclidean.
PCA: 30 components of z-scored log1p(CP10k) over the genes all sections share.
Writes benchmarks/cellformer/RESULTS_cellformer.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data"


def knn_cv(z, y):
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(15), z, y, cv=cv).mean())


def knn_loso(z, y, sec):
    accs = []
    for s in np.unique(sec):
        te = sec == s
        clf = KNeighborsClassifier(15).fit(z[~te], y[~te])
        accs.append(float((clf.predict(z[te]) == y[te]).mean()))
    return float(np.mean(accs))


def pca_embed(secs):
    common = sorted(set.intersection(*[set(s.var_names) for s in secs]))
    X = np.vstack([np.asarray(s[:, common].layers["counts"] if "counts" in s.layers
                              else s[:, common].X) for s in secs]).astype(float)
    X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return PCA(min(30, X.shape[1] - 1), random_state=0).fit_transform(X), len(common)


def fusemap_embed(secs, epochs):
    try:
        from napari_brainatlas.model import FuseMap
    except Exception:  # noqa: BLE001 - not part of this build
        return None
    m = FuseMap([s.copy() for s in secs], seed=0)
    m.train(max_epochs=epochs)
    return np.vstack(m.get_latent_representation("cell"))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--fusemap", action="store_true", help="also train FuseMap")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_brainatlas.cellformer import CellFormer
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import read_sections

    rows = []
    sets = {"demo (4 sections, celltype)": (make_demo_sections(seed=0, n_sections=4,
                                                               cells_per_mm2=100), "celltype")}
    loom = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"
    if loom.exists():
        sets["osmFISH (ClusterName)"] = (read_sections(loom), "ClusterName")
    for name, (secs, key) in sets.items():
        y = np.concatenate([s.obs[key].astype(str).to_numpy() for s in secs])
        sec = np.concatenate([s.obs["section"].astype(str).to_numpy() for s in secs])
        ok = y != "Excluded"
        t = time.time()
        m = CellFormer(secs, seed=0)
        m.train(args.epochs)
        zc = m.get_latent_representation(write=False)
        tc = time.time() - t
        zp, n_common = pca_embed(secs)
        embs = {f"CellFormer ({args.epochs} epochs, {tc:.0f} s)": zc,
                f"PCA ({n_common} shared genes)": zp}
        if args.fusemap:
            t = time.time()
            zf = fusemap_embed(secs, args.epochs)
            if zf is not None:
                good = np.isfinite(zf).all(1)
                zf[~good] = 0
                embs[f"FuseMap ({args.epochs} epochs, {time.time() - t:.0f} s)"] = zf
        for ename, z in embs.items():
            cv = knn_cv(z[ok], y[ok])
            loso = knn_loso(z[ok], y[ok], sec[ok]) if len(secs) > 1 else float("nan")
            rows.append((name, ename, cv, loso, m.history[-1]["loss"]
                         if ename.startswith("CellFormer") else float("nan")))
            print(rows[-1], flush=True)
    lines = ["# CellFormer benchmark: kNN label accuracy of cell embeddings", "",
             f"Command: `PYTHONPATH=src python benchmarks/cellformer/run.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "kNN (k=15) accuracy; 5-fold stratified CV over cells and leave-one-section-out "
             "(demo only). osmFISH 'Excluded' cells are not scored.", "",
             "| data | embedding | kNN 5-fold | kNN leave-one-section-out | final train loss |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.3f} | "
                     f"{'-' if np.isnan(r[3]) else f'{r[3]:.3f}'} | "
                     f"{'-' if np.isnan(r[4]) else f'{r[4]:.3f}'} |")
    lines += ["", f"Machine: {torch.get_num_threads()} torch thread(s), "
              f"device {'cuda' if torch.cuda.is_available() else 'cpu'}."]
    (HERE / "RESULTS_cellformer.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
