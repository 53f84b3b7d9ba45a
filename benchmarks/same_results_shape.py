"""Same results before and after the issue-27 split of the long functions, side by side.

Runs every case twice, each in its own subprocess: once with the source tree of the
base commit (a git worktree of main, ``--base``) and once with this tree (``--new``),
then compares every output: arrays and tables equal to 1e-12 (NaN where NaN), strings,
categories, indexes and progress messages exactly.

    git worktree add --detach /tmp/shape-base main
    OMP_NUM_THREADS=1 python benchmarks/same_results_shape.py --base /tmp/shape-base/src

Cases (fixed seeds): ``demo`` (make_demo_sections), ``spacon`` (prepare_arrays through
prepare on the truth-registered demo sections and on arrays, and the deprecated free
train), ``impute`` (impute_genes on a FuseMap / QueryMapping of the demo sections),
``transfer`` (transfer_labels, mlp / knn, flat / nested hierarchy, smoothing, class
weights), ``ahba`` (iter_process_ahba on the AHBA fixture of tests/test_ahba.py: results
and the yielded progress). The FuseMap reference and query mapping are trained once
(with the base tree) and loaded by both sides, so both sides see the same embeddings.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CASES = ("demo", "spacon", "impute", "transfer", "ahba")


# ----------------------------------------------------------------------- workers
def _adata(a) -> dict:
    """An AnnData as plain pieces to compare."""
    X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
    out = {"X": None if X is None else np.asarray(X), "obs": a.obs.copy(), "var": a.var.copy()}
    out.update({f"obsm.{k}": np.asarray(v) for k, v in a.obsm.items()})
    out.update(
        {
            f"layers.{k}": np.asarray(getattr(v, "toarray", lambda v=v: v)())
            for k, v in a.layers.items()
        }
    )
    out["uns"] = dict(a.uns)
    return out


def case_demo(work: Path) -> dict:
    from napari_brainatlas.demo import make_demo_sections

    out = {}
    for seed, n, dens in ((0, 4, 400.0), (3, 6, 120.0), (7, 2, 60.0)):
        for i, s in enumerate(make_demo_sections(seed=seed, n_sections=n, cells_per_mm2=dens)):
            out[f"seed{seed}_n{n}_{i}"] = _adata(s)
    return out


def _spacon_arrays():
    from napari_brainatlas.domains import demo_connectome

    rng = np.random.default_rng(0)
    con = demo_connectome()
    n = 600
    expr = np.log1p(rng.poisson(2.0, (n, 14))).astype(np.float32)
    coords = rng.uniform(0, 3000, (n, 3))
    region = rng.integers(-1, con.n_regions, n)
    hemi = (coords[:, 2] > 1500).astype(np.int64)
    sec = rng.integers(0, 3, n)
    return expr, coords, region, hemi, con, sec


def _data_pieces(d) -> dict:
    return {
        "features": d.features,
        "region": d.region,
        "hemi": d.hemi,
        "coords": d.coords,
        "spatial": [np.asarray(x) for x in vars(d.spatial).values() if hasattr(x, "shape")],
        "connect": [np.asarray(x) for x in vars(d.connect).values() if hasattr(x, "shape")],
        "section_index": d.section_index,
        "sections": list(d.sections),
        "genes": list(d.genes),
        "region_expression": d.region_expression,
        "region_cells": d.region_cells,
        "notes": list(d.notes),
    }


def case_spacon(work: Path) -> dict:
    import torch

    from napari_brainatlas.atlas.demo_atlas import demo_ontology
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.domains import demo_connectome, prepare, prepare_arrays, train

    torch.set_num_threads(1)
    out = {}
    expr, coords, region, hemi, con, sec = _spacon_arrays()
    out["arrays_default"] = _data_pieces(prepare_arrays(expr, coords, region, hemi, con))
    out["arrays_options"] = _data_pieces(
        prepare_arrays(
            expr,
            coords,
            region,
            hemi,
            con,
            sec,
            n_pcs=5,
            k_spatial=5,
            top_k=2,
            per_region=2,
            center_sections=True,
            seed=3,
            genes=[f"g{i}" for i in range(expr.shape[1])],
            sections=["a", "b", "c"],
        )
    )
    out["arrays_no_region"] = _data_pieces(
        prepare_arrays(expr, coords, np.full(len(expr), -1), hemi, con, sec, n_pcs=40)
    )
    secs = []
    for s in make_demo_sections(seed=0, n_sections=3, cells_per_mm2=60):
        s = s.copy()
        s.obs["ccf_id"] = s.obs["ccf_id_true"].to_numpy()
        s.obsm["ccf_coords"] = np.asarray(s.obsm["ccf_coords_true"], float)
        secs.append(s)
    onto = demo_ontology()
    data = prepare(secs, demo_connectome(), onto, n_pcs=12, center_sections=True, seed=1)
    out["prepare_demo"] = _data_pieces(data)
    lines, prog = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = train(
            data,
            epochs=2,
            batch_size=256,
            lr=3e-3,
            hidden=16,
            latent=4,
            heads=1,
            seed=2,
            steps_per_epoch=3,
            progress=lambda e, n, loss: prog.append((e, n, loss)),
            log=lambda line: lines.append(line.split("(")[0]),
            num_threads=1,
        )
    out["train_embed"] = {"zs": model.z_spatial, "zc": model.z_connect}
    out["train_progress"] = prog
    out["train_log"] = lines
    out["train_settings"] = repr(model.settings)
    out["train_history"] = [
        {k: v for k, v in h.items() if "second" not in k and k != "time"} for h in model.history
    ]
    return out


def _fusemap_setup(work: Path):
    """The reference model and query mapping of the demo sections (trained once)."""
    import torch

    from napari_brainatlas.annotate import QueryMapping, map_query
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.fusemap import FuseMap

    torch.set_num_threads(1)
    secs = make_demo_sections(seed=0, n_sections=4, cells_per_mm2=50.0)
    ref, query = secs[:3], secs[3]
    mdir, qdir = work / "fusemap_model", work / "query_mapping"
    if not mdir.exists():
        model = FuseMap(ref, seed=0, n_latent=16, n_hidden=64, disc_hidden=32)
        model.train(epochs=2)
        model.save(mdir)
        map_query(model, [query], epochs=3, seed=0).save(qdir)
    model = FuseMap.load(mdir, sections=ref)
    mapping = QueryMapping.load(qdir, query_sections=[query], reference_sections=ref)
    return model, mapping, ref, query


def case_impute(work: Path) -> dict:
    from napari_brainatlas.annotate import impute_genes

    model, mapping, ref, query = _fusemap_setup(work)
    ref_emb = model.write_embeddings(copy=True)
    genes_q = ["Gad1", "SLC17A7", "Olig2", "Mbp", "Pvalb", "Aqp4", "Snap25"]
    E = mapping.gene_embedding()
    genes_q = [g for g in genes_q if g.upper() in set(E.index)] or list(E.index[:5])
    out = {}
    runs = {
        "q_auto": (mapping, 0, genes_q, {}),
        "q_knn_cell_unif": (
            mapping,
            0,
            genes_q,
            {"method": "knn", "space": "cell", "weights": "uniform", "k": 20},
        ),
        "q_decoder": (mapping, 0, None, {"method": "decoder", "chunk": 500}),
        "q_view_ref": (mapping, 0, genes_q, {"view": "reference", "k": 10}),
        "q_ref_given": (
            mapping,
            0,
            genes_q,
            {"reference": ref_emb, "method": "knn", "view": "reference"},
        ),
        "m_auto_own": (model, 1, genes_q[:4], {}),
        "m_auto_name": (model, model.section_names[2], ",".join(genes_q[:3]), {"space": "cell"}),
        "m_adata": (model, ref_emb[0], genes_q[:3], {"chunk": 100}),
        "E_decoder": (E, ref_emb[1], genes_q, {}),
    }
    for name, (m, sec, genes, kw) in runs.items():
        df = impute_genes(m, sec, genes, **kw)
        out[name] = df
        out[name + ".attrs"] = dict(df.attrs)
    return out


def case_transfer(work: Path) -> dict:
    from napari_brainatlas.annotate import transfer_labels

    model, mapping, ref, query = _fusemap_setup(work)
    ref_emb = model.write_embeddings(copy=True)
    q_emb = mapping.write_embeddings()
    # one reference section without region labels, one with an empty value
    ref_emb[1].obs = ref_emb[1].obs.drop(columns=["region"])
    q_emb2 = [q_emb[0], ref_emb[2].copy()]
    q_emb2[1].obsm["X_fusemap_cell"][:5] = np.nan
    runs = {
        "mlp_default": (q_emb, {"max_epochs": 8}),
        "knn_flat": (q_emb2, {"method": "knn", "knn_k": 9, "labels": "celltype,region"}),
        "mlp_nested": (
            q_emb,
            {"labels": ["celltype"], "hierarchy_mode": "nested", "max_epochs": 5, "seed": 3},
        ),
        "knn_nested": (
            q_emb2,
            {"labels": ["celltype"], "hierarchy_mode": "nested", "method": "knn"},
        ),
        "no_hier_unsmoothed": (
            q_emb,
            {"hierarchy": {}, "smooth_regions": False, "max_epochs": 4, "class_balance": "none"},
        ),
        "balance_dict_smooth_k": (
            q_emb2,
            {
                "class_balance": {"celltype": "balanced", "region": "sqrt"},
                "smooth_k": 7,
                "max_epochs": 4,
                "labels": ("region", "celltype", "celltype_main"),
            },
        ),
        "embedding_swap": (
            q_emb,
            {
                "embedding": {"celltype": "X_fusemap_tissue"},
                "method": "knn",
                "labels": ["celltype"],
            },
        ),
    }
    out = {}
    for name, (qry, kw) in runs.items():
        prog = []
        res = transfer_labels(ref_emb, qry, progress=lambda *a, prog=prog: prog.append(a), **kw)
        for i, a in enumerate(res):
            out[f"{name}.{i}.obs"] = a.obs
            out[f"{name}.{i}.uns"] = a.uns["label_transfer"]
        out[f"{name}.progress"] = prog
    # cancel before the first label: nothing is written
    res = transfer_labels(ref_emb, q_emb, cancel=lambda: True)
    out["cancelled"] = res[0].obs
    return out


def case_ahba(work: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.test_ahba import make_ahba_fixture

    from napari_brainatlas.ahba.pipeline import iter_process_ahba

    root = work / "ahba"  # written once; both sides read the same files
    if not (root / "corrected.csv").exists():
        make_ahba_fixture(root)
    donors = root / "donors"
    fx = {
        "donors": donors,
        "donor_a": donors / "normalized_microarray_donorA",
        "donor_b": donors / "normalized_microarray_donorB",
        "atlas": root / "atlas.nii.gz",
        "atlas_info": root / "atlas.csv",
        "reannotated": root / "reannotated.csv.gz",
        "corrected": root / "corrected.csv",
    }
    runs = {
        "two_donors": ([fx["donors"]], {"corrected_mni": fx["corrected"]}),
        "no_corrected": ([fx["donor_a"], fx["donor_b"]], {}),
        "one_donor": ([fx["donor_a"]], {"corrected_mni": fx["corrected"]}),
        "all_samples_norm": ([fx["donors"]], {"norm_matched": False, "tolerance": 0.5}),
        "ibf_tol": (
            [fx["donors"]],
            {"ibf_threshold": 0.9, "tolerance": 3.5, "corrected_mni": fx["corrected"]},
        ),
        "same_names": ([fx["donor_a"], fx["donor_a"]], {}),
        "tolerance_0": ([fx["donors"]], {"tolerance": 0.0}),
        "no_donor": ([], {}),
    }
    out = {}
    for name, (donors, kw) in runs.items():
        gen = iter_process_ahba(
            donors, fx["atlas"], fx["reannotated"], atlas_info=fx["atlas_info"], **kw
        )
        steps = []
        while True:
            try:
                steps.append(next(gen))
            except StopIteration as stop:
                res = stop.value
                break
            except Exception as exc:  # noqa: BLE001 - the same error on both sides
                res = None
                steps.append(("error", f"{type(exc).__name__}: {exc}"))
                break
        out[f"{name}.progress"] = steps
        if res is None:
            continue
        out[f"{name}.expression"] = res.expression
        out[f"{name}.report"] = res.report
        out[f"{name}.counts"] = res.counts
        out[f"{name}.probes"] = res.probes
        out[f"{name}.donors"] = res.donors
        out[f"{name}.samples"] = _adata(res.samples)
    return out


def worker(case: str, work: Path, dest: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import napari_brainatlas

    result = globals()[f"case_{case}"](work)
    with open(dest, "wb") as fh:
        pickle.dump({"source": napari_brainatlas.__file__, "result": result}, fh)


# ----------------------------------------------------------------------- comparing
def _diff(a, b, path: str, tol: float, out: list) -> None:
    if isinstance(a, pd.DataFrame) or isinstance(a, pd.Series):
        if type(a) is not type(b):
            out.append(f"{path}: type {type(a).__name__} != {type(b).__name__}")
            return
        if not a.index.equals(b.index):
            out.append(f"{path}: index differs")
        if isinstance(a, pd.DataFrame):
            if not a.columns.equals(b.columns) or list(a.dtypes) != list(b.dtypes):
                out.append(f"{path}: columns/dtypes differ")
                return
            for c in a.columns:
                _diff(a[c], b[c], f"{path}[{c}]", tol, out)
            if a.attrs != b.attrs:
                out.append(f"{path}: attrs {a.attrs} != {b.attrs}")
            return
        if a.dtype != b.dtype:
            out.append(f"{path}: dtype {a.dtype} != {b.dtype}")
            return
        if isinstance(a.dtype, pd.CategoricalDtype):
            if list(a.cat.categories) != list(b.cat.categories) or not a.equals(b):
                out.append(f"{path}: categorical differs")
            return
        _diff(a.to_numpy(), b.to_numpy(), path, tol, out)
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            out.append(f"{path}: shape/dtype {a.shape} {a.dtype} != {b.shape} {b.dtype}")
        elif a.dtype.kind in "fc":
            same_nan = np.array_equal(np.isnan(a), np.isnan(b))
            fin = np.isfinite(a)
            err = float(np.max(np.abs(a[fin] - b[fin]))) if fin.any() else 0.0
            if not same_nan or err > tol:
                out.append(f"{path}: max |diff| {err:.3g}, NaN same: {same_nan}")
        elif not np.array_equal(a, b):
            out.append(f"{path}: values differ")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            out.append(f"{path}: keys {list(a)} != {list(b)}")
            return
        for k in a:
            _diff(a[k], b[k], f"{path}.{k}", tol, out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", tol, out)
        return
    if isinstance(a, float) and isinstance(b, float):
        if not (a == b or (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol):
            out.append(f"{path}: {a!r} != {b!r}")
        return
    if type(a) is not type(b) or a != b:
        out.append(f"{path}: {a!r} != {b!r}")


def _count(x) -> int:
    if isinstance(x, dict):
        return sum(_count(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_count(v) for v in x) or 1
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="/tmp/shape-base/src", help="src of the base tree")
    ap.add_argument("--new", default=str(REPO / "src"), help="src of the changed tree")
    ap.add_argument("--case", action="append", choices=CASES, help="default: all")
    ap.add_argument("--work", default=None, help="folder for the shared trained models")
    ap.add_argument("--tol", type=float, default=1e-12)
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "WORK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="same_results_shape_"))
    failed = 0
    for case in args.case or CASES:
        results = {}
        for side, src in (("base", args.base), ("new", args.new)):
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
            dest = work / f"{case}_{side}.pkl"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                case,
                str(work),
                str(dest),
            ]
            subprocess.run(cmd, env=env, check=True, cwd=str(REPO))
            with open(dest, "rb") as fh:
                got = pickle.load(fh)
            results[side] = got["result"]
            print(f"{case} {side}: {got['source']}", flush=True)
        diffs: list[str] = []
        _diff(results["base"], results["new"], case, args.tol, diffs)
        n = _count(results["base"])
        status = "IDENTICAL" if not diffs else f"DIFFERENT ({len(diffs)})"
        print(f"{case}: {status} - {n} outputs compared (tol {args.tol:g})", flush=True)
        for d in diffs[:20]:
            print("   ", d)
        failed += bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
