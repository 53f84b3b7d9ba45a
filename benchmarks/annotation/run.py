"""Label transfer and imputation benchmark: FuseMap query mapping vs Harmony + kNN vs
scanpy ingest, and FuseMap imputation vs the paper's kNN-average baseline.

    python benchmarks/annotation/run.py [--quick] [--epochs N] [--threads T]

Datasets (query and reference never share cells):

(a) demo: ``make_demo_sections(seed=0, n_sections=4)``; sections 1-3 are the reference,
    section 4 the query; labels ``celltype``, ``region``; a quarter of the query genes
    the reference also measures are hidden from the query.
(b) osmFISH (Codeluppi 2018, one SScortex section, 33 genes): reference = cells with
    x <= the 65th percentile of x, query = the rest, 8 of the 33 genes hidden from the
    query; labels ``ClusterName`` and ``Region``.

Methods, per label: FuseMap (reference FuseMap trained on the reference sections, the
query mapped with ``map_query`` (frozen reference; defaults: warm start from the
reference encoder, the reference-anchor loss, and so no adversarial term),
``transfer_labels`` with the MLP (defaults: class weights "sqrt" for cell types,
"balanced" for regions), hierarchy off, regions smoothed k = 30); Harmony + kNN (normalise/log1p, PCA 30 of the
genes shared by query and reference, harmonypy by section, 15-NN vote); scanpy ingest
(``sc.tl.ingest`` on the shared genes, reference PCA + neighbours). Metrics: accuracy
and macro-F1 over the query cells FuseMap keeps (> 5 counts).

Imputation of the hidden genes (each hidden gene left out of the query, one query
mapping for all of them): Pearson R between measurement (log1p of normalised counts of
the full query panel) and FuseMap's imputation: ``impute_genes`` default (kNN-50:
distance-weighted mean of the 50 nearest reference cells in the joint embedding
[z_C, z_T] that measured the gene, model-input units, the reference cells read through
the query's panel and encoder, ``view="query"``) and,
for comparison, the decoder ``max(z_C E^T, 0)``; baseline: the average of the 50
nearest reference cells in the Harmony space of the shared genes (paper's baseline).
Pearson R is invariant to a per-gene affine rescaling, so the model-input scaling
(normalise, log1p, divide by the gene's std, clip at 10) and the benchmark's log1p of
normalised counts give the same R up to the clip (checked: identical to 3 decimals).

Writes ``benchmarks/annotation/RESULTS_annotation.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data"
OSMFISH = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"


def lognorm(a, genes):
    """log1p of total-normalised counts (over the section's full panel), for ``genes``."""
    import scipy.sparse as sp

    X = a.layers.get("counts", a.X)
    X = X.toarray() if sp.issparse(X) else np.asarray(X, float)
    tot = X.sum(1, keepdims=True)
    X = np.log1p(X / np.maximum(tot, 1) * np.median(tot[tot > 0]))
    idx = {g.upper(): i for i, g in enumerate(a.var_names)}
    return X[:, [idx[g] for g in genes]]


def upper_panel(a):
    return [g.upper() for g in a.var_names]


def hide_genes(a, hidden):
    keep = [i for i, g in enumerate(a.var_names) if g.upper() not in set(hidden)]
    return a[:, keep].copy()


def harmony_space(refs, q, shared, seed=0):
    import harmonypy
    from sklearn.decomposition import PCA

    X = np.vstack([lognorm(a, shared) for a in refs + [q]])
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    n_pc = min(30, len(shared) - 1)
    P = PCA(n_pc, random_state=seed).fit_transform(X)
    batch = np.concatenate([np.full(a.n_obs, i) for i, a in enumerate(refs + [q])])
    meta = pd.DataFrame({"batch": batch.astype(str)})
    ho = harmonypy.run_harmony(P, meta, ["batch"], random_state=seed, verbose=False)
    Z = np.asarray(ho.Z_corr)
    if Z.shape[0] != P.shape[0]:
        Z = Z.T
    nr = sum(a.n_obs for a in refs)
    return Z[:nr], Z[nr:]


def knn_vote(Zr, yr, Zq, k=15):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(k).fit(Zr, yr).predict(Zq)


def _patch_pynndescent():
    """scanpy's ingest rebuilds pynndescent's forest with ``n_search_trees``, which
    pynndescent 0.7 leaves as None: use 1 tree there (its own default)."""
    import pynndescent.rp_trees as rp

    if getattr(rp.make_forest, "_patched", False):
        return
    orig = rp.make_forest

    def make_forest(data, n_neighbors, n_trees, *a, **k):
        return orig(data, n_neighbors, n_trees or 1, *a, **k)

    make_forest._patched = True
    rp.make_forest = make_forest


def _patch_scanpy_shortcut():
    """scanpy 1.11's neighbour shortcut calls ``getnnz``, which scipy's ``csr_array``
    (what pynndescent hands back above 4096 cells) no longer has: give it a
    ``csr_matrix`` view of the same data. Only the baseline's library is patched."""
    import scipy.sparse as sp
    from scanpy.neighbors import _common

    if getattr(_common._ind_dist_shortcut, "_patched", False):
        return
    orig = _common._ind_dist_shortcut

    def shortcut(d, /):
        return orig(sp.csr_matrix(d) if not hasattr(d, "getnnz") else d)

    shortcut._patched = True
    _common._ind_dist_shortcut = shortcut


def ingest(refs, q, shared, labels):
    import anndata as ad
    import scanpy as sc

    _patch_pynndescent()
    _patch_scanpy_shortcut()

    R = ad.AnnData(np.vstack([lognorm(a, shared) for a in refs]).astype(np.float32))
    R.var_names = shared
    for lab in labels:
        R.obs[lab] = pd.Categorical(np.concatenate([a.obs[lab].astype(str) for a in refs]))
    Q = ad.AnnData(lognorm(q, shared).astype(np.float32))
    Q.var_names = shared
    sc.pp.pca(R, n_comps=min(30, len(shared) - 1))
    sc.pp.neighbors(R, n_neighbors=15)
    sc.tl.ingest(Q, R, obs=labels, embedding_method="pca")
    return {lab: Q.obs[lab].astype(str).to_numpy() for lab in labels}


def scores(truth, pred):
    from sklearn.metrics import accuracy_score, f1_score

    truth = np.asarray(truth).astype(str)
    pred = np.asarray(pred).astype(str)
    return accuracy_score(truth, pred), f1_score(truth, pred, average="macro")


def run_dataset(name, refs, q_full, labels, hidden, epochs, seed=0):
    import torch

    from napari_brainatlas.annotate import impute_genes, map_query, transfer_labels
    from napari_brainatlas.fusemap import FuseMap

    t0 = time.time()
    q = hide_genes(q_full, hidden)
    ref_genes = set().union(*(upper_panel(a) for a in refs))
    shared = sorted(set(upper_panel(q)) & set.intersection(*(set(upper_panel(a)) for a in refs)))
    model = FuseMap(refs, seed=seed)
    model.train(max_epochs=epochs)
    t_train = time.time() - t0
    mapping = map_query(model, [q], epochs=epochs, seed=seed)
    refw = model.write_embeddings(copy=True)
    qw = mapping.write_embeddings()[0]
    emb = {
        lab: ("X_fusemap_tissue" if lab.lower().startswith("region") else "X_fusemap_cell")
        for lab in labels
    }
    out = transfer_labels(
        refw, [qw], labels=labels, embedding=emb, hierarchy={}, smooth_regions=True, seed=seed
    )[0]
    t_fm = time.time() - t0
    kept = np.isfinite(qw.obsm["X_fusemap_cell"]).all(1)
    Zr, Zq = harmony_space(refs, q, shared, seed)
    ing = ingest(refs, q, shared, labels)
    rows = []
    for lab in labels:
        truth = q.obs[lab].astype(str).to_numpy()[kept]
        yr = np.concatenate([a.obs[lab].astype(str) for a in refs])
        res = {
            "FuseMap (MLP)": out.obs[f"{lab}_transfer"].astype(str).to_numpy()[kept],
            "Harmony + kNN": knn_vote(Zr, yr, Zq)[kept],
            "scanpy ingest": ing[lab][kept],
        }
        for meth, pred in res.items():
            acc, f1 = scores(truth, pred)
            rows.append(
                {
                    "dataset": name,
                    "label": lab,
                    "method": meth,
                    "accuracy": acc,
                    "macro_f1": f1,
                    "n_query": int(kept.sum()),
                    "n_classes": len(set(truth)),
                }
            )
    # imputation of the hidden genes
    imp_rows = []
    ok_hidden = [g for g in hidden if g in ref_genes]
    fm = impute_genes(mapping, 0, ok_hidden)
    fm_dec = impute_genes(mapping, 0, ok_hidden, method="decoder")
    from sklearn.neighbors import NearestNeighbors

    nn_idx = NearestNeighbors(n_neighbors=50).fit(Zr).kneighbors(Zq)[1]
    for g in ok_hidden:
        meas = lognorm(q_full, [g])[:, 0]
        src = [
            lognorm(a, [g])[:, 0] if g in upper_panel(a) else np.full(a.n_obs, np.nan) for a in refs
        ]
        ref_vals = np.concatenate(src)
        base = np.nanmean(ref_vals[nn_idx], axis=1)
        f = fm[g].to_numpy()
        fd = fm_dec[g].to_numpy()
        m = kept & np.isfinite(f) & np.isfinite(fd) & np.isfinite(base)

        def r(a, b):
            return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan

        imp_rows.append(
            {
                "dataset": name,
                "gene": g,
                "fusemap_r": r(meas[m], f[m]),
                "fusemap_decoder_r": r(meas[m], fd[m]),
                "knn_harmony_r": r(meas[m], base[m]),
                "method": fm.attrs["method"],
            }
        )
    info = {
        "dataset": name,
        "n_ref": sum(a.n_obs for a in refs),
        "n_query": q.n_obs,
        "ref_sections": len(refs),
        "shared_genes": len(shared),
        "hidden": len(ok_hidden),
        "new_genes": len(mapping.new_genes),
        "train_s": t_train,
        "fusemap_s": t_fm,
        "total_s": time.time() - t0,
        "adversarial": mapping.adversarial,
        "anchored": mapping.anchored,
        "frozen_ok": mapping.frozen_unchanged(),
        "threads": torch.get_num_threads(),
    }
    return rows, imp_rows, info


def demo_sets(quick):
    from napari_brainatlas.demo import make_demo_sections

    secs = make_demo_sections(seed=0, n_sections=4, cells_per_mm2=80.0 if quick else 200.0)
    refs, q = secs[:3], secs[3]
    ref_genes = set().union(*(upper_panel(a) for a in refs))
    cand = [g for g in upper_panel(q) if g in ref_genes]
    rng = np.random.default_rng(0)
    hidden = sorted(rng.choice(cand, max(4, len(cand) // 4), replace=False).tolist())
    return refs, q, hidden


def osmfish_sets():
    from napari_brainatlas.io import read_sections

    a = read_sections(OSMFISH)[0]
    a = a.to_memory() if getattr(a, "isbacked", False) else a
    x = a.obsm["spatial"][:, 0]
    cut = np.percentile(x, 65)
    ref = a[x <= cut].copy()
    q = a[x > cut].copy()
    ref.obs["section"] = "osmFISH_reference"
    q.obs["section"] = "osmFISH_query"
    rng = np.random.default_rng(0)
    hidden = sorted(rng.choice(upper_panel(a), 8, replace=False).tolist())
    return [ref], q, hidden


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer cells and epochs")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "RESULTS_annotation.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (5 if args.quick else 15)
    args.t_start, args.load_start = time.time(), os.getloadavg()
    all_rows, all_imp, infos = [], [], []
    refs, q, hidden = demo_sets(args.quick)
    r, i, info = run_dataset(
        "demo (section 4 held out)", refs, q, ["celltype", "region"], hidden, epochs
    )
    all_rows += r
    all_imp += i
    infos.append(info)
    print(pd.DataFrame(r).to_string(), file=sys.stderr)
    if OSMFISH.is_file():
        refs, q, hidden = osmfish_sets()
        r, i, info = run_dataset(
            "osmFISH (x > 65th pct held out)", refs, q, ["ClusterName", "Region"], hidden, epochs
        )
        all_rows += r
        all_imp += i
        infos.append(info)
        print(pd.DataFrame(r).to_string(), file=sys.stderr)
    else:
        print(f"osmFISH not found at {OSMFISH}: skipped", file=sys.stderr)
    write_results(args, epochs, all_rows, all_imp, infos)
    return 0


def write_results(args, epochs, rows, imp, infos):
    import platform

    import torch

    cmd = (
        "python benchmarks/annotation/run.py"
        + (" --quick" if args.quick else "")
        + (f" --epochs {args.epochs}" if args.epochs else "")
        + f" --threads {args.threads}"
    )
    df = pd.DataFrame(rows)
    tab = df.pivot_table(
        index=["dataset", "label"], columns="method", values=["accuracy", "macro_f1"]
    )
    im = pd.DataFrame(imp)
    lines = [
        "# Label transfer and imputation: FuseMap vs Harmony + kNN vs scanpy ingest",
        "",
        (
            f"Command: `{cmd}` (CPU, {platform.processor() or platform.machine()}, torch "
            f"{torch.__version__}, {args.threads} thread(s), {epochs} epochs per phase)."
        ),
        "",
        (
            f"Wall time {time.time() - args.t_start:.0f} s; load average (1, 5, 15 min) "
            f"{' / '.join(f'{x:.1f}' for x in args.load_start)} at the start, "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end (2-core machine "
            "shared with other jobs)."
        ),
        "",
        (
            "See the docstring of `run.py` for the splits and methods. Accuracy and macro-F1 "
            "over the query cells FuseMap keeps (> 5 counts)."
        ),
        "",
        (
            'scanpy ingest runs with `embedding_method="pca"` and a one-line fix for pynndescent 0.7 (`n_search_trees` None -> 1 in the forest rebuild). The osmFISH split is by x (the cortical layers run along y, so a y cut would leave query layers absent from the reference). Imputation: all hidden genes are left out of the query at once and the query is mapped once (not one mapping per gene).'
        ),
        "",
        "## Label transfer",
        "",
        "| dataset | label | classes | metric | FuseMap (MLP) | Harmony + kNN | scanpy ingest |",
        "|---|---|---|---|---|---|---|",
    ]
    for (ds, lab), row in tab.iterrows():
        ncls = int(df[(df.dataset == ds) & (df.label == lab)].n_classes.iloc[0])
        for met in ("accuracy", "macro_f1"):
            vals = [row[(met, m)] for m in ("FuseMap (MLP)", "Harmony + kNN", "scanpy ingest")]
            lines.append(
                f"| {ds} | {lab} | {ncls} | {met} | " + " | ".join(f"{v:.3f}" for v in vals) + " |"
            )
    lines += [
        "",
        "## Imputation of hidden genes (Pearson R with the measurement)",
        "",
        (
            "| dataset | genes | FuseMap (kNN-50 in [z_C, z_T], query view, default) mean R | FuseMap decoder "
            "max(z_C E^T, 0) mean R | kNN-50 Harmony mean R (baseline) | FuseMap better "
            "in |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for ds, g in im.groupby("dataset"):
        better = int((g.fusemap_r > g.knn_harmony_r).sum())
        lines.append(
            f"| {ds} | {len(g)} | {g.fusemap_r.mean():.3f} | "
            f"{g.fusemap_decoder_r.mean():.3f} | "
            f"{g.knn_harmony_r.mean():.3f} | {better}/{len(g)} |"
        )
    lines += [
        "",
        "Per gene:",
        "",
        "| dataset | gene | FuseMap kNN-50 R | FuseMap decoder R | kNN-50 Harmony R |",
        "|---|---|---|---|---|",
    ]
    for _, r in im.iterrows():
        lines.append(
            f"| {r.dataset} | {r.gene} | {r.fusemap_r:.3f} | "
            f"{r.fusemap_decoder_r:.3f} | {r.knn_harmony_r:.3f} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        (
            "| dataset | ref cells | query cells | ref sections | shared genes | hidden | "
            "new genes | adversarial | anchored | reference frozen | FuseMap s | total s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in infos:
        lines.append(
            f"| {i['dataset']} | {i['n_ref']} | {i['n_query']} | {i['ref_sections']} | "
            f"{i['shared_genes']} | {i['hidden']} | {i['new_genes']} | "
            f"{i['adversarial']} | {i['anchored']} | {i['frozen_ok']} | "
            f"{i['fusemap_s']:.0f} | "
            f"{i['total_s']:.0f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
