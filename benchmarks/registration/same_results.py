"""Same results before and after a change of the registration code, side by side.

Registers a fixed list of sections with two source trees (each in its own process, so
both can be imported as ``napari_brainatlas``) and compares the records: affines,
positions, angles, warps, confidence, metrics, notes, the ICP cost history and the
progress calls, to ``--tol`` (default 1e-9, relative to the size of each value).

The sections: the benchmark's generator (``run.py``: exact and hard sets, a few seeds
and cases; hard sections also with the quick search, the thin-plate finish and at the
given plane), the demo sections on the demo atlas (given plane, plane search, no
midline, position scan, no labels), and the real CCFv3 50 um cases of the tests. Only
the public API is used (``register_section`` with its keyword options), so any two
trees since the settings refactor (and the commit before it) can be compared. It also
compares the default tuning settings: the module constants of the old tree against the
fields of ``RegistrationSettings`` in the new one (read only; nothing is set).

Usage, from the repository root (``--base``: another checkout, e.g. a git worktree)::

    PYTHONPATH=src python benchmarks/registration/same_results.py --base ../reg-base
    PYTHONPATH=src python benchmarks/registration/same_results.py --base ../reg-base --quick

``--data`` names the shared data folder (default ``../shared/data``, else
``/work/shared/data``). Exit status 0 when every record agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def default_data() -> Path:
    for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (p / "ccfv3_annotation").exists():
            return p
    return ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------- the cases
def case_list(quick: bool) -> list[dict]:
    """(name, what to cut, register_section keywords) of every comparison case."""
    out = []
    # the benchmark's generator (run.py)
    exact_idx = range(0, 40, 4) if quick else range(40)
    for i in exact_idx:
        out.append({"name": f"exact_s0_{i}", "set": "exact", "seed": 0, "i": i, "kw": {}})
    for i in range(0, 40, 8) if quick else range(0, 40, 5):
        out.append(
            {
                "name": f"exact_s0_{i}_area",
                "set": "exact",
                "seed": 0,
                "i": i,
                "kw": {"area_refine": True},
            }
        )
    hard = {0: range(0, 40, 5) if quick else range(40), 1: range(0, 40, 10), 2: range(3, 40, 10)}
    for seed, idx in hard.items():
        for i in idx:
            out.append(
                {
                    "name": f"hard_s{seed}_{i}",
                    "set": "hard",
                    "seed": seed,
                    "i": i,
                    "kw": {"refine_position": True},
                }
            )
    for i in range(1, 40, 8) if quick else range(1, 40, 4):
        for tag, kw in (
            ("quick", {"refine_position": True, "plane_search": "quick"}),
            ("tps", {"refine_position": True, "nonlinear": True}),
            ("given", {}),
            ("nowarp", {"refine_position": True, "label_warp": False}),
        ):
            out.append({"name": f"hard_s0_{i}_{tag}", "set": "hard", "seed": 0, "i": i, "kw": kw})
    # demo sections on the demo atlas
    for k in range(6):
        for tag, kw in (
            ("given", {}),
            ("search", {"refine_position": True}),
            ("nomid", {"midline": None, "hemisphere": "both"}),
            ("nolabels", {"region_key": None, "refine_position": True}),
            ("quick", {"refine_position": True, "plane_search": "quick"}),
        ):
            if quick and k % 2:
                continue
            out.append({"name": f"demo_{k}_{tag}", "set": "demo", "i": k, "kw": kw})
    out.append({"name": "demo_0_auto", "set": "demo", "i": 0, "kw": {"position_um": "auto"}})
    out.append(
        {
            "name": "demo_1_nomid_search",
            "set": "demo",
            "i": 1,
            "kw": {"midline": None, "hemisphere": "both", "refine_position": True},
        }
    )
    # the real CCFv3 50 um cases of the tests
    ccf = [
        (
            "tilted",
            dict(
                plane="coronal",
                position_um=7000.0,
                hemisphere="both",
                n_cells=30000,
                angles_deg=(3.0, -2.0),
                rotation_deg=37.0,
                scale=1.3,
                warp_um=40.0,
                seed=2,
            ),
            {"position_um": 7120.0},
        ),
        (
            "tilted_search",
            dict(
                plane="coronal",
                position_um=7000.0,
                hemisphere="both",
                n_cells=30000,
                angles_deg=(3.0, -2.0),
                rotation_deg=37.0,
                scale=1.3,
                warp_um=40.0,
                seed=2,
            ),
            {"position_um": 7120.0, "refine_position": True},
        ),
        (
            "torn",
            dict(
                plane="coronal",
                position_um=7000.0,
                hemisphere="both",
                n_cells=20000,
                rotation_deg=50.0,
                tear_fraction=0.15,
                seed=1,
            ),
            {},
        ),
        (
            "torn_wrong_pos",
            dict(
                plane="coronal",
                position_um=7000.0,
                hemisphere="both",
                n_cells=20000,
                rotation_deg=50.0,
                tear_fraction=0.15,
                seed=1,
            ),
            {"position_um": 3000.0},
        ),
        (
            "far_lateral",
            dict(
                plane="sagittal",
                position_um=10300.0,
                n_cells=30000,
                angles_deg=(0.5, 1.5),
                rotation_deg=60.0,
                scale=1.2,
                warp_um=30.0,
                tear_fraction=0.05,
                seed=7,
            ),
            {"position_um": 10400.0},
        ),
        (
            "far_lateral_search",
            dict(
                plane="sagittal",
                position_um=10300.0,
                n_cells=30000,
                angles_deg=(0.5, 1.5),
                rotation_deg=60.0,
                scale=1.2,
                warp_um=30.0,
                tear_fraction=0.05,
                seed=7,
            ),
            {"position_um": 10400.0, "refine_position": True},
        ),
        (
            "sagittal_search",
            dict(
                plane="sagittal",
                position_um=3600.0,
                n_cells=12000,
                angles_deg=(1.2, -0.8),
                rotation_deg=140.0,
                scale=1.2,
                warp_um=30.0,
                seed=9,
            ),
            {"position_um": 3700.0, "refine_position": True},
        ),
        (
            "edge_search",
            dict(
                plane="sagittal",
                position_um=10600.0,
                n_cells=8000,
                angles_deg=(-1.0, 2.0),
                rotation_deg=20.0,
                scale=1.4,
                seed=3,
            ),
            {"position_um": 10750.0, "refine_position": True},
        ),
        (
            "hemi_search",
            dict(
                plane="coronal",
                position_um=6000.0,
                hemisphere="left",
                n_cells=8000,
                angles_deg=(2.0, 0.5),
                rotation_deg=25.0,
                scale=1.1,
                seed=4,
            ),
            {"position_um": 6080.0, "refine_position": True},
        ),
        (
            "hemi_quick",
            dict(
                plane="coronal",
                position_um=5000.0,
                hemisphere="right",
                n_cells=12000,
                angles_deg=(-2.0, 1.0),
                rotation_deg=-70.0,
                scale=0.9,
                mirror=True,
                seed=6,
            ),
            {"position_um": 5100.0, "refine_position": True, "plane_search": "quick"},
        ),
        (
            "landmarks",
            dict(
                plane="coronal",
                position_um=6000.0,
                hemisphere="both",
                n_cells=20000,
                rotation_deg=20.0,
                seed=4,
            ),
            {"landmarks": "truth3"},
        ),
        (
            "nolabels_search",
            dict(
                plane="coronal",
                position_um=8000.0,
                hemisphere="both",
                n_cells=10000,
                angles_deg=(1.0, 0.0),
                rotation_deg=15.0,
                seed=5,
            ),
            {"position_um": 8100.0, "refine_position": True, "region_key": None},
        ),
        (
            "sweep_always",
            dict(
                plane="coronal",
                position_um=4500.0,
                hemisphere="left",
                n_cells=8000,
                rotation_deg=110.0,
                tear_fraction=0.1,
                seed=8,
            ),
            {"sweep": "always"},
        ),
        (
            "auto_position",
            dict(
                plane="coronal",
                position_um=5500.0,
                hemisphere="both",
                n_cells=8000,
                rotation_deg=-30.0,
                seed=10,
            ),
            {"position_um": "auto"},
        ),
    ]
    for name, cut, kw in ccf if not quick else ccf[::2]:
        out.append({"name": f"ccf50_{name}", "set": "ccf50", "cut": cut, "kw": kw})
    return out


# ---------------------------------------------------------------------- worker
def _section(case, atlases, gen):
    from napari_brainatlas.register import sample_section

    if case["set"] in ("exact", "hard"):
        hard = case["set"] == "hard"
        key = (hard, case["seed"])
        if key not in gen["cases"]:
            gen["cases"][key] = gen["make_cases"](40, hard, case["seed"], 200000)
        c = gen["cases"][key][case["i"]]
        a = sample_section(atlases["ccf25"], name=f"{case['set']}{case['i']}", **c["sample"])
        gen["scramble_labels"](a, 0.10, seed=case["i"])
        return a, atlases["ccf25"], c["given_position_um"]
    if case["set"] == "demo":
        a = gen["demo_sections"][case["i"]]
        return a, atlases["demo"], float(a.uns["demo_truth"]["position_um"])
    cut = dict(case["cut"])
    a = sample_section(atlases["ccf50"], **cut)
    return a, atlases["ccf50"], float(cut["position_um"])


def _record(res) -> dict:
    d = res.to_dict()
    return d


def worker(out_path: str, quick: bool, data: Path) -> int:
    import napari_brainatlas  # first: the tree on PYTHONPATH, not the one run.py would add

    sys.path.insert(0, str(HERE))
    import run as B  # the benchmark's generator (this tree's copy; the same code in both)

    from napari_brainatlas.atlas import Atlas, make_demo_atlas
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.register import register_section
    from napari_brainatlas.register import slices as _slices

    onto = data / "ccfv3_ontology" / "structure_tree_safe_2017.csv"
    atlases = {
        "ccf25": Atlas.load(data / "ccfv3_annotation" / "annotation_25.nrrd", ontology=onto),
        "ccf50": Atlas.load(data / "ccfv3_annotation" / "annotation_50.nrrd", ontology=onto),
        "demo": make_demo_atlas(),
    }
    gen = {
        "make_cases": B.make_cases,
        "scramble_labels": B.scramble_labels,
        "cases": {},
        "demo_sections": make_demo_sections(seed=0, n_sections=6, atlas=atlas_demo(atlases)),
    }
    out = {"package": napari_brainatlas.__file__, "settings": default_settings(), "cases": {}}
    print(f"package: {napari_brainatlas.__file__}", flush=True)
    t_all = time.perf_counter()
    for case in case_list(quick):
        a, atlas, given = _section(case, atlases, gen)
        tr = a.uns["demo_truth"]
        kw = {
            "plane": tr["plane"],
            "position_um": given,
            "hemisphere": tr["hemisphere"],
            "midline": tr["midline"],
        }
        kw.update(case["kw"])
        if kw.get("landmarks") == "truth3":
            A = np.asarray(tr["affine"])
            src = a.obsm["spatial"][:3]
            kw["landmarks"] = np.column_stack([src, src @ A[:2, :2].T + A[:2, 2]])
        seen = []
        _slices._CACHE.clear()
        t = time.perf_counter()
        try:
            res = register_section(
                a, atlas, progress=lambda i, c: seen.append([int(i), float(c)]), **kw
            )
            rec = {"result": _record(res), "progress": seen}
        except Exception as exc:  # noqa: BLE001 - a refusal is a result to compare too
            rec = {"error": f"{type(exc).__name__}: {exc}"}
        rec["time_s"] = time.perf_counter() - t
        out["cases"][case["name"]] = rec
        print(f"{case['name']:28s} {rec['time_s']:6.2f} s", flush=True)
    out["total_s"] = time.perf_counter() - t_all
    Path(out_path).write_text(json.dumps(out, default=float))
    return 0


def atlas_demo(atlases):
    return atlases["demo"]


#: old module constant -> the field of RegistrationSettings that replaced it
SETTING_FIELDS = {
    "api.PLANE_OUTLINE_WEIGHT": "labels.score_outline_weight",
    "api.REVERSE_WEIGHT": "labels.reverse_weight",
    "api.SPREAD_HALF_UM": "confidence.spread_half_um",
    "api.SEARCH_CELLS": "search.cells",
    "api.COARSE_FACTOR": "search.coarse_factor",
    "api.COARSE_CELLS": "search.coarse_cells",
    "api.REFINE_TOP": "search.refine_top",
    "api.FINE_LEVELS": "search.fine_levels",
    "api.SEARCH_TOL_UM": "search.fit_tol_um",
    "api.SEARCH_ITERS": "search.fit_iters",
    "api.REFIT_ITERS": "search.refit_iters",
    "api.SEARCH_STEPS": "search.steps",
    "api.SEARCH_STEPS_SAGITTAL": "search.steps_sagittal",
    "api.SEARCH_QUAD_FINISH": "search.quadratic_finish",
    "api.REFIT_MIN_STEP_UM": "search.refit_min_step_um",
    "api.HEMI_MIDLINE_TILT": "search.hemi_midline_tilt",
    "api.SEARCH_EDGES": "search.max_edges",
    "api.PROPOSE_CELLS": "propose.max_cells",
    "api.PROPOSE_COARSE": "propose.coarse_factor",
    "api.LABEL_START_AGREEMENT": "starts.agreement",
    "api.LABEL_STARTS_HEMI": "starts.hemisections",
    "api.LABEL_START_STEPS": "starts.position_steps",
    "api.START_SCORE_TRIM_Q": "starts.score_trim_q",
    "api.QUICK_ROUNDS": "quick.rounds",
    "api.LABEL_WARP_DEGREE": "finish.warp.degree",
    "labelfit.ACCELERATE": "labels.accelerate",
    "labelfit.ANDERSON_M": "labels.anderson_m",
    "labelfit.TRIM_Q": "labels.trim_q",
    "labelfit.REVERSE_TRIM_Q": "labels.reverse_trim_q",
    "labelfit.SCORE_TRIM_Q": "labels.score_trim_q",
    "labelfit.SPREAD_REVERSE_TRIM_Q": "finish.spread_reverse_trim_q",
    "core.POOR_SCORE": "outline.poor_score",
    "core.CHAMFER_SCORE": "outline.chamfer_score",
    "core.TRIM_K": "outline.icp.trim_k",
    "core.CAUCHY_K": "outline.icp.cauchy_k",
}


def default_settings() -> dict:
    """The default tuning values of this tree, by old constant name (read only)."""
    try:
        from napari_brainatlas.register.settings import RegistrationSettings
    except ImportError:  # the tree before the settings: its module constants
        import importlib

        out = {}
        for name in SETTING_FIELDS:
            mod, attr = name.split(".")
            out[name] = getattr(importlib.import_module(f"napari_brainatlas.register.{mod}"), attr)
        return out
    s = RegistrationSettings()
    out = {}
    for name, path in SETTING_FIELDS.items():
        v = s
        for part in path.split("."):
            v = getattr(v, part)
        out[name] = v
    return out


# ---------------------------------------------------------------------- compare
def _diff(a, b, tol: float, path: str, out: list):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'new' if k in b else 'base'}")
                continue
            _diff(a[k], b[k], tol, f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, tol, f"{path}[{i}]", out)
    elif isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or a is None:
        if a != b:
            out.append(f"{path}: {a!r} vs {b!r}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if not (np.isfinite(a) and np.isfinite(b)):
            if not (a == b or (np.isnan(a) and np.isnan(b))):
                out.append(f"{path}: {a!r} vs {b!r}")
        elif abs(a - b) > tol * max(1.0, abs(a), abs(b)):
            out.append(f"{path}: {a!r} vs {b!r} (diff {abs(a - b):.3g})")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def compare(base: dict, new: dict, tol: float) -> int:
    bad = 0
    sb, sn = base["settings"], new["settings"]
    sd = []
    _diff(json.loads(json.dumps(sb)), json.loads(json.dumps(sn)), 0.0, "settings", sd)
    print(f"default settings: {len(SETTING_FIELDS)} compared, {len(sd)} differ")
    for line in sd:
        print("  ", line)
    bad += len(sd)
    n_eq = 0
    worst = 0.0
    for name in base["cases"]:
        b, n = base["cases"][name], new["cases"].get(name)
        if n is None:
            print(f"{name}: missing in new")
            bad += 1
            continue
        d = []
        rb = {k: v for k, v in b.items() if k != "time_s"}
        rn = {k: v for k, v in n.items() if k != "time_s"}
        _diff(rb, rn, tol, name, d)
        if "result" in b and "result" in n:
            Ab = np.asarray(b["result"]["affine"], dtype=float)
            An = np.asarray(n["result"]["affine"], dtype=float)
            worst = max(worst, float(np.abs(Ab - An).max()))
        if d:
            bad += 1
            print(f"{name}: {len(d)} difference(s)")
            for line in d[:12]:
                print("   ", line)
        else:
            n_eq += 1
    tb = np.array([c["time_s"] for c in base["cases"].values()])
    tn = np.array([new["cases"][k]["time_s"] for k in base["cases"] if k in new["cases"]])
    print(
        f"{n_eq} of {len(base['cases'])} cases agree to {tol:g} (largest affine difference "
        f"{worst:.3g}); time base {tb.sum():.0f} s, new {tn.sum():.0f} s (loaded machine, "
        "separate processes run one after the other)"
    )
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="the other source tree (its src/ is imported)")
    ap.add_argument(
        "--new", default=str(ROOT), help="this tree (default: the one holding this script)"
    )
    ap.add_argument("--quick", action="store_true", help="about a third of the cases")
    ap.add_argument("--tol", type=float, default=1e-9)
    ap.add_argument("--data", default=str(default_data()))
    ap.add_argument("--keep", default=None, help="folder for the two JSON records")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, default=None, help="compare two records already written")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.quick, Path(args.data))
    if args.compare:
        recs = [json.loads(Path(p).read_text()) for p in args.compare]
        return compare(recs[0], recs[1], args.tol)
    if not args.base:
        ap.error("--base is required")
    keep = Path(args.keep or os.environ.get("TMPDIR", "/tmp")) / "same_results"
    keep.mkdir(parents=True, exist_ok=True)
    paths = {}
    for tag, tree in (("base", args.base), ("new", args.new)):
        paths[tag] = keep / f"{tag}.json"
        env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve() / "src"))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(paths[tag])]
        cmd += ["--data", args.data] + (["--quick"] if args.quick else [])
        print(f"== {tag}: {tree}", flush=True)
        subprocess.run(cmd, env=env, check=True)
    recs = {k: json.loads(p.read_text()) for k, p in paths.items()}
    return compare(recs["base"], recs["new"], args.tol)


if __name__ == "__main__":
    sys.exit(main())
