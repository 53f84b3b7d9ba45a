"""Compare settings of the joint plane search on the hard set, in one process.

Each section of the hard set (run.py's generator, ``SEED`` env var, default 0) is
registered once per variant, one variant after the other, so that the times compare
under the same load. A variant is ``NAME=VALUE[:NAME=VALUE...]`` setting constants of
``napari_brainatlas.register.api`` (the rest at their defaults); ``SEARCH_STEPS`` takes
``50,1.5/25,0.75``. Usage, from the repository root::

    PYTHONPATH=src python benchmarks/registration/compare_settings.py all \
        SEARCH_TOL_UM=0.5:SEARCH_ITERS=20:REFIT_ITERS=15:PROPOSE_CELLS=3000:REFIT_MIN_STEP_UM=0 \
        REFIT_MIN_STEP_UM=50

(``all`` or comma-separated case indices; ``DUMP=file.json`` writes the rows;
``SET=exact`` runs the exact set instead, without the plane search; a variant
``core.NAME=VALUE`` sets a constant of ``napari_brainatlas.register.core``,
``labelfit.NAME=VALUE`` one of ``napari_brainatlas.register.labelfit``.)
"""

import json
import os
import sys
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: I001 - after the path insert

from napari_brainatlas.register import api, core, sample_section

atlas = B.Atlas.load(B.ANN, ontology=B.ONTO)
seed = int(os.environ.get("SEED", "0"))
hard = os.environ.get("SET", "hard") == "hard"
cases = B.make_cases(40, hard, seed, 200000)
idx = [int(v) for v in sys.argv[1].split(",")] if sys.argv[1] != "all" else list(range(40))
DEFAULTS = {
    k: getattr(api, k)
    for k in (
        "COARSE_FACTOR",
        "COARSE_CELLS",
        "REFINE_TOP",
        "FINE_LEVELS",
        "SEARCH_TOL_UM",
        "SEARCH_ITERS",
        "REFIT_ITERS",
        "PROPOSE_CELLS",
        "REFIT_MIN_STEP_UM",
        "SEARCH_EDGES",
        "SEARCH_STEPS",
        "SEARCH_CELLS",
        "SEARCH_QUAD_FINISH",
        "PROPOSE_COARSE",
        "REVERSE_WEIGHT",
        "PLANE_OUTLINE_WEIGHT",
        "LABEL_START_AGREEMENT",
        "LABEL_STARTS_HEMI",
        "LABEL_START_STEPS",
        "START_SCORE_TRIM_Q",
        "SEARCH_STEPS_SAGITTAL",
        "HEMI_MIDLINE_TILT",
    )
}
CORE_DEFAULTS = {k: getattr(core, k) for k in ("CHAMFER_SCORE", "POOR_SCORE")}
from napari_brainatlas.register import labelfit

LF_DEFAULTS = {
    k: getattr(labelfit, k)
    for k in (
        "TRIM_Q",
        "REVERSE_TRIM_Q",
        "SCORE_TRIM_Q",
        "SPREAD_REVERSE_TRIM_Q",
        "ACCELERATE",
        "ANDERSON_M",
    )
}
variants = [dict(v.split("=") for v in spec.split(":") if v) for spec in sys.argv[2:]]
res = {i: {} for i in range(len(variants))}
for i in idx:
    case = cases[i]
    a = sample_section(atlas, name=f"hard{i}", **case["sample"])
    B.scramble_labels(a, 0.10, seed=i)
    line = f"{i:2d} {case['sample']['plane'][:3]} {a.n_obs:6d} |"
    for vi, v in enumerate(variants):
        for k, val in DEFAULTS.items():
            setattr(api, k, val)
        for k, val in CORE_DEFAULTS.items():
            setattr(core, k, val)
        for k, val in LF_DEFAULTS.items():
            setattr(labelfit, k, val)
        for k, val in v.items():
            if k.startswith("core."):
                setattr(core, k[5:], type(getattr(core, k[5:]))(val))
            elif k.startswith("labelfit."):
                cur = getattr(labelfit, k[9:])
                setattr(labelfit, k[9:], type(cur)(float(val)))
            elif k == "START_SCORE_TRIM_Q":
                setattr(api, k, None if val == "None" else float(val))
            elif k == "LABEL_START_STEPS":
                setattr(api, k, tuple(float(x) for x in val.split(",")))
            elif k in ("SEARCH_STEPS", "SEARCH_STEPS_SAGITTAL"):
                setattr(
                    api, k, tuple(tuple(float(x) for x in st.split(",")) for st in val.split("/"))
                )
            else:
                cur = getattr(api, k)
                setattr(
                    api,
                    k,
                    val in ("1", "True", "true") if isinstance(cur, bool) else type(cur)(val),
                )
        o = B.run_ours(a, atlas, case, hard)
        res[vi][i] = o
        line += (
            f" med {o['median_um']:6.1f} p95 {o['p95_um']:6.1f} t {o['time_s']:5.2f} ev {o['metrics'].get('plane_evals', 0):3.0f} c {o['confidence']:.2f} ap {o['ap_error_um']:4.0f} ang {o['angle_error_deg']:4.1f} |"
            if hard
            else f" med {o['median_um']:6.1f} p95 {o['p95_um']:6.1f} t {o['time_s']:5.2f} c {o['confidence']:.2f} |"
        )
    print(line, flush=True)
mt, pt = (60.0, 150.0) if hard else (10.0, 25.0)
for vi, v in enumerate(variants):
    med = np.array([o["median_um"] for o in res[vi].values()])
    p95 = np.array([o["p95_um"] for o in res[vi].values()])
    t = np.array([o["time_s"] for o in res[vi].values()])
    print(
        v,
        f"n {len(med)} median {np.median(med):.1f} p95 {np.median(p95):.1f} within {np.mean((med <= mt) & (p95 <= pt)):.2f} worst {med.max():.1f} time median {np.median(t):.2f} mean {t.mean():.2f}",
    )
if os.environ.get("DUMP"):
    Path(os.environ["DUMP"]).write_text(
        json.dumps(
            {str(vi): {str(i): o for i, o in r.items()} for vi, r in res.items()}, default=float
        )
    )
