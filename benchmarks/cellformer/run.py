"""kNN label accuracy of CellFormer embeddings vs PCA and FuseMap.

    PYTHONPATH=src python benchmarks/cellformer/run.py [--epochs 10] [--fusemap]
        [--fusemap-epochs 10] [--max-cells 0] [--datasets demo,osmfish,merfish]

Data sets (cells subsampled per section to --max-cells in total when it is > 0):

- demo: make_demo_sections(seed=0, n_sections=4, cells_per_mm2=100), label celltype;
  5-fold CV over all cells and leave-one-section-out.
- osmFISH (Codeluppi 2018, ../shared/data), label ClusterName ('Excluded' cells are not
  scored); 5-fold CV.
- MERFISH (Moffitt 2018 hypothalamus, spacexr extdata): the 750 MERFISH cells carry no
  cell-type labels, so the models are trained on them together with the labelled
  scRNA-seq reference measured on the same 134 genes (1,308 cells, 14 types), and the
  kNN accuracy is scored on the reference labels ('Ambiguous' not scored); 5-fold CV.
  FuseMap needs coordinates for every section: the reference cells (dissociated, no
  positions) get random positions in a 1 mm square, so its spatial graph there joins
  random cells (a handicap for FuseMap, stated in the table).

kNN: 15 neighbours, Euclidean. PCA: 30 components of z-scored log1p(CP10k) over the genes
all sections share. FuseMap: its cell embedding (z_C), trained with
``train(max_epochs=--fusemap-epochs)``. Writes benchmarks/cellformer/RESULTS_cellformer.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data"
NOT_SCORED = {"Excluded", "Ambiguous"}
NOTES = "<!-- notes: kept by run.py -->"


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


def _dense_counts(a):
    X = a.layers["counts"] if "counts" in a.layers else a.X
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=float)


def pca_embed(secs):
    common = sorted(set.intersection(*[set(s.var_names) for s in secs]))
    X = np.vstack([_dense_counts(s[:, common]) for s in secs])
    X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return PCA(min(30, X.shape[1] - 1), random_state=0).fit_transform(X), len(common)


def fusemap_embed(secs, epochs):
    from napari_brainatlas.fusemap import FuseMap

    m = FuseMap([s.copy() for s in secs], seed=0)
    m.train(max_epochs=epochs)
    return np.vstack(m.get_latent_representation("cell"))


def merfish_sections():
    """The MERFISH section (unlabelled) and the labelled scRNA-seq reference."""
    import anndata as ad

    from napari_brainatlas.io import read_sections

    root = DATA / "spacexr_merfish_hypothalamus"
    mer = read_sections(root / "query_merfish")[0]
    mer.obs["label"] = "unlabelled"
    counts = pd.read_csv(root / "reference_scrna" / "counts.csv", index_col=0).T  # cells x genes
    types = pd.read_csv(root / "reference_scrna" / "cell_types.csv", index_col=0).iloc[:, 0]
    counts = counts.loc[types.index.astype(str)]
    ref = ad.AnnData(
        X=sp.csr_matrix(counts.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=counts.index.astype(str)),
        var=pd.DataFrame(index=counts.columns.astype(str)),
    )
    ref.layers["counts"] = ref.X.copy()
    ref.obs["label"] = types.astype(str).to_numpy()
    ref.obs["section"] = "scRNA_reference"
    # no positions: random ones (only FuseMap reads them)
    ref.obsm["spatial"] = np.random.default_rng(0).uniform(0, 1000, (ref.n_obs, 2))
    mer.obs["section"] = "merfish"
    return [mer, ref]


def load_sets(names):
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import read_sections

    sets = {}
    if "demo" in names:
        secs = make_demo_sections(seed=0, n_sections=4, cells_per_mm2=100)
        for s in secs:
            s.obs["label"] = s.obs["celltype"].astype(str)
        sets["demo (4 sections, celltype)"] = secs
    loom = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"
    if "osmfish" in names and loom.exists():
        secs = read_sections(loom)
        for s in secs:
            s.obs["label"] = s.obs["ClusterName"].astype(str)
        sets["osmFISH (ClusterName)"] = secs
    if "merfish" in names and (DATA / "spacexr_merfish_hypothalamus").exists():
        sets["MERFISH + scRNA ref. (134 genes, cell type)"] = merfish_sections()
    return sets


def subsample(secs, max_cells, seed=0):
    total = sum(s.n_obs for s in secs)
    if max_cells <= 0 or total <= max_cells:
        return secs
    rng = np.random.default_rng(seed)
    out = []
    for s in secs:
        k = max(3, int(round(s.n_obs * max_cells / total)))
        out.append(s[np.sort(rng.choice(s.n_obs, min(k, s.n_obs), replace=False))].copy())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--fusemap", action="store_true", help="also train FuseMap")
    ap.add_argument("--fusemap-epochs", type=int, default=10)
    ap.add_argument(
        "--max-cells",
        type=int,
        default=0,
        help="subsample each data set to about this many cells (0: all)",
    )
    ap.add_argument("--datasets", default="demo,osmfish,merfish")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_brainatlas.cellformer import CellFormer

    t_all = time.time()
    rows, sizes = [], {}
    sets = load_sets(set(args.datasets.split(",")))
    for name, secs in sets.items():
        secs = subsample(secs, args.max_cells)
        y = np.concatenate([s.obs["label"].astype(str).to_numpy() for s in secs])
        sec = np.concatenate([s.obs["section"].astype(str).to_numpy() for s in secs])
        ok = ~np.isin(y, list(NOT_SCORED) + ["unlabelled"])
        sizes[name] = (int(len(y)), int(ok.sum()), len(np.unique(y[ok])))
        embs, losses = {}, {}
        t = time.time()
        m0 = CellFormer(secs, seed=0)
        embs["CellFormer, untrained"] = m0.get_latent_representation(write=False)
        m = CellFormer(secs, seed=0)
        m.train(args.epochs)
        key = f"CellFormer ({args.epochs} epochs, {time.time() - t:.0f} s)"
        embs[key] = m.get_latent_representation(write=False)
        losses[key] = m.history[-1]["loss"]
        zp, n_common = pca_embed(secs)
        embs[f"PCA ({n_common} shared genes)"] = zp
        if args.fusemap:
            t = time.time()
            zf = fusemap_embed(secs, args.fusemap_epochs)
            good = np.isfinite(zf).all(1)
            zf[~good] = 0
            note = "; reference at random positions" if name.startswith("MERFISH") else ""
            embs[f"FuseMap ({args.fusemap_epochs} max epochs, {time.time() - t:.0f} s{note})"] = zf
        multi = len(np.unique(sec[ok])) > 1
        for ename, z in embs.items():
            cv = knn_cv(z[ok], y[ok])
            loso = knn_loso(z[ok], y[ok], sec[ok]) if multi else float("nan")
            rows.append((name, ename, cv, loso, losses.get(ename, float("nan"))))
            print(rows[-1], flush=True)
    dur = time.time() - t_all
    load = os.getloadavg()
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# CellFormer benchmark: kNN label accuracy of cell embeddings",
        "",
        f"Command: `PYTHONPATH=src python benchmarks/cellformer/run.py {cmd}`",
        "",
        f"Whole run: {dur:.0f} s; load average at the end {load[0]:.2f}, {load[1]:.2f}, "
        f"{load[2]:.2f} (shared 2-core machine, {torch.get_num_threads()} torch "
        f"thread, device {'cuda' if torch.cuda.is_available() else 'cpu'}).",
        "",
        "kNN (k=15) accuracy; 5-fold stratified CV over the scored cells and "
        "leave-one-section-out (demo only). Not scored: osmFISH 'Excluded', the "
        "reference's 'Ambiguous', the (unlabelled) MERFISH cells. MERFISH: the models "
        "are trained on the 750 MERFISH cells plus the scRNA-seq reference on the same "
        "134 genes; accuracy is over the reference's labels.",
        "",
        "| data (cells, scored, labels) | embedding | kNN 5-fold | "
        "kNN leave-one-section-out | final train loss |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        n, k, c = sizes[r[0]]
        lines.append(
            f"| {r[0]} ({n}, {k}, {c}) | {r[1]} | {r[2]:.3f} | "
            f"{'-' if np.isnan(r[3]) else f'{r[3]:.3f}'} | "
            f"{'-' if np.isnan(r[4]) else f'{r[4]:.4f}'} |"
        )
    out = HERE / "RESULTS_cellformer.md"
    old = out.read_text() if out.exists() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else ""  # hand-written notes are kept
    out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""))
    print(f"done in {dur:.0f} s, load {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
