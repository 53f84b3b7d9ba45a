"""FuseMap embedding benchmark: integration quality vs PCA + Harmony, throughput, memory.

    PYTHONPATH=src python benchmarks/embedding/run.py [--quick] [--epochs N] [--threads T]

(a) the demo sections (napari_brainatlas.demo), (b) semi-real sets built from real
expression: osmFISH (Codeluppi 2018, 6,471 cells x 33 genes, labels ClusterName and
Region) and MERFISH hypothalamus (Moffitt 2018, 750 cells x 134 genes; labels: Leiden
clusters of the unsplit data, as it ships without labels), each split at random into
sections with partly overlapping gene panels and added batch effects (per-section
per-gene gain ~ lognormal(0, 0.4) and depth factor, Poisson resampled counts).
Baseline: PCA (30 comps) on the shared genes + Harmony (harmonypy) over sections.
Throughput / peak memory: synthetic sections at 10k, 100k, 1M cells on CPU, each in
its own process (training steps timed; peak RSS from getrusage).
Writes benchmarks/embedding/RESULTS_embedding.md and prints the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
DATA = ROOT.parent / "shared" / "data"

from metrics import all_metrics


# ----------------------------------------------------------------------------- data
def split_semi_real(adata, n_sections, n_shared, label_cols, seed=0, gain_sd=0.4):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    genes = np.asarray(adata.var_names)
    order = rng.permutation(len(genes))
    shared, rest = order[:n_shared], order[n_shared:]
    part = rng.integers(0, n_sections, adata.n_obs)
    out = []
    for v in range(n_sections):
        own = rng.choice(rest, size=len(rest) // 2, replace=False)
        panel = np.sort(np.concatenate([shared, own]))
        cells = np.flatnonzero(part == v)
        gain = np.exp(rng.normal(0, gain_sd, len(panel))) * rng.uniform(0.6, 1.4)
        counts = rng.poisson(X[np.ix_(cells, panel)] * gain[None, :]).astype(np.float32)
        obs = pd.DataFrame(
            {c: adata.obs[c].astype(str).to_numpy()[cells] for c in label_cols},
            index=adata.obs_names[cells],
        )
        obs["section"] = f"sec{v}"
        a = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes[panel]))
        a.layers["counts"] = counts.copy()
        a.obsm["spatial"] = np.asarray(adata.obsm["spatial"])[cells]
        out.append(a)
    return out


def load_sets(quick):
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.io import read_sections

    sets = {}
    demo = make_demo_sections(seed=0, cells_per_mm2=100.0 if quick else 250.0)
    sets["demo"] = dict(sections=demo, cell_label="celltype", tissue_label="region")
    loom = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"
    if loom.exists():
        a = read_sections(loom)[0]
        secs = split_semi_real(a, 3, 15, ["ClusterName", "Region"], seed=1)
        sets["osmFISH"] = dict(
            sections=secs, cell_label="ClusterName", tissue_label="Region", exclude="Excluded"
        )
    mer = DATA / "spacexr_merfish_hypothalamus" / "query_merfish"
    if mer.exists():
        from sklearn.decomposition import PCA

        from napari_brainatlas.fusemap import leiden_labels
        from napari_brainatlas.fusemap._preprocess import normalize_log_scale

        a = read_sections(mer)[0]
        Xn = normalize_log_scale(a.layers["counts"])
        Xn = Xn.toarray() if hasattr(Xn, "toarray") else Xn
        pcs = PCA(30, random_state=0).fit_transform(Xn)
        b_labels = leiden_labels(pcs, resolution=0.5, seed=0)
        a.obs["leiden_unsplit"] = [f"L{c}" for c in b_labels]
        secs = split_semi_real(a, 2, 40, ["leiden_unsplit"], seed=2)
        sets["MERFISH"] = dict(sections=secs, cell_label="leiden_unsplit", tissue_label=None)
    return sets


# ------------------------------------------------------------------------- methods
def harmony_baseline(sections, seed=0):
    import anndata as ad
    import harmonypy
    import pandas as pd
    import scanpy as sc

    shared = set(g.upper() for g in sections[0].var_names)
    for a in sections[1:]:
        shared &= set(g.upper() for g in a.var_names)
    shared = sorted(shared)
    parts = []
    for i, a in enumerate(sections):
        b = a.copy()
        b.var_names = [g.upper() for g in b.var_names]
        b = b[:, shared].copy()
        b.X = (b.layers["counts"] if "counts" in b.layers else b.X).copy()
        b.obs = pd.DataFrame({"batch": str(i)}, index=[f"{i}_{n}" for n in b.obs_names])
        parts.append(b)
    c = ad.concat(parts)
    keep = np.asarray(c.X.sum(1)).ravel() > 0
    sc.pp.normalize_total(c)
    sc.pp.log1p(c)
    sc.pp.scale(c, max_value=10)
    n_comp = int(min(30, len(shared) - 1, c.n_obs - 1))
    sc.pp.pca(c, n_comps=n_comp, random_state=seed)
    pcs = c.obsm["X_pca"]
    ho = harmonypy.run_harmony(pcs, c.obs, "batch", random_state=seed, verbose=False)
    Z = np.asarray(ho.Z_corr)
    if Z.shape[0] != len(pcs):
        Z = Z.T
    sizes = [a.n_obs for a in sections]
    return (
        np.split(Z, np.cumsum(sizes)[:-1]),
        np.split(pcs, np.cumsum(sizes)[:-1]),
        len(shared),
        keep,
    )


def evaluate(name, emb_list, sections, label, exclude=None):
    Z = np.concatenate(emb_list)
    b = np.concatenate([np.full(len(e), i) for i, e in enumerate(emb_list)])
    L = np.concatenate([a.obs[label].astype(str).to_numpy() for a in sections])
    ok = np.isfinite(Z).all(1)
    if exclude is not None:
        ok &= L != exclude
    return all_metrics(Z[ok], b[ok], L[ok])


def run_quality(sets, epochs, seed, log):
    from napari_brainatlas.fusemap import FuseMap, spatial_graph

    rows = []
    for key, s in sets.items():
        secs = s["sections"]
        n = sum(a.n_obs for a in secs)
        t0 = time.time()
        m = FuseMap([a.copy() for a in secs], seed=seed)
        z0 = m.get_latent_representation("cell")
        m._latent_cache.clear()
        m.train(max_epochs=epochs)
        t_fm = time.time() - t0
        zc = m.get_latent_representation("cell")
        zt = m.get_latent_representation("tissue")
        h0 = m.history[0]
        h1 = m.history[-1]
        t0 = time.time()
        harm, pcs, n_shared, _ = harmony_baseline(secs, seed)
        t_h = time.time() - t0
        lab, ex = s["cell_label"], s.get("exclude")
        res = {
            "FuseMap z_C": evaluate(key, zc, secs, lab, ex),
            "FuseMap untrained": evaluate(key, z0, secs, lab, ex),
            "PCA shared genes": evaluate(key, pcs, secs, lab, ex),
            "PCA + Harmony": evaluate(key, harm, secs, lab, ex),
        }
        tissue = {}
        if s.get("tissue_label"):
            tl = s["tissue_label"]
            A = [spatial_graph(np.asarray(a.obsm["spatial"])) for a in secs]
            harm_s = [np.asarray(Ai @ h) for Ai, h in zip(A, harm)]
            tissue = {
                "FuseMap z_T": evaluate(key, zt, secs, tl, ex),
                "PCA + Harmony": evaluate(key, harm, secs, tl, ex),
                "PCA + Harmony, A-smoothed": evaluate(key, harm_s, secs, tl, ex),
            }
        row = dict(
            set=key,
            n_cells=n,
            n_sections=len(secs),
            n_genes=len(m.module.genes),
            n_shared=n_shared,
            epochs_run=len(m.history),
            fusemap_s=t_fm,
            harmony_s=t_h,
            steps=sum(int(h.get("steps", 0)) for h in m.history),
            min_steps=m.config.get("min_steps", 0),
            recon_first=h0["recon"],
            recon_last=h1["recon"],
            val_first=h0["val_loss"],
            val_last=h1["val_loss"],
            cell=res,
            tissue=tissue,
            cell_label=lab,
            tissue_label=s.get("tissue_label"),
        )
        rows.append(row)
        log(
            f"[{key}] {n} cells, {len(secs)} sections, {n_shared} shared of "
            f"{len(m.module.genes)} genes; FuseMap {t_fm:.0f}s ({len(m.history)} epochs, "
            f"recon {h0['recon']:.3f} -> {h1['recon']:.3f}), Harmony {t_h:.1f}s"
        )
        for meth, r in res.items():
            log(f"   cell/{lab:14s} {meth:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
        for meth, r in tissue.items():
            log(
                f"   tissue/{s['tissue_label']:12s} {meth:28s} "
                + "  ".join(f"{k} {v:.3f}" for k, v in r.items())
            )
    return rows


# ------------------------------------------------------------------------- scaling
def _peak_rss_mb():
    """Peak RSS of this process since exec (VmHWM; ru_maxrss would include the parent's
    peak inherited through fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_child(n_cells, steps, threads, seed):
    import torch

    torch.set_num_threads(threads)
    from napari_brainatlas.fusemap import FuseMap, make_synthetic_sections

    rss0 = _peak_rss_mb()
    t = time.time()
    secs = make_synthetic_sections(
        n_sections=4,
        n_cells=n_cells // 4,
        n_genes=100,
        n_shared=50,
        sparse=True,
        seed=seed,
        depth=100.0,
    )
    t_gen = time.time() - t
    t = time.time()
    m = FuseMap(secs, seed=seed)
    t_setup = time.time() - t
    del secs
    count = {"n": 0}
    marks = {}

    def cancel():
        count["n"] += 1
        if count["n"] == 3:  # skip warm-up steps
            marks["t0"] = time.time()
        return count["n"] > steps + 2

    m.train(max_epochs=1, cancel=cancel)
    dt = time.time() - marks["t0"]
    seeds_per_step = sum(min(m.config["batch_size"], len(sd.train_idx)) for sd in m.data)
    cps = steps * seeds_per_step / dt
    n_train = sum(len(sd.train_idx) for sd in m.data)
    rss = _peak_rss_mb()
    print(
        json.dumps(
            dict(
                n_cells=n_cells,
                steps=steps,
                sec_per_step=dt / steps,
                cells_per_s=cps,
                epoch_s_est=n_train / cps,
                setup_s=t_setup,
                gen_s=t_gen,
                peak_rss_mb=rss,
                base_rss_mb=rss0,
            )
        )
    )


def run_scaling(sizes, steps, threads, seed, log):
    rows = []
    for n in sizes:
        cmd = [
            sys.executable,
            str(Path(__file__)),
            "--scale-child",
            str(n),
            "--steps",
            str(steps),
            "--threads",
            str(threads),
            "--seed",
            str(seed),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
        t = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            log(f"[scale {n}] failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["wall_s"] = time.time() - t
        rows.append(r)
        log(
            f"[scale] {n:>8d} cells: {r['cells_per_s']:.0f} cells/s (est. epoch "
            f"{r['epoch_s_est']:.0f}s), setup {r['setup_s']:.1f}s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB"
        )
    return rows


# ------------------------------------------------------------------------- report
def write_report(path, cmd, quality, scaling, args, total_s):
    old = Path(path).read_text() if Path(path).exists() else ""
    if not quality and "## Throughput" in old and "## " in old.split("## Throughput")[0]:
        # --skip-quality: keep the quality sections of the last full run, replace the rest
        head = old.split("## Throughput")[0].rstrip() + "\n\n"
        L = [head.rstrip("\n")]
        _scaling_section(L, scaling, cmd)
        Path(path).write_text("\n".join(L) + "\n")
        return
    L = [
        "# FuseMap embedding benchmark",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: CPU only, {os.cpu_count()} cores, torch threads {args.threads}; total "
        f"{total_s / 60:.1f} min. Shared machine: wall times include load from other jobs.",
        "",
        "Metrics (see benchmarks/embedding/metrics.py): iLISI (kNN-30, rescaled 0-1) and "
        "batch ASW = section mixing (higher = better mixed); label ASW and cross-section kNN "
        "accuracy = label conservation (higher = better).",
        "",
    ]
    for r in quality:
        L += [
            f"## {r['set']}: {r['n_cells']} cells, {r['n_sections']} sections, "
            f"{r['n_shared']} shared of {r['n_genes']} genes",
            "",
            f"FuseMap: {r['epochs_run']} epochs ({r['steps']} steps, min_steps "
            f"{r['min_steps']}) in {r['fusemap_s']:.0f} s, train recon MSE "
            f"{r['recon_first']:.3f} -> {r['recon_last']:.3f}, val loss {r['val_first']:.3f} "
            f"-> {r['val_last']:.3f}; PCA + Harmony {r['harmony_s']:.1f} s.",
            "",
            f"Cell embedding vs `{r['cell_label']}`:",
            "",
            "| method | iLISI | batch ASW | label ASW | cross-section kNN acc |",
            "|---|---|---|---|---|",
        ]
        for meth, m in r["cell"].items():
            L.append(
                f"| {meth} | {m['iLISI']:.3f} | {m['batch_ASW']:.3f} | "
                f"{m['label_ASW']:.3f} | {m['cross_kNN_acc']:.3f} |"
            )
        if r["tissue"]:
            L += [
                "",
                f"Tissue embedding vs `{r['tissue_label']}`:",
                "",
                "| method | iLISI | batch ASW | label ASW | cross-section kNN acc |",
                "|---|---|---|---|---|",
            ]
            for meth, m in r["tissue"].items():
                L.append(
                    f"| {meth} | {m['iLISI']:.3f} | {m['batch_ASW']:.3f} | "
                    f"{m['label_ASW']:.3f} | {m['cross_kNN_acc']:.3f} |"
                )
        fm, hm = r["cell"]["FuseMap z_C"], r["cell"]["PCA + Harmony"]
        mix = fm["iLISI"] > hm["iLISI"]
        lab = fm["cross_kNN_acc"] > hm["cross_kNN_acc"]
        L += [
            "",
            f"Target (FuseMap z_C beats PCA + Harmony): mixing (iLISI) "
            f"{'met' if mix else 'MISSED'}, label conservation (cross-section kNN acc) "
            f"{'met' if lab else 'MISSED'}.",
            "",
        ]
    if not scaling and "## Throughput" in old:
        # --skip-scale: keep the throughput section of the last run that measured it
        L += ["", "## Throughput" + old.split("## Throughput", 1)[1].rstrip("\n")]
    _scaling_section(L, scaling, cmd)
    Path(path).write_text("\n".join(L) + "\n")


def _scaling_section(L, scaling, cmd):
    if scaling:
        L += [
            "",
            "## Throughput and memory (synthetic, 4 sections, 100 genes/section, CPU)",
            "",
            f"Command: `{cmd}`",
            "",
            "Peak RSS is VmHWM of a fresh process per size (imports included: "
            "'after imports' column); throughput = seed cells trained per second "
            f"over {scaling[0]['steps']} timed steps (after 2 warm-up steps).",
            "",
            "| cells | s/step | seed cells/s | est. epoch (s) | setup (s) | "
            "after imports (MB) | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in scaling:
            L.append(
                f"| {s['n_cells']:,} | {s['sec_per_step']:.3f} | {s['cells_per_s']:.0f} | "
                f"{s['epoch_s_est']:.0f} | {s['setup_s']:.1f} | {s['base_rss_mb']:.0f} | "
                f"{s['peak_rss_mb']:.0f} |"
            )
        if len(scaling) >= 2:
            a, b = scaling[0], scaling[-1]
            slope = (b["peak_rss_mb"] - a["peak_rss_mb"]) / max(b["n_cells"] - a["n_cells"], 1)
            L += [
                "",
                f"Memory slope between {a['n_cells']:,} and {b['n_cells']:,} cells: "
                f"{slope * 1e3:.2f} MB per 1,000 cells; per-step cost is constant in the "
                "section size (2-hop subgraph of 64 seeds per section).",
            ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller demo, fewer epochs (<15 min)")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs per phase")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per scale")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS_embedding.md"))
    ap.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scale_child:
        scale_child(args.scale_child, args.steps, args.threads, args.seed)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    epochs = args.epochs or (8 if args.quick else 15)
    cmd = "PYTHONPATH=src python benchmarks/embedding/run.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    t0 = time.time()
    quality = []
    if not args.skip_quality:
        quality = run_quality(load_sets(args.quick), epochs, args.seed, print)
    scaling = []
    if not args.skip_scale:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        scaling = run_scaling(sizes, args.steps, args.threads, args.seed, print)
    total = time.time() - t0
    write_report(args.out, cmd.strip(), quality, scaling, args, total)
    print(f"wrote {args.out}; total {total / 60:.1f} min; reproduce with: {cmd.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
