"""``napari-brainatlas register``: a round trip through files, and bad input."""

import argparse

import anndata as ad
import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import make_demo_atlas
from napari_brainatlas.cli.register import add_parser, parse_midline
from napari_brainatlas.io import write_h5ad
from napari_brainatlas.register import RegistrationResult, sample_section


@pytest.fixture(scope="module")
def section_file(tmp_path_factory):
    atlas = make_demo_atlas()
    a = sample_section(
        atlas,
        "coronal",
        4200.0,
        "right",
        n_cells=5000,
        rotation_deg=140.0,
        scale=1.2,
        seed=7,
        name="cli_s",
    )
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
        "--atlas": "demo",
        "--plane": "coronal",
        "--position-um": str(truth["position_um"]),
        "--hemisphere": "right",
        "--midline": ",".join(f"{v:.3f}" for v in m),
        "--out": str(out),
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
    args = _parse(
        [
            "register",
            str(p),
            "--atlas",
            "demo",
            "--plane",
            "coronal",
            "--position-um",
            "4000",
            "--midline",
            "10,10,50,90",
            "--out",
            str(tmp_path / "o.h5ad"),
        ]
    )
    with pytest.raises(BrainAtlasInputError, match="at least"):
        args.func(args)


def test_parse_midline():
    assert parse_midline("1,2,3,4") == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(BrainAtlasInputError):
        parse_midline("1,2")


# ---------------------------------------------------------------- register-series
@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    """Five labelled sections cut at uneven AP positions from the demo atlas."""
    atlas = make_demo_atlas()
    aps = [3000.0, 3400.0, 4000.0, 4300.0, 5200.0]
    d = tmp_path_factory.mktemp("series")
    paths = []
    for i, ap_um in enumerate(aps):
        a = sample_section(
            atlas, "coronal", ap_um, "both", n_cells=20000, seed=20 + i, name=f"z{i}"
        )
        a.uns.pop("demo_truth")
        a.obsm.pop("ccf_coords_true")
        p = d / f"z{i}.h5ad"
        write_h5ad(a, p)
        paths.append(p)
    return paths, aps


def _series_argv(paths, *extra):
    return ["register-series", *[str(p) for p in paths], *extra]


def test_cli_series_places_sections(series_files, tmp_path, capsys):
    from napari_brainatlas.register.position import series_positions

    paths, aps = series_files
    out = tmp_path / "pos.csv"
    args = _parse(
        _series_argv(
            paths,
            "--first-um",
            str(aps[0]),
            "--last-um",
            str(aps[-1]),
            "--out",
            str(out),
            "--atlas",
            "demo",
        )
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "z2" in text and "um" in text
    rows = [r.split(",") for r in out.read_text().strip().splitlines()]
    assert rows[0] == ["section", "position_um"]
    names = [r[0] for r in rows[1:]]
    pos = np.array([float(r[1]) for r in rows[1:]])
    assert names == [f"z{i}" for i in range(5)]
    assert pos[0] == pytest.approx(aps[0]) and pos[-1] == pytest.approx(aps[-1])
    assert np.all(np.diff(pos) > 0)
    # the same numbers as the API, and the uneven spacing is followed
    labs = [ad.read_h5ad(p).obs["region"].astype(str).to_numpy() for p in paths]
    assert np.allclose(pos, series_positions(labs, aps[0], aps[-1]), atol=1e-3)
    assert np.median(np.abs(pos - np.array(aps))) < 400.0


def test_cli_series_order_reverses(series_files, tmp_path):
    paths, aps = series_files
    out = tmp_path / "pos.csv"
    args = _parse(
        _series_argv(
            paths,
            "--first-um",
            str(aps[-1]),
            "--last-um",
            str(aps[0]),
            "--order",
            "z4,z3,z2,z1,z0",
            "--out",
            str(out),
        )
    )
    assert args.func(args) == 0
    rows = [r.split(",") for r in out.read_text().strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["z4", "z3", "z2", "z1", "z0"]
    assert float(rows[0][1]) == pytest.approx(aps[-1]) and float(rows[-1][1]) == pytest.approx(
        aps[0]
    )


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--first-um", "3000", "--last-um", "3000"], "differ"),
        (["--first-um", "3000", "--last-um", "5200", "--order", "z0,zz"], "unknown"),
        (["--first-um", "3000", "--last-um", "5200", "--order", "z0,z0"], "twice"),
        (["--first-um", "3000", "--last-um", "5200", "--region-key", "nope"], "region labels"),
        (["--first-um", "-50000", "--last-um", "5200", "--atlas", "demo"], "outside the atlas"),
    ],
)
def test_cli_series_bad_input(series_files, extra, match):
    paths, _ = series_files
    args = _parse(_series_argv(paths, *extra))
    with pytest.raises(BrainAtlasInputError, match=match):
        args.func(args)


def test_cli_series_needs_two_sections(series_files):
    from napari_brainatlas.cli import main

    paths, _ = series_files
    assert main(_series_argv(paths[:1], "--first-um", "3000", "--last-um", "5200")) == 2


def test_cli_quick_plane_search(section_file, tmp_path, capsys):
    """``--refine-position --plane-search quick`` runs the quick search and says so in
    the record's notes; an unknown choice is an argparse error (exit 2)."""
    path, truth = section_file
    out = tmp_path / "quick.h5ad"
    args = _parse(
        _argv(
            path,
            truth,
            out,
            **{
                "--refine-position": True,
                "--plane-search": "quick",
                "--quiet": True,
                "--position-um": str(truth["position_um"] + 100),
            },
        )
    )
    assert args.plane_search == "quick"
    assert args.func(args) == 0
    b = ad.read_h5ad(out)
    rec = RegistrationResult.from_uns(next(iter(b.uns["ccf_registration"].values())))
    assert any(n.startswith("quick plane search") for n in rec.notes)
    assert abs(rec.position_um - truth["position_um"]) <= 60.0
    # given 100 um off, the fit at the given plane is about 100 um off (the demo atlas's
    # 50 um voxels bound the quick search's plane to about one voxel)
    err = np.linalg.norm(b.obsm["ccf_coords"] - b.obsm["ccf_true"], axis=1)
    assert np.median(err) < 60.0
    with pytest.raises(SystemExit) as exc:
        _parse(_argv(path, truth, out, **{"--plane-search": "fast"}))
    assert exc.value.code == 2


def test_cli_quicknii_and_stage_lines(section_file, tmp_path, capsys):
    """--quicknii writes the QuickNII / VisuAlign series beside the .h5ad; --verbose
    lines name the fit's stage (a new start or the affine stage explains a jump in the
    cost); the summary gives the fitted scale."""
    from napari_brainatlas.io.quicknii import read_quicknii

    path, truth = section_file
    qn = tmp_path / "series.json"
    args = _parse(
        _argv(path, truth, tmp_path / "o.h5ad", **{"--quicknii": str(qn), "--verbose": True})
    )
    assert args.func(args) == 0
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "similarity)" in text and "affine)" in text
    assert "scale" in cap.out and "QuickNII" in cap.out
    doc = read_quicknii(qn)
    assert doc["target"] == "demo" and len(doc["slices"]) == 1
    assert (tmp_path / doc["slices"][0]["filename"]).exists()
    bad = _parse(_argv(path, truth, tmp_path / "p.h5ad", **{"--quicknii": str(tmp_path / "x.txt")}))
    with pytest.raises(BrainAtlasInputError, match=".json"):
        bad.func(bad)
    assert not (tmp_path / "p.h5ad").exists()  # refused before any work
