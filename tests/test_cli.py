"""The console script: info, demo --headless, demo-data, and bad input."""

import subprocess
import sys

import pytest

from napari_brainatlas.cli import main
from napari_brainatlas.io import read_sections

from ._data import OSMFISH, VISIUM, shared
from .bad_inputs import make_bad_files, sha1


def test_info_real_files(capsys):
    assert main(["info", str(shared(OSMFISH)), str(shared(VISIUM))]) == 0
    out = capsys.readouterr().out
    assert "6471 cells x 33 genes" in out and "49 cells x 1999 genes" in out
    assert "col_attrs['X'], col_attrs['Y']" in out and "obsm['spatial']" in out


@pytest.mark.parametrize(
    "case",
    [
        "unreadable",
        "no_coordinates",
        "nan_coordinates",
        "duplicate_genes",
        "zero_cells",
        "non_numeric",
    ],
)
def test_info_bad_input_one_line_nonzero(tmp_path, capsys, case):
    path, words = make_bad_files(tmp_path)[case]
    before = sha1(path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert sha1(path) == before


def test_demo_data_then_info(tmp_path, capsys):
    assert (
        main(["demo-data", "--out", str(tmp_path), "--n-sections", "2", "--cells-per-mm2", "50"])
        == 0
    )
    files = sorted((tmp_path / "sections").glob("*.h5ad"))
    assert len(files) == 2
    assert (tmp_path / "atlas" / "annotation_50um.nrrd").exists()
    secs = read_sections(files[0])
    assert "demo_truth" in secs[0].uns
    # the written atlas reads back as the same atlas
    import numpy as np

    from napari_brainatlas.atlas import Atlas, make_demo_atlas

    a = Atlas.load(
        tmp_path / "atlas" / "annotation_50um.nrrd",
        ontology=tmp_path / "atlas" / "structure_tree.csv",
    )
    assert np.array_equal(a.annotation, make_demo_atlas().annotation)
    assert a.ontology.acronym(315) == "Isocortex"


def test_demo_headless_writes_results_and_qc(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_brainatlas",
            "demo",
            "--headless",
            "--out",
            str(tmp_path / "run"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    qc = tmp_path / "run" / "qc.png"
    assert qc.exists() and qc.stat().st_size > 20_000
    results = sorted((tmp_path / "run" / "results").glob("*.h5ad"))
    assert len(results) == 4
    import json

    report = json.loads((tmp_path / "run" / "registration_report.json").read_text())
    assert len(report) == 4
    for name, r in report.items():  # registered against the demo truth
        assert r["median_error_um"] < 50, (name, r)
    import anndata as ad

    a = ad.read_h5ad(results[0])
    assert a.obsm["ccf_coords"].shape == (a.n_obs, 3) and "ccf_acronym" in a.obs
    assert a.uns["ccf_registration"]


def test_help_and_unknown_command():
    r = subprocess.run(
        [sys.executable, "-m", "napari_brainatlas", "--help"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "demo-data" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "napari_brainatlas", "frobnicate"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
