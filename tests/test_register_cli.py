"""``napari-brainatlas register``: a round trip through files, and bad input."""

import argparse

import anndata as ad
import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import make_demo_atlas
from napari_brainatlas.io import write_h5ad
from napari_brainatlas.register import RegistrationResult, sample_section
from napari_brainatlas.register.cli import add_parser, parse_midline


@pytest.fixture(scope="module")
def section_file(tmp_path_factory):
    atlas = make_demo_atlas()
    a = sample_section(atlas, "coronal", 4200.0, "right", n_cells=5000, rotation_deg=140.0,
                       scale=1.2, seed=7, name="cli_s")
    truth = a.uns.pop("demo_truth")
    a.obsm["ccf_true"] = a.obsm.pop("ccf_coords_true")
    path = tmp_path_factory.mktemp("reg") / "section.h5ad"
    write_h5ad(a, path)
    return path, truth


def _parse(argv):
    p = argparse.ArgumentParser(prog="napari-brainatlas")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return p.parse_args(argv)


def _argv(path, truth, out, **over):
    m = np.asarray(truth["midline"]).ravel()
    opts = {
        "--atlas": "demo", "--plane": "coronal", "--position-um": str(truth["position_um"]),
        "--hemisphere": "right", "--midline": ",".join(f"{v:.3f}" for v in m), "--out": str(out),
    }
    opts.update(over)
    argv = ["register", str(path)]
    for k, v in opts.items():
        if v is None:
            continue
        argv += [k] if v is True else [k, v]
    return argv


def test_cli_round_trip(section_file, tmp_path, capsys):
    path, truth = section_file
    out = tmp_path / "out.h5ad"
    js = tmp_path / "rec.json"
    args = _parse(_argv(path, truth, out, **{"--json": str(js)}))
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "iteration" in text and "cost" in text
    assert "confidence" in text and "dice" in text
    b = ad.read_h5ad(out)
    assert b.obsm["ccf_coords"].shape == (b.n_obs, 3)
    err = np.linalg.norm(b.obsm["ccf_coords"] - b.obsm["ccf_true"], axis=1)
    assert np.median(err) < 50.0
    rec = b.uns["ccf_registration"]
    assert len(rec) == 1
    res = RegistrationResult.from_json(js.read_text())
    assert res.plane == "coronal" and res.hemisphere == "right"
    assert ad.read_h5ad(path).obsm.get("ccf_coords") is None  # input untouched


def test_cli_main_exit_code_2_on_bad_input(section_file, tmp_path, capsys):
    from napari_brainatlas.cli import main

    path, truth = section_file
    argv = _argv(path, truth, tmp_path / "o.h5ad", **{"--midline": "10,10,10,10"})
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "identical" in err[0]


@pytest.mark.parametrize(
    "over, match",
    [
        ({"--midline": "1,2,3"}, "four numbers"),
        ({"--midline": "a,b,c,d"}, "four numbers"),
        ({"--midline": "5,5,5,5"}, "identical"),
        ({"--midline": "900000,900000,900000,905000"}, "outside"),
        ({"--position-um": "99999"}, "outside the atlas"),
        ({"--atlas": "/no/such/annotation.nrrd"}, "not found"),
        ({"--atlas": "demo", "--ontology": "x.csv"}, "ontology"),
    ],
)
def test_cli_bad_input(section_file, tmp_path, over, match):
    path, truth = section_file
    args = _parse(_argv(path, truth, tmp_path / "o.h5ad", **over))
    with pytest.raises(BrainAtlasInputError, match=match):
        args.func(args)


def test_cli_too_few_cells(tmp_path):
    a = ad.AnnData(np.zeros((5, 1), dtype=np.float32))
    a.obsm["spatial"] = np.random.default_rng(0).random((5, 2)) * 100
    p = tmp_path / "tiny.h5ad"
    write_h5ad(a, p)
    args = _parse(["register", str(p), "--atlas", "demo", "--plane", "coronal", "--position-um", "4000",
                   "--midline", "10,10,50,90", "--out", str(tmp_path / "o.h5ad")])
    with pytest.raises(BrainAtlasInputError, match="at least"):
        args.func(args)


def test_parse_midline():
    assert parse_midline("1,2,3,4") == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(BrainAtlasInputError):
        parse_midline("1,2")
