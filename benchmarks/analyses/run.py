"""The FuseMap paper's atlas analyses, measured: gene panels (Fig. 4l) and proximity speed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/analyses/run.py \
        [--data ../shared/data] [--epochs 10] [--datasets merfish,slideseq,osmfish,demo] \
        [--sizes 10,20,50,100] [--random-panels 20] [--max-cells 3000] [--skip-panels] \
        [--skip-proximity] [--out benchmarks/analyses/RESULTS.md]

Panels (as the paper's Fig. 4l, side by side in one run): cell-type classification
accuracy from panels of N genes chosen by gene modules vs the top-N highly variable genes
vs random panels (mean of --random-panels), with one fixed classifier: multinomial
logistic regression (sklearn, C=1, lbfgs, max_iter 1000) on z-scored log1p(counts per
10k) of the panel genes (library size from all measured genes, as the paper's scRNA-seq
atlas normalised), 5-fold stratified cross-validation, the same folds for every panel.

Data (../shared/data; FuseMap is trained here, ``train(pretrain_epochs=E,
final_epochs=E)``, seed 0, CPU, 1 torch thread, on the sections listed; the gene embedding of the genes
the classification data measures is what the modules are built from):

- merfish: FuseMap on the MERFISH hypothalamus section (750 cells, 134 genes) and the
  scRNA-seq reference (1,308 cells, same genes); classification on the reference's 14
  labels (as published, 'Ambiguous' and 'Unstable' included).
- slideseq: FuseMap on the Slide-seq cerebellum beads (100 beads, 378 genes) and the
  snRNA-seq reference (475 cells, 384 genes); classification on the reference's 19 types.
- osmfish: FuseMap on the osmFISH section (6,471 cells, 33 genes); classification on
  ClusterName ('Excluded' cells left out); panel sizes >= 33 do not apply.
- demo: FuseMap on make_demo_sections(seed=0, cells_per_mm2=150) (4 sections, panels
  differ);
  classification on the largest section's celltype over that section's genes.

The dissociated references have no positions; FuseMap needs a spatial graph, so they
enter with a 2-D PCA layout of their own log-normalised expression (plus 1e-3 jitter) as
coordinates: the Delaunay neighbours of a reference cell are cells of similar expression.

Free parameter: the Leiden resolution. Cells are split 30 / 70 (stratified, seed 0) into
a dev split and a held-out split. On dev, module panels at every resolution of
{auto rule, 0.3, 0.5, 1, 1.5, 2, 3} are scored (mean accuracy over the panel sizes) and
the best is kept; every row of the table is then measured on the held-out split only.
Variability ranks (Seurat-v3-style, analyses.gene_variability, the paper's ranking) come
from all cells of the classification data (no labels), the same ranks for the module
and HVG panels; a second table repeats modules vs HVG with scanpy's "seurat"
dispersion ranking.

Proximity: analyses.region_proximity with the defaults (30 um, 1,000 shifts within
100 um) on synthetic sections of 100,000 and 10,000 cells with 30 types and 10 regions
(Poisson positions at 1,400 cells / mm2, like a MERFISH coronal section), with 1 and 2
threads, after one warm-up call (numba compilation, timed apart); and on osmFISH
(ClusterName x Region) and the demo (celltype x region) for the pairs found, plus the
calibration on osmFISH with shuffled cell types (adjusted vs raw counts).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from napari_brainatlas.analyses import (
    ProximitySettings,
    gene_modules,
    gene_variability,
    hvg_panel,
    random_panel,
    region_proximity,
    select_panel,
)

RESOLUTION_OPTIONS = ["auto", 0.3, 0.5, 1.0, 1.5, 2.0, 3.0]


# ----------------------------------------------------------------------------- data
def _reference(counts: pd.DataFrame, labels: pd.Series, name: str) -> AnnData:
    """cells x genes counts + labels -> AnnData with a PCA layout as coordinates."""
    X = counts.to_numpy(np.float32)
    a = AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame({"label": labels.astype(str).to_numpy()}, index=counts.index),
        var=pd.DataFrame(index=counts.columns.astype(str)),
    )
    a.layers["counts"] = a.X.copy()
    a.obs["section"] = name
    lib = X.sum(1, keepdims=True)
    L = np.log1p(X / np.maximum(lib, 1) * 1e4)
    L -= L.mean(0)
    u, s, _ = np.linalg.svd(L, full_matrices=False)
    xy = u[:, :2] * s[:2]
    xy = xy / xy.std() * 1000.0
    a.obsm["spatial"] = xy + np.random.default_rng(0).normal(0, 1e-3, xy.shape)
    return a


def load_merfish(data: Path):
    from napari_brainatlas.io import read_sections

    root = data / "spacexr_merfish_hypothalamus"
    sec = read_sections(root / "query_merfish")[0]
    counts = pd.read_csv(root / "reference_scrna" / "counts.csv", index_col=0).T
    types = pd.read_csv(root / "reference_scrna" / "cell_types.csv", index_col=0).iloc[:, 0]
    counts = counts.loc[types.index.astype(str)]
    ref = _reference(counts, types, "scRNA_reference")
    return [sec, ref], ref


def load_slideseq(data: Path):
    from napari_brainatlas.io import read_sections

    root = data / "spacexr_slideseq_cerebellum"
    sec = read_sections(root / "query_slideseq")[0]
    counts = pd.read_csv(root / "reference_snrna" / "dge.csv", index_col=0).T
    meta = pd.read_csv(root / "reference_snrna" / "meta_data.csv", index_col=0)
    names = pd.read_csv(root / "reference_snrna" / "cell_type_dict.csv", index_col=0)["Name"]
    labels = meta.loc[counts.index, "cluster"].map(names)
    ref = _reference(counts, labels, "snRNA_reference")
    return [sec, ref], ref


def load_osmfish(data: Path):
    from napari_brainatlas.io import read_sections

    sec = read_sections(data / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom")[0]
    sec = sec.to_memory() if getattr(sec, "isbacked", False) else sec
    cls = sec[sec.obs["ClusterName"].astype(str) != "Excluded"].copy()
    cls.obs["label"] = cls.obs["ClusterName"].astype(str)
    return [sec], cls


def load_demo(data: Path):
    from napari_brainatlas.demo import make_demo_sections

    secs = make_demo_sections(seed=0, cells_per_mm2=150)
    big = max(secs, key=lambda a: a.n_obs).copy()
    big.obs["label"] = big.obs["celltype"].astype(str)
    return secs, big


LOADERS = {
    "merfish": ("MERFISH hypothalamus scRNA-seq ref.", load_merfish),
    "slideseq": ("Slide-seq cerebellum snRNA-seq ref.", load_slideseq),
    "osmfish": ("osmFISH cortex (ClusterName)", load_osmfish),
    "demo": ("demo (largest section, celltype)", load_demo),
}


# ----------------------------------------------------------------------------- panels
def train_embedding(sections, epochs: int, seed: int = 0) -> tuple[pd.DataFrame, float, int]:
    import torch

    from napari_brainatlas.fusemap import FuseMap

    torch.set_num_threads(1)  # 2 threads on the shared 2-core machine: 20x slower
    t0 = time.perf_counter()
    model = FuseMap(sections, device="cpu", seed=seed)
    model.train(pretrain_epochs=epochs, final_epochs=epochs)
    return model.gene_embedding(), time.perf_counter() - t0, len(model.history)


def features(cls: AnnData) -> tuple[pd.DataFrame, np.ndarray]:
    X = cls.layers["counts"] if "counts" in cls.layers else cls.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    lib = X.sum(1, keepdims=True)
    L = np.log1p(X / np.maximum(lib, 1) * 1e4)
    genes = [str(g).strip().upper() for g in cls.var_names]
    df = pd.DataFrame(L, index=cls.obs_names, columns=genes)
    df = df.loc[:, ~df.columns.duplicated()]
    return df, cls.obs["label"].astype(str).to_numpy()


def cv_accuracy(F: pd.DataFrame, y: np.ndarray, genes, folds) -> np.ndarray:
    X = F[list(genes)].to_numpy()
    out = []
    for tr, te in folds:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, tol=1e-3))
        clf.fit(X[tr], y[tr])
        out.append(float((clf.predict(X[te]) == y[te]).mean()))
    return np.array(out)


def _folds(y, seed=0):
    return list(StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def dispersion_rank(cls: AnnData) -> pd.Series:
    """The other common HVG ranking: scanpy flavor="seurat" normalised dispersion of
    log-normalised data (NaN -> lowest)."""
    import scanpy as sc

    a = AnnData(X=(cls.layers["counts"] if "counts" in cls.layers else cls.X).copy())
    a.var_names = [str(g).strip().upper() for g in cls.var_names]
    a.var_names_make_unique()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=min(50, a.n_vars - 1))
    d = a.var["dispersions_norm"].astype(float)
    return d.fillna(d.min() - 1.0 if d.notna().any() else 0.0)


def module_panel(E, var, size, res, genes):
    gm = gene_modules(E.loc[genes], resolution=res, umap=False)
    return select_panel(gm, size, variability=var)["gene"].tolist(), gm


def run_panels(name, sections, cls, args) -> dict:
    rng = np.random.default_rng(0)
    if args.max_cells and cls.n_obs > args.max_cells:
        keep = np.sort(rng.choice(cls.n_obs, args.max_cells, replace=False))
        cls = cls[keep].copy()
    counts = cls.obs["label"].value_counts()
    cls = cls[cls.obs["label"].isin(counts.index[counts >= 10])].copy()
    E, t_train, n_ep = train_embedding(sections, args.epochs)
    F, y = features(cls)
    var = gene_variability(cls)
    disp = dispersion_rank(cls)
    genes = [g for g in F.columns if g in E.index and g in var.index and g in disp.index]
    sizes = [s for s in args.sizes if s < len(genes)]
    dev, test = train_test_split(np.arange(len(y)), test_size=0.7, stratify=y, random_state=0)
    f_dev, f_test = _folds(y[dev]), _folds(y[test])
    Fd, Ft = F.iloc[dev], F.iloc[test]
    # dev: choose the resolution
    dev_scores = {}
    for res in RESOLUTION_OPTIONS:
        accs = [
            cv_accuracy(Fd, y[dev], module_panel(E, var, s, res, genes)[0], f_dev).mean()
            for s in sizes
        ]
        dev_scores[str(res)] = float(np.mean(accs))
    best = max(dev_scores, key=lambda k: (dev_scores[k], k == "auto"))
    best_res = best if best == "auto" else float(best)
    # held out: every method on the same folds
    rows = []
    gm_auto = gm_best = None
    for s in sizes:
        p_auto, gm_auto = module_panel(E, var, s, "auto", genes)
        p_best, gm_best = module_panel(E, var, s, best_res, genes)
        p_hvg = hvg_panel(var, s, genes=genes)["gene"].tolist()
        p_dmod = module_panel(E, disp, s, "auto", genes)[0]
        p_dhvg = hvg_panel(disp, s, genes=genes)["gene"].tolist()
        a_auto = cv_accuracy(Ft, y[test], p_auto, f_test)
        a_best = cv_accuracy(Ft, y[test], p_best, f_test)
        a_hvg = cv_accuracy(Ft, y[test], p_hvg, f_test)
        a_dmod = cv_accuracy(Ft, y[test], p_dmod, f_test)
        a_dhvg = cv_accuracy(Ft, y[test], p_dhvg, f_test)
        a_rand = np.array(
            [
                cv_accuracy(Ft, y[test], random_panel(genes, s, seed=i)["gene"], f_test).mean()
                for i in range(args.random_panels)
            ]
        )
        rows.append(
            dict(
                size=s,
                auto=a_auto,
                tuned=a_best,
                hvg=a_hvg,
                random=a_rand,
                disp_modules=a_dmod,
                disp_hvg=a_dhvg,
                overlap=len(set(p_auto) & set(p_hvg)),
            )
        )
    umap_check = umap_sanity(E.loc[genes])
    return dict(
        name=name,
        n_cells=len(y),
        n_test=len(test),
        n_types=len(np.unique(y)),
        n_genes=len(genes),
        t_train=t_train,
        epochs=n_ep,
        dev_scores=dev_scores,
        best=best,
        auto_modules=gm_auto,
        best_modules=gm_best,
        rows=rows,
        umap=umap_check,
    )


def umap_sanity(E):
    """Modules (auto rule) on the gene UMAP: 5-NN accuracy of module labels on the map
    (does the map show the modules?) and the figure."""
    from sklearn.neighbors import KNeighborsClassifier

    gm = gene_modules(E)
    xy = gm.table[["umap_x", "umap_y"]].to_numpy()
    acc = KNeighborsClassifier(5).fit(xy, gm.table["module"]).score(xy, gm.table["module"])
    return gm, float(acc)


# ----------------------------------------------------------------------------- proximity
def synthetic_section(n, n_types=30, n_regions=10, density=1400.0, seed=0) -> AnnData:
    r = np.random.default_rng(seed)
    area_um2 = n / density * 1e6
    w = np.sqrt(area_um2 * 1.4)
    h = area_um2 / w
    xy = r.uniform(0, 1, (n, 2)) * [w, h]
    obs = pd.DataFrame(
        {
            "celltype": r.integers(0, n_types, n).astype(str),
            "region": (xy[:, 0] / w * n_regions).astype(int).astype(str),
        },
        index=[f"c{i}" for i in range(n)],
    )
    a = AnnData(obs=obs)
    a.obsm["spatial"] = xy
    return a


def time_proximity(args) -> list[dict]:
    out = []
    warm = synthetic_section(2000, seed=9)
    t0 = time.perf_counter()
    region_proximity(
        warm,
        celltype_key="celltype",
        region_key="region",
        settings=ProximitySettings(n_shifts=4),
        key_added=None,
    )
    compile_s = time.perf_counter() - t0
    for n in (100_000, 10_000):
        a = synthetic_section(n)
        for jobs_ in (2, 1):
            t0 = time.perf_counter()
            res = region_proximity(
                a, celltype_key="celltype", region_key="region", n_jobs=jobs_, key_added=None
            )
            dt = time.perf_counter() - t0
            out.append(
                dict(
                    n=n,
                    threads=jobs_,
                    seconds=dt,
                    rows=len(res.table),
                    significant=int(res.table["significant"].sum()),
                    load=os.getloadavg()[0],
                )
            )
            print(f"proximity {n} cells, {jobs_} thread(s): {dt:.1f} s", flush=True)
    return [dict(compile_s=compile_s)] + out


def real_proximity(args) -> dict:
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import read_sections

    data = Path(args.data)
    osm = read_sections(data / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom")[0]
    osm = osm[osm.obs["ClusterName"].astype(str) != "Excluded"].copy()
    res = {}
    normal = ProximitySettings(pvalue="normal")
    t0 = time.perf_counter()
    res["osmFISH (ClusterName x Region)"] = (
        region_proximity(osm, celltype_key="ClusterName", region_key="Region", key_added=None),
        time.perf_counter() - t0,
        region_proximity(
            osm, celltype_key="ClusterName", region_key="Region", key_added=None, settings=normal
        ),
    )
    demo = make_demo_sections(seed=0)
    t0 = time.perf_counter()
    res["demo, 4 sections (celltype x region)"] = (
        region_proximity(demo, celltype_key="celltype", region_key="region", key_added=None),
        time.perf_counter() - t0,
        region_proximity(
            demo, celltype_key="celltype", region_key="region", key_added=None, settings=normal
        ),
    )
    # calibration: shuffled cell types on the real positions, adjusted vs raw counts
    from scipy.stats import kstest

    calib = {}
    for adjust, pv in ((True, "empirical"), (True, "normal"), (False, "empirical")):
        ps = []
        for rep in range(5):
            b = osm.copy()
            b.obs["shuffled"] = np.random.default_rng(rep).permutation(
                b.obs["ClusterName"].astype(str).to_numpy()
            )
            r = region_proximity(
                b,
                celltype_key="shuffled",
                region_key="Region",
                settings=ProximitySettings(adjust_total=adjust, seed=rep, pvalue=pv),
                key_added=None,
            )
            ps.append(r.table["p_value"].to_numpy())
        p = np.concatenate(ps)
        calib[(adjust, pv)] = dict(
            n=len(p),
            frac05=float((p < 0.05).mean()),
            frac01=float((p < 0.01).mean()),
            frac001=float((p < 0.001).mean()),
            ks=float(kstest(p, "uniform").pvalue),
            median=float(np.median(p)),
        )
    res["calibration"] = calib
    return res


# ----------------------------------------------------------------------------- report
def _pm(a) -> str:
    a = np.asarray(a, float)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def panel_section(results) -> list[str]:
    L = [
        "## Gene panels: cell-type classification accuracy (held-out split, 5-fold CV)",
        "",
        "Mean ± sd over the 5 folds (random: mean over the random panels of their fold "
        "mean ± sd over the panels). 'modules (auto)': the default resolution rule; "
        "'modules (dev)': the resolution chosen on the dev split. Bold: best of the row. "
        "Δ: modules (auto) minus top-HVG, paired over the folds (mean, and folds won / "
        "5). overlap: genes the auto-module panel shares with the HVG panel.",
        "",
        "| data | N | modules (auto) | modules (dev) | top-HVG | random | Δ auto-HVG (won) | overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            means = {
                "auto": row["auto"].mean(),
                "tuned": row["tuned"].mean(),
                "hvg": row["hvg"].mean(),
                "random": row["random"].mean(),
            }
            top = max(means, key=means.get)
            cells = {k: _pm(row[k]) for k in ("auto", "tuned", "hvg", "random")}
            cells[top] = f"**{cells[top]}**"
            d = row["auto"] - row["hvg"]
            L.append(
                f"| {r['name']} | {row['size']} | {cells['auto']} | {cells['tuned']} | "
                f"{cells['hvg']} | {cells['random']} | {d.mean():+.3f} ({int((d > 0).sum())}/5)"
                f" | {row['overlap']}/{row['size']} |"
            )
    L += [
        "",
        "The same comparison with the other common variability ranking (scanpy "
        'flavor="seurat": normalised dispersion of log-normalised data) in place of the '
        "Seurat-v3 standardised variance (the paper's `highly_variable_rank`) for both "
        "the module and the HVG panels (auto rule):",
        "",
        "| data | N | modules (auto, dispersion) | top-HVG (dispersion) | Δ (won) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            d = row["disp_modules"] - row["disp_hvg"]
            L.append(
                f"| {r['name']} | {row['size']} | {_pm(row['disp_modules'])} | "
                f"{_pm(row['disp_hvg'])} | {d.mean():+.3f} ({int((d > 0).sum())}/5) |"
            )
    L += ["", "Per data set:", ""]
    for r in results:
        gm = r["auto_modules"]
        L.append(
            f"- **{r['name']}**: {r['n_cells']} cells ({r['n_test']} held out), "
            f"{r['n_types']} types, {r['n_genes']} genes; FuseMap {r['epochs']} epochs in "
            f"{r['t_train']:.0f} s; auto rule: {gm.n_modules} modules (resolution "
            f"{gm.resolution:g}, sizes {gm.sizes().tolist()}); dev scores "
            + ", ".join(f"{k}: {v:.3f}" for k, v in r["dev_scores"].items())
            + f" -> **{r['best']}**; gene UMAP: 5-NN accuracy of the module labels "
            f"{r['umap'][1]:.2f}; hubs (module: top hub) "
            + ", ".join(f"{k}: {v[0]}" for k, v in list(gm.hubs().items())[:8] if v)
        )
    return L


def proximity_section(timing, real) -> list[str]:
    L = [
        "## Region-specific proximity: speed",
        "",
        f"Defaults (30 um, 1,000 shifts within 100 um), synthetic section, 30 types, 10 "
        f"regions, 1,400 cells / mm2. First call (numba compilation of the pair counter, "
        f"2,000 cells, 4 shifts): {timing[0]['compile_s']:.1f} s; compiled code is cached "
        f"on disk for later processes.",
        "",
        "| cells | threads | seconds | tested rows | significant (q < 0.05) | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for t in timing[1:]:
        L.append(
            f"| {t['n']:,} | {t['threads']} | {t['seconds']:.1f} | {t['rows']} | "
            f"{t['significant']} | {t['load']:.1f} |"
        )
    L += ["", "## Region-specific proximity on real data", ""]
    for name, val in real.items():
        if name == "calibration":
            continue
        res, dt, res_n = val
        t = res.table
        L.append(
            f"- **{name}**: {res.params['n_cells']} cells, {len(res.types)} types, "
            f"{len(res.regions)} regions, {len(t)} tested rows, {int(t['significant'].sum())} "
            f"significant with empirical p (the default; {int(res_n.table['significant'].sum())}"
            f' with pvalue="normal"), {dt:.1f} s. Top pairs (q: empirical / normal):'
        )
        L.append("")
        L.append("  | region | type a | type b | observed | expected | z | q |")
        L.append("  |---|---|---|---|---|---|---|")
        qn = res_n.table.set_index(["region", "type_a", "type_b"])["q_value"]
        for _, row in t.head(8).iterrows():
            q2 = qn.get((row["region"], row["type_a"], row["type_b"]), float("nan"))
            L.append(
                f"  | {row['region']} | {row['type_a']} | {row['type_b']} | {row['observed']} "
                f"| {row['expected']:.1f} | {row['z']:.1f} | {row['q_value']:.3g} / {q2:.3g} |"
            )
        L.append("")
    c = real["calibration"]
    L += [
        "Calibration on osmFISH with shuffled cell types (5 shuffles, real positions and "
        "regions; under this null p should be uniform):",
        "",
        "| statistic | p-value | tests | p < 0.05 | p < 0.01 | p < 0.001 | median p | KS p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        True: "rescaled to the observed close-pair total (default)",
        False: "raw counts (the paper read literally)",
    }
    for (adjust, pv), v in c.items():
        L.append(
            f"| {labels[adjust]} | {pv} | {v['n']} | {v['frac05']:.3f} | {v['frac01']:.4f} | "
            f"{v['frac001']:.4f} | {v['median']:.2f} | {v['ks']:.2g} |"
        )
    return L


def machine_state() -> list[str]:
    import psutil

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = "?"
    return [
        f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} PYTHONPATH=src "
        f"python {' '.join(sys.argv)}`",
        f"- commit: {commit}; machine: {platform.node()} {platform.machine()}, "
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {sys.version.split()[0]}",
        "- shared machine: other engineers' jobs ran at the same time (load average at "
        f"the end {', '.join(f'{x:.1f}' for x in os.getloadavg())} on 2 cores); timings "
        "are from a loaded machine",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--datasets", default="merfish,slideseq,osmfish,demo")
    ap.add_argument("--sizes", default="10,20,50,100")
    ap.add_argument("--random-panels", type=int, default=20)
    ap.add_argument("--max-cells", type=int, default=3000)
    ap.add_argument("--skip-panels", action="store_true")
    ap.add_argument("--skip-proximity", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    t_start = time.time()
    L = ["# Atlas analyses: gene panels and region-specific proximity", ""]
    L += ["Written by `benchmarks/analyses/run.py` (its docstring says how).", ""]
    load0 = os.getloadavg()
    results = []
    if not args.skip_panels:
        for key in args.datasets.split(","):
            name, loader = LOADERS[key]
            print(f"panels: {name}", flush=True)
            sections, cls = loader(Path(args.data))
            r = run_panels(name, sections, cls, args)
            results.append(r)
            from napari_brainatlas.analyses.plots import plot_gene_umap

            plot_gene_umap(r["umap"][0], HERE / f"gene_umap_{key}.png")
            print(panel_section([r])[6:], flush=True)
        L += panel_section(results) + [""]
    if not args.skip_proximity:
        timing = time_proximity(args)
        real = real_proximity(args)
        L += proximity_section(timing, real) + [""]
    L += ["## Run", ""] + machine_state()
    L.append(
        f"- load average at the start {', '.join(f'{x:.1f}' for x in load0)}; "
        f"wall time {time.time() - t_start:.0f} s"
    )
    Path(args.out).write_text("\n".join(L) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
