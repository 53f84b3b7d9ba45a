"""The per-cell CCF export of several registered sections (``workflows.export_ccf``) and
its subcommand ``napari-brainatlas export-ccf``: BrainGlobe asr columns (um, voxels of
the demo atlas and of the real 50 um CCFv3), ABC atlas x/y/z_ccf, the JSON beside the
table, progress and cancel, bad input as one line and exit code 2, inputs untouched,
never a NaN written.

The sections are demo sections carrying their true CCF position as if registered (no
public registered section is at hand; registration itself is tested elsewhere)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.atlas import make_demo_atlas
from napari_brainatlas.cli import main
from napari_brainatlas.io import write_h5ad
from napari_brainatlas.workflows import ccf_cells, export_ccf

from ._data import CCF50, ONTO_CSV, shared
from .bad_inputs import sha1


def _as_registered(s):
    s.obs["ccf_id"] = s.obs["ccf_id_true"].to_numpy().astype(np.int64)
    s.obs["ccf_acronym"] = s.obs["ccf_acronym_true"].astype(str).to_numpy()
    s.obsm["ccf_coords"] = np.asarray(s.obsm["ccf_coords_true"], float)
    s.uns["ccf_registration"] = {s.uns["napari_brainatlas"]["section"]: {"atlas": "demo"}}
    return s


@pytest.fixture(scope="module")
def sections():
    """Three registered demo sections; in the second, 10 cells have no CCF position and
    a numeric column holds a NaN, a label column a missing value."""
    from napari_brainatlas.demo import make_demo_sections

    out = [_as_registered(s) for s in make_demo_sections(seed=0, n_sections=3, cells_per_mm2=40)]
    c = out[1].obsm["ccf_coords"].copy()
    c[:10] = np.nan
    out[1].obsm["ccf_coords"] = c
    for s in out:
        s.obs["score"] = np.linspace(0.0, 1.0, s.n_obs)
        s.obs["note"] = pd.Categorical(["a"] * s.n_obs)
    out[1].obs.loc[out[1].obs_names[20], "score"] = np.nan
    out[1].obs["note"] = out[1].obs["note"].cat.add_categories(["b"])
    out[1].obs.loc[out[1].obs_names[21], "note"] = np.nan
    return out


@pytest.fixture
def files(sections, tmp_path):
    paths = []
    for s in sections:
        p = tmp_path / f"{s.uns['napari_brainatlas']['section']}.h5ad"
        write_h5ad(s, p)
        paths.append(p)
    return paths


def _no_nan_written(path):
    text = path.read_text()
    tokens = set(text.replace("\n", ",").split(","))
    assert not tokens & {"nan", "NaN", "inf", "-inf", "NA", "<NA>", "None"}, path


def test_export_ccf_both_formats_and_json(sections, tmp_path):
    calls = []
    cells = export_ccf(
        sections,
        tmp_path / "cells.csv",
        extra_obs=("score", "note", "celltype"),
        chunk_rows=500,
        progress=lambda d, t, i: calls.append((d, t, dict(i))),
    )
    n = sum(s.n_obs for s in sections) - 10
    table = pd.read_csv(tmp_path / "cells.csv", keep_default_na=False)
    assert len(table) == cells.rows == n and cells.counts[1] == sections[1].n_obs - 10
    first = table[table["section"] == cells.names[0]]
    c = sections[0].obsm["ccf_coords"]
    np.testing.assert_allclose(first[["ap_um", "si_um", "rl_um"]], c, rtol=1e-5)
    np.testing.assert_allclose(first[["x_ccf", "y_ccf", "z_ccf"]], c / 1000, rtol=1e-5)
    assert list(first["cell_id"]) == list(sections[0].obs_names)
    second = table[table["section"] == cells.names[1]]
    assert list(second["cell_id"]) == list(sections[1].obs_names[10:])  # unregistered left out
    ids = [s.obs["ccf_id"].to_numpy() for s in sections]
    np.testing.assert_array_equal(table["ccf_id"], np.concatenate([ids[0], ids[1][10:], ids[2]]))
    # a NaN in a numeric column: the column is left out; a missing label is ""
    assert "score" not in table.columns and cells.skipped == ["score"]
    assert "celltype" in table.columns and (table["note"] == "").sum() == 1
    _no_nan_written(tmp_path / "cells.csv")
    info = json.loads((tmp_path / "cells.json").read_text())
    assert info["orientation"] == "asr" and info["rows"] == n and info["atlas"] == "demo"
    assert info["left_out"] == {"score": "non-finite values"} and "abc_columns" in info
    # one unit per section, then one per 500 rows written; the totals end consistent
    chunks = -(-n // 500)
    assert [d for d, _, _ in calls] == list(range(1, 3 + chunks + 1))
    assert calls[-1][1] == 3 + chunks and calls[-1][2]["rows"] == n
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert any("cells.csv" in line for line in cells.lines())


def test_brainglobe_voxels_index_the_annotation_and_abc_only(sections, tmp_path):
    atlas = make_demo_atlas()
    cells = export_ccf(
        sections, tmp_path / "bg.tsv", format="brainglobe", units="voxel", atlas=atlas
    )
    t = pd.read_csv(tmp_path / "bg.tsv", sep="\t")
    assert {"ap_vox", "si_vox", "rl_vox"} <= set(t.columns)
    assert not {"x_ccf", "ap_um"} & set(t.columns)
    idx = np.floor(t[["ap_vox", "si_vox", "rl_vox"]].to_numpy()).astype(int)
    assert (atlas.annotation[tuple(idx.T)] == t["ccf_id"].to_numpy()).mean() > 0.99
    assert cells.resolution_um == atlas.resolution_um
    info = json.loads((tmp_path / "bg.json").read_text())
    assert info["units"] == f"voxels of {atlas.resolution_um:g} um" and "abc_columns" not in info
    abc = export_ccf(sections, tmp_path / "abc.csv.gz", format="abc")
    t = pd.read_csv(tmp_path / "abc.csv.gz")
    assert list(t.columns[:5]) == ["section", "cell_id", "x_ccf", "y_ccf", "z_ccf"]
    assert not any(c.startswith(("ap_", "si_", "rl_")) for c in t.columns)
    assert abc.rows == len(t) and "orientation" not in json.loads(
        (tmp_path / "abc.json").read_text()
    )


def test_cancel_leaves_nothing(sections, tmp_path):
    out = tmp_path / "cells.csv"
    calls = []

    def progress(d, t, i):
        calls.append(i)

    with pytest.raises(Cancelled):  # while gathering
        export_ccf(sections, out, progress=progress, cancel=lambda: len(calls) >= 1)
    with pytest.raises(Cancelled):  # after the first chunk was written
        export_ccf(
            sections,
            out,
            chunk_rows=100,
            progress=progress,
            cancel=lambda: any("rows" in i for i in calls),
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_sentence(sections, tmp_path):
    plain = sections[0].copy()
    del plain.obsm["ccf_coords"]
    with pytest.raises(BrainAtlasInputError, match=r"has no obsm\['ccf_coords'\]"):
        ccf_cells([sections[1], plain])
    nan = sections[0].copy()
    nan.obsm["ccf_coords"] = np.full((nan.n_obs, 3), np.nan)
    with pytest.raises(BrainAtlasInputError, match="not registered"):
        ccf_cells([nan])
    with pytest.raises(BrainAtlasInputError, match="format"):
        ccf_cells(sections, format="xlsx")
    with pytest.raises(BrainAtlasInputError, match="millimetres"):
        ccf_cells(sections, format="abc", units="voxel")
    with pytest.raises(BrainAtlasInputError, match=".csv"):
        export_ccf(sections, tmp_path / "cells.xlsx")
    unnamed = sections[0].copy()
    unnamed.uns["ccf_registration"] = {}
    with pytest.raises(BrainAtlasInputError, match="voxel units need"):
        ccf_cells([unnamed], units="voxel")


# ------------------------------------------------------------------ the console script
def test_cli_export_ccf(files, tmp_path, capsys):
    before = [sha1(p) for p in files]
    out = tmp_path / "out" / "cells.csv"
    argv = ["export-ccf", *map(str, files), "--out", str(out), "--obs", "celltype"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "registered cells" in cap.out and cap.err == ""
    t = pd.read_csv(out)
    assert len(t) == sum(ad.read_h5ad(p).n_obs for p in files) - 10
    assert set(t["section"]) == {p.stem for p in files} and "celltype" in t.columns
    np.testing.assert_allclose(t["x_ccf"], t["ap_um"] / 1000, rtol=1e-5)
    assert json.loads((out.parent / "cells.json").read_text())["atlas"] == "demo"
    _no_nan_written(out)
    assert [sha1(p) for p in files] == before


def test_cli_voxels_of_the_real_ccf(files, tmp_path, capsys):
    ccf, onto = shared(CCF50), shared(ONTO_CSV)
    out = tmp_path / "vox.csv"
    argv = ["export-ccf", str(files[0]), "--out", str(out), "--format", "brainglobe"]
    argv += ["--units", "voxel", "--atlas", str(ccf), "--ontology", str(onto)]
    assert main(argv) == 0, capsys.readouterr().err
    t = pd.read_csv(out)
    c = ad.read_h5ad(files[0]).obsm["ccf_coords"]
    np.testing.assert_allclose(t[["ap_vox", "si_vox", "rl_vox"]], c / 50.0, rtol=1e-5)
    info = json.loads((tmp_path / "vox.json").read_text())
    assert info["units"] == "voxels of 50 um" and info["atlas"] == "annotation_50"


@pytest.mark.parametrize(
    "case, words",
    [
        ("unregistered", "has no obsm['ccf_coords']"),
        ("nan", "is not registered"),
        ("same", "refusing to overwrite the input file"),
        ("abc-voxel", "millimetres"),
        ("ontology", "--ontology goes with --atlas"),
    ],
)
def test_cli_bad_input_one_line_exit_2(case, words, files, sections, tmp_path, capsys):
    out = tmp_path / "cells.csv"
    inputs = [str(p) for p in files]
    extra: list[str] = []
    if case == "unregistered":
        s = sections[0].copy()
        del s.obsm["ccf_coords"]
        write_h5ad(s, tmp_path / "plain.h5ad")
        inputs.append(str(tmp_path / "plain.h5ad"))
    elif case == "nan":
        s = sections[0].copy()
        s.obsm["ccf_coords"] = np.full((s.n_obs, 3), np.nan)
        s.uns["napari_brainatlas"] = {**s.uns["napari_brainatlas"], "section": "N"}
        write_h5ad(s, tmp_path / "nan.h5ad")
        inputs.append(str(tmp_path / "nan.h5ad"))
    elif case == "same":
        out = files[1]
    elif case == "abc-voxel":
        extra = ["--format", "abc", "--units", "voxel"]
    else:
        extra = ["--ontology", "tree.csv"]
    before = [sha1(p) for p in files]
    assert main(["export-ccf", *inputs, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert [sha1(p) for p in files] == before
    assert not (tmp_path / "cells.csv").exists()


def test_the_workflow_imports_no_qt():
    import subprocess
    import sys

    code = (
        "import sys, napari_brainatlas.workflows.ccf_export, napari_brainatlas.cli.ccf_export\n"
        "print([m for m in ('qtpy', 'PyQt6', 'napari') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout
