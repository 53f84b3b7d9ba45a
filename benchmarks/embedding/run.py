"""FuseMap embedding benchmark (issue 26): FuseMap against PCA + Harmony, scVI, scANVI
and scanpy ingest on a held-out family of real cross-panel splits; and FuseMap's
training throughput and memory.

Quality (one row per set x split x seed x method into a JSONL file; resumable):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/embedding/run.py --half test \\
        --seeds 0,1,2 --out benchmarks/embedding/rows_test.jsonl [--max-cells N]
    python benchmarks/embedding/run.py --half test --report benchmarks/embedding/rows_test.jsonl

(RESULTS_embedding.md gives the exact commands of the reported run: two processes, one
per seed, ``--shard k/2``, ``--max-cells 1000``.)

Splits: splits.py (osmFISH, MERFISH + scRNA-seq reference, Slide-seq + snRNA-seq
reference, demo; dev half = first half of each set's split indices, test half = the
second). Methods: methods.py. Evaluation (the same for every method): evaluate.py.
FuseMap runs at the API's defaults (those of ``napari-brainatlas embed`` and of
``annotate.map_query``) unless ``--fm-cfg`` / ``--query-kw`` give options (dev-half
experiments; ``--variant`` names them in the rows).

Speed (synthetic sections, each size in its own process):

    PYTHONPATH=src python benchmarks/embedding/run.py --scale [--sizes 10000,100000]
    PYTHONPATH=src python benchmarks/embedding/run.py --profile 100000
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

BASELINES = ("pca", "harmony", "ingest", "scvi", "scanvi")
FUSEMAP = ("fusemap_joint", "fusemap_chain")
METHOD_GROUPS = {
    "baselines": ("pca", "harmony", "ingest"),
    "scvi": ("scvi", "scanvi"),
    "joint": ("fusemap_joint",),
    "chain": ("fusemap_chain",),
}


# ----------------------------------------------------------------------------- quality
def _parse_list(s: str) -> list[int]:
    out = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _done(path: Path) -> set:
    keys = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("error"):  # a failed method is run again
                continue
            keys.add((r["set"], r["split"], r["seed"], r["method"], r["variant"]))
    return keys


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    return x


def run_quality(args, log) -> None:
    import methods as M
    import splits as S
    import torch
    from evaluate import evaluate

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = _done(out)
    wanted = []
    for g in args.methods.split(","):
        wanted += list(METHOD_GROUPS.get(g, (g,)))
    fm_cfg = json.loads(args.fm_cfg) if args.fm_cfg else {}
    q_kw = json.loads(args.query_kw) if args.query_kw else {}
    jobs = []
    for name in args.sets.split(","):
        idx = S.split_indices(name, args.half)  # --splits only picks within the half
        if args.splits:
            idx = [i for i in _parse_list(args.splits) if i in idx]
        for i in idx:
            for seed in _parse_list(args.seeds):
                jobs.append((name, i, seed))
    k, n = (int(x) for x in args.shard.split("/"))
    jobs = jobs[k::n]
    for name, i, seed in jobs:
        todo = [
            m
            for m in wanted
            if (name, i, seed, m, args.variant if m in FUSEMAP else "-") not in done
        ]
        if not todo:
            continue
        split = S.cap_cells(S.make_split(name, i), args.max_cells)
        log(f"{S.describe(split)} seed {seed}: {','.join(todo)}")
        results = {}
        calls = [
            (("pca", "harmony"), lambda: M.pca_harmony(split, seed)),
            (("ingest",), lambda: (M.ingest(split, seed),)),
            (("scvi", "scanvi"), lambda: M.scvi_scanvi(split, seed, max_epochs=args.scvi_epochs)),
            (
                ("fusemap_joint",),
                lambda: (M.fusemap_joint(split, seed, fm_cfg, epochs=args.epochs),),
            ),
            (
                ("fusemap_chain",),
                lambda: (M.fusemap_chain(split, seed, fm_cfg, epochs=args.epochs, query_kw=q_kw),),
            ),
        ]
        for names, call in calls:
            if not set(names) & set(todo):
                continue
            try:
                c0 = time.process_time()
                res_n = call()
                for r in res_n:
                    r["cpu_s"] = time.process_time() - c0  # shared by scVI and scANVI
                results.update(zip(names, res_n))
            except Exception as exc:  # a failing method is recorded, the run goes on
                log(f"   {'/'.join(names)} FAILED: {type(exc).__name__}: {exc}")
                for nm in names:
                    results[nm] = {"error": f"{type(exc).__name__}: {exc}"}
        with out.open("a") as fh:
            for m in todo:
                res = results[m]
                if "error" in res:
                    met = {"error": res["error"]}
                    res = dict(res, seconds=float("nan"))
                else:
                    met = evaluate(res, split)
                row = dict(
                    set=name,
                    split=i,
                    half=split.spec.half,
                    seed=seed,
                    method=m,
                    variant=args.variant if m in FUSEMAP else "-",
                    seconds=res["seconds"],
                    cpu_s=res.get("cpu_s"),
                    load=os.getloadavg()[0],
                    **met,
                    info=res.get("info", {}),
                    fm_cfg=fm_cfg if m in FUSEMAP else None,
                    query_kw=q_kw if m == "fusemap_chain" else None,
                    epochs=args.epochs if m in FUSEMAP else None,
                    max_cells=args.max_cells,
                    n_cells=split.info["n_cells"],
                )
                fh.write(json.dumps(_jsonable(row)) + "\n")
                log(
                    f"   {m:14s} {res['seconds']:6.0f}s knn {met.get('knn_acc', np.nan):.3f} "
                    f"pred {met.get('pred_acc', np.nan):.3f} ilisi {met.get('ilisi', np.nan):.3f} "
                    f"R {met.get('impute_r', np.nan):.3f}"
                )


# ----------------------------------------------------------------------------- report
def load_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def report(rows: list[dict], variant: str, half: str | None = None) -> str:
    """Markdown tables: per set, every method's mean +- sd over splits x seeds, and
    FuseMap's win rates (per split, seeds averaged) against each baseline."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[(df.variant == "-") | (df.variant == variant)]
    if half:
        df = df[df.half == half]
    L = []
    metrics = [
        ("knn_acc", "kNN acc"),
        ("knn_f1", "kNN macro-F1"),
        ("pred_acc", "own transfer acc"),
        ("ilisi", "iLISI"),
        ("impute_r", "imputation R"),
    ]
    order = ["fusemap_joint", "fusemap_chain", "pca", "harmony", "scvi", "scanvi", "ingest"]
    names = {
        "fusemap_joint": "FuseMap joint (embed)",
        "fusemap_chain": "FuseMap reference chain (map_query)",
        "pca": "PCA shared genes",
        "harmony": "PCA + Harmony",
        "scvi": "scVI",
        "scanvi": "scANVI",
        "ingest": "scanpy ingest",
    }
    for s in ["osmFISH", "MERFISH", "SlideSeq", "demo"]:
        d = df[df.set == s]
        if d.empty:
            continue
        n_split = d.split.nunique()
        n_seed = d.seed.nunique()
        runs = d.groupby(["split", "seed"]).ngroups
        head = f"{n_split} splits x {n_seed} seeds"
        if runs != n_split * n_seed:
            head = f"{n_split} splits, {runs} split x seed runs (seeds {n_seed} at most)"
        L += [f"### {s}: {head}", ""]
        L.append("| method | " + " | ".join(m[1] for m in metrics) + " | s / run |")
        L.append("|---|" + "---|" * (len(metrics) + 1))
        for m in order:
            dm = d[d.method == m]
            if dm.empty:
                continue
            cells = []
            for key, _ in metrics:
                v = dm[key] if key in dm else pd.Series(dtype=float)
                v = v.dropna()
                cells.append(f"{v.mean():.3f} +- {v.std(ddof=0):.3f}" if len(v) else "-")
            L.append(f"| {names[m]} | " + " | ".join(cells) + f" | {dm.seconds.mean():.0f} |")
        L += [
            "",
            "Win rate of FuseMap per split (seed means compared; ties count half; number of "
            "splits), and the ratio of the means (FuseMap / baseline):",
            "",
        ]
        L.append("| FuseMap | metric | vs PCA | vs Harmony | vs scVI | vs scANVI | vs ingest |")
        L.append("|---|---|---|---|---|---|---|")
        per = d.groupby(["method", "split"]).mean(numeric_only=True)
        for fm, fm_metrics in (
            (
                "fusemap_joint",
                [
                    ("knn_acc", "knn_acc"),
                    ("ilisi", "ilisi"),
                    ("impute_r", "impute_r"),
                    ("pred_acc", "knn_acc"),
                ],
            ),
            (
                "fusemap_chain",
                [("knn_acc", "knn_acc"), ("pred_acc", "knn_acc"), ("impute_r", "impute_r")],
            ),
        ):
            if fm not in per.index.get_level_values(0):
                continue
            for key, bkey in fm_metrics:
                cells = []
                for b in ("pca", "harmony", "scvi", "scanvi", "ingest"):
                    if b not in per.index.get_level_values(0) or key not in per:
                        cells.append("-")
                        continue
                    a = per.loc[fm][key]
                    c = per.loc[b][bkey]
                    j = a.index.intersection(c.index)
                    a, c = a[j], c[j]
                    ok = a.notna() & c.notna()
                    if not ok.any():
                        cells.append("-")
                        continue
                    w = ((a[ok] > c[ok]) + 0.5 * (a[ok] == c[ok])).mean()
                    ratio = a[ok].mean() / c[ok].mean() if c[ok].mean() else float("nan")
                    cells.append(f"{100 * w:.0f} % ({ok.sum()}), {ratio:.2f}x")
                label = key if key == bkey else f"{key} vs their {bkey}"
                L.append(f"| {names[fm].split(' (')[0]} | {label} | " + " | ".join(cells) + " |")
        L.append("")
    return "\n".join(L)


def targets(rows: list[dict], variant: str, half: str | None = "test") -> str:
    """The issue's targets, per set and over all sets (per split: seed means)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[((df.variant == "-") | (df.variant == variant)) & df.knn_acc.notna()]
    if half:
        df = df[df.half == half]
    per = df.groupby(["set", "method", "split"]).mean(numeric_only=True).reset_index()

    def col(d, m, k):
        return d[d.method == m].set_index("split")[k]

    def win(a, b):
        j = a.dropna().index.intersection(b.dropna().index)
        if not len(j):
            return float("nan"), 0
        return float(((a[j] > b[j]) + 0.5 * (a[j] == b[j])).mean()), len(j)

    def verdict(ok):
        return "met" if ok else "MISSED"

    L = [
        "| set | joint > Harmony kNN (>= 80 %) | joint > Harmony iLISI (>= 80 %) | "
        "joint - scANVI kNN, mean (>= -0.02) | chain MLP > PCA kNN (>= 80 %) | "
        "chain MLP > Harmony kNN (>= 80 %) | imputation R joint / chain vs best kNN "
        "baseline (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = [(s, per[per.set == s]) for s in ("osmFISH", "MERFISH", "SlideSeq", "demo")]
    groups.append(("all sets", per.assign(split=per.set + "#" + per.split.astype(str))))
    for name, d in groups:
        if d.empty:
            continue
        cells = []
        for key in ("knn_acc", "ilisi"):
            w, n = win(col(d, "fusemap_joint", key), col(d, "harmony", key))
            cells.append(f"{100 * w:.0f} % of {n} {verdict(w >= 0.8)}")
        diff = (col(d, "fusemap_joint", "knn_acc") - col(d, "scanvi", "knn_acc")).mean()
        cells.append(f"{diff:+.3f} {verdict(diff >= -0.02)}")
        for b in ("pca", "harmony"):
            w, n = win(col(d, "fusemap_chain", "pred_acc"), col(d, b, "knn_acc"))
            cells.append(f"{100 * w:.0f} % of {n} {verdict(w >= 0.8)}")
        base = {
            b: col(d, b, "impute_r").mean() for b in ("pca", "harmony", "scvi", "scanvi", "ingest")
        }
        best = max(base, key=lambda k: base[k] if np.isfinite(base[k]) else -1)
        rj = col(d, "fusemap_joint", "impute_r").mean()
        rc = col(d, "fusemap_chain", "impute_r").mean()
        ok = rj > base[best] and rc > base[best]
        cells.append(f"{rj:.3f} / {rc:.3f} vs {best} {base[best]:.3f} {verdict(ok)}")
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def compare_variants(rows: list[dict], variants: list[str], half: str | None = "test") -> str:
    """FuseMap's configurations side by side on the split x seed runs they all have:
    mean of each metric, and the share of runs where each beats the first variant."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[df.method.isin(["fusemap_joint", "fusemap_chain"]) & df.variant.isin(variants)]
    if half:
        df = df[df.half == half]
    if df.empty:
        return "(no rows for these variants)"
    key = ["set", "split", "seed", "method"]
    common = df.groupby(key).variant.nunique()
    common = common[common == len(variants)].index
    df = df.set_index(key).loc[common].reset_index()
    n_runs = len(common) // 2 if len(common) else 0
    L = [
        f"Over the {n_runs} split x seed runs every variant has (test half):",
        "",
        "| method | metric | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for m in ("fusemap_joint", "fusemap_chain"):
        d = df[df.method == m]
        for met in ("knn_acc", "pred_acc", "ilisi", "impute_r"):
            base = d[d.variant == variants[0]].set_index(key)[met]
            cells = []
            for v in variants:
                x = d[d.variant == v].set_index(key)[met]
                cell = f"{x.mean():.3f}"
                if v != variants[0]:
                    j = x.index.intersection(base.index)
                    cell += f" (better on {100 * float((x[j] > base[j]).mean()):.0f} %)"
                cells.append(cell)
            L.append(f"| {m.replace('fusemap_', 'FuseMap ')} | {met} | " + " | ".join(cells) + " |")
    return "\n".join(L)


# ----------------------------------------------------------------------------- speed
def _peak_rss_mb():
    """Peak RSS of this process since exec (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_dropout(module) -> int:
    """Put torch's own nn.Dropout back in place of FuseMap's Dropout (the 'before' of the
    speed comparison); returns how many were replaced."""
    import torch.nn as nn

    from napari_brainatlas.fusemap._module import Dropout

    n = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, Dropout):
                setattr(parent, name, nn.Dropout(child.p))
                n += 1
    return n


def scale_child(n_cells, steps, threads, seed, profile_out=None, torch_dropout=False):
    import torch

    torch.set_num_threads(threads)
    from napari_brainatlas.fusemap import FuseMap, make_synthetic_sections

    rss0 = _peak_rss_mb()
    secs = make_synthetic_sections(
        n_sections=4,
        n_cells=n_cells // 4,
        n_genes=100,
        n_shared=50,
        sparse=True,
        seed=seed,
        depth=100.0,
    )
    t = time.time()
    m = FuseMap(secs, seed=seed)
    t_setup = time.time() - t
    if torch_dropout:
        _torch_dropout(m.module)
    del secs
    count = {"n": 0}
    marks = {}

    def cancel():
        count["n"] += 1
        if count["n"] == 3:  # skip warm-up steps
            marks["t0"] = time.time()
            if profile_out:
                marks["prof"].enable()
        return count["n"] > steps + 2

    if profile_out:
        import cProfile

        marks["prof"] = cProfile.Profile()
    from napari_brainatlas import Cancelled

    try:
        m.train(epochs=1, cancel=cancel)
    except Cancelled:  # the timed steps are done
        pass
    dt = time.time() - marks["t0"]
    if profile_out:
        marks["prof"].disable()
        marks["prof"].dump_stats(profile_out)
    seeds_per_step = sum(min(m.config["batch_size"], len(sd.train_idx)) for sd in m.data)
    cps = steps * seeds_per_step / dt
    n_train = sum(len(sd.train_idx) for sd in m.data)
    print(
        json.dumps(
            dict(
                n_cells=n_cells,
                steps=steps,
                sec_per_step=dt / steps,
                cells_per_s=cps,
                dropout="torch" if torch_dropout else "fusemap",
                epoch_s_est=n_train / cps,
                setup_s=t_setup,
                peak_rss_mb=_peak_rss_mb(),
                base_rss_mb=rss0,
            )
        )
    )


def run_scaling(sizes, steps, threads, seed, log, src=None, compare=False):
    """Each size in a fresh process; ``compare``: the dropout before (torch's) and after
    (FuseMap's), alternating in fresh processes, twice each."""
    rows = []
    plan = [(n, d) for n in sizes for d in ((True, False, True, False) if compare else (False,))]
    for n, tdrop in plan:
        cmd = [sys.executable, str(Path(__file__)), "--scale-child", str(n), "--steps"]
        cmd += [str(steps), "--threads", str(threads), "--seed", str(seed)]
        cmd += ["--torch-dropout"] if tdrop else []
        env = dict(os.environ, PYTHONPATH=str(src or ROOT / "src"), PYTHONWARNINGS="ignore")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            log(f"[scale {n}] failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        log(
            f"[scale] {n:>8d} cells, dropout {r['dropout']}: {r['sec_per_step']:.3f} s/step, "
            f"{r['cells_per_s']:.0f} "
            f"seed cells/s (est. epoch {r['epoch_s_est']:.0f} s), setup {r['setup_s']:.1f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", default="dev", choices=["dev", "test", "all"])
    ap.add_argument("--sets", default="osmFISH,MERFISH,SlideSeq,demo")
    ap.add_argument("--splits", default=None, help="split indices, e.g. 0-5,8 (default: the half)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="baselines,scvi,joint,chain")
    ap.add_argument("--variant", default="default", help="name of the FuseMap configuration")
    ap.add_argument("--fm-cfg", default=None, help="FuseMap options as JSON")
    ap.add_argument("--query-kw", default=None, help="map_query options as JSON")
    ap.add_argument(
        "--epochs", type=int, default=None, help="FuseMap max epochs per phase (default: the API's)"
    )
    ap.add_argument(
        "--max-cells", type=int, default=None, help="cap every section at this many cells"
    )
    ap.add_argument("--scvi-epochs", type=int, default=100, help="scVI epochs (fixed)")
    ap.add_argument("--shard", default="0/1", help="k/n: this process runs every n-th job")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "rows.jsonl"))
    ap.add_argument("--report", nargs="*", default=None, help="JSONL files to tabulate")
    ap.add_argument(
        "--compare", default=None, help="--report: FuseMap variants side by side, e.g. a,b"
    )
    ap.add_argument("--scale", action="store_true", help="throughput and memory")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=None, help="cProfile N-cell training steps")
    ap.add_argument("--compare-dropout", action="store_true", help="--scale: before/after")
    ap.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-dropout", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cmd = "PYTHONPATH=src python benchmarks/embedding/run.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.scale_child:
        scale_child(
            args.scale_child,
            args.steps,
            args.threads,
            args.seed,
            args.profile_out,
            torch_dropout=args.torch_dropout,
        )
        return 0
    if args.report is not None:
        rows = load_rows(args.report)
        half = None if args.half == "all" else args.half
        if args.compare:
            print(compare_variants(rows, args.compare.split(","), half))
            return 0
        print(report(rows, args.variant, half))
        print(targets(rows, args.variant, half))
        return 0
    if args.profile:
        import pstats

        prof = "/tmp/fusemap_profile.out"
        scale_child(args.profile, args.steps, args.threads, args.seed, prof)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        return 0
    t0 = time.time()
    if args.scale:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        run_scaling(sizes, args.steps, args.threads, args.seed, print, compare=args.compare_dropout)
    else:
        run_quality(args, lambda s: print(s, flush=True))
    print(f"total {(time.time() - t0) / 60:.1f} min; command: {cmd.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
