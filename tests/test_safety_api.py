"""Public functions answer bad input with BrainAtlasInputError (issue 28), and written
files get the user's umask."""

import os

import anndata as ad
import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate import smooth_labels
from napari_brainatlas.domains.spacon import leiden_domains
from napari_brainatlas.io import atomic_write_text, write_h5ad
from napari_brainatlas.register.position import series_positions
from napari_brainatlas.workflows.checks import check_spread, finite_results, restore_missing
from napari_brainatlas.workflows.outputs import check_output_file, check_output_folder


def test_smooth_labels_bad_input():
    xy = np.random.default_rng(0).uniform(0, 100, (20, 2))
    labels = np.array(["a", "b"] * 10)
    smooth_labels(xy, labels, k=5)  # fine
    with pytest.raises(BrainAtlasInputError, match="labels"):
        smooth_labels(xy, labels[:-1])
    bad = xy.copy()
    bad[3, 0] = np.nan
    with pytest.raises(BrainAtlasInputError, match="NaN"):
        smooth_labels(bad, labels)
    with pytest.raises(BrainAtlasInputError, match="NaN"):
        smooth_labels(xy, labels, weights=np.r_[np.nan, np.ones(19)])


def test_leiden_domains_nan():
    z = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    z[2, 1] = np.nan
    with pytest.raises(BrainAtlasInputError, match="NaN"):
        leiden_domains(z)


def test_series_positions_nan_ends():
    labels = [np.array(["a", "b"]), np.array(["a", "c"]), np.array(["c", "c"])]
    assert np.isfinite(series_positions(labels, 0.0, 100.0)).all()
    for first, last in ((np.nan, 100.0), (0.0, np.inf)):
        with pytest.raises(BrainAtlasInputError, match="finite"):
            series_positions(labels, first, last)


def test_write_h5ad_under_a_file(tmp_path):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    a = ad.AnnData(np.ones((2, 2), np.float32))
    with pytest.raises(BrainAtlasInputError, match="plain.txt"):
        write_h5ad(a, f / "out.h5ad")
    (tmp_path / "dir.h5ad").mkdir()
    with pytest.raises(BrainAtlasInputError, match="folder"):
        write_h5ad(a, tmp_path / "dir.h5ad")
    with pytest.raises(BrainAtlasInputError, match="plain.txt"):
        atomic_write_text("x", f / "deeper" / "out.json")


def test_written_files_get_the_umask(tmp_path):
    a = ad.AnnData(np.ones((2, 2), np.float32))
    old = os.umask(0o027)
    try:
        p = write_h5ad(a, tmp_path / "a.h5ad")
        q = atomic_write_text("x", tmp_path / "a.json")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640
    assert q.stat().st_mode & 0o777 == 0o640
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_output_guard(tmp_path):
    src = tmp_path / "in.h5ad"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "hard.h5ad")
    (tmp_path / "sym.h5ad").symlink_to(src)
    for out in ("hard.h5ad", "sym.h5ad", "sub/../in.h5ad"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(BrainAtlasInputError, match="input"):
            check_output_file(tmp_path / out, ".h5ad", [src])
    check_output_file(tmp_path / "new" / "o.h5ad", ".h5ad", [src])  # made when writing
    with pytest.raises(BrainAtlasInputError, match="cannot be created"):
        check_output_file(src / "nowhere" / "o.h5ad", ".h5ad", [])
    with pytest.raises(BrainAtlasInputError, match="not a folder"):
        check_output_folder(src)
    # a model folder: its files and the reference sections it names are inputs
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"section_names": ["S1"]}')
    (tmp_path / "run" / "S1.h5ad").write_bytes(b"y")
    with pytest.raises(BrainAtlasInputError, match="input"):
        check_output_file(tmp_path / "run" / "S1.h5ad", ".h5ad", [model])
    with pytest.raises(BrainAtlasInputError, match="model folder"):
        check_output_file(model / "new.h5ad", ".h5ad", [model])
    check_output_file(tmp_path / "run" / "S2.h5ad", ".h5ad", [model])  # a new file is fine


def test_check_spread():
    with pytest.raises(BrainAtlasInputError, match="one point"):
        check_spread(np.full((10, 2), 5.0))
    t = np.linspace(0, 1, 10)
    with pytest.raises(BrainAtlasInputError, match="one line"):
        check_spread(np.c_[t, 3 * t])
    check_spread(np.random.default_rng(0).uniform(size=(10, 2)))


def test_finite_results_flags_and_restores():
    a = ad.AnnData(np.ones((4, 2), np.float32))
    z = np.ones((4, 3), np.float32)
    z[1] = np.nan
    a.obsm["X_fusemap_cell"] = z
    a.obs["celltype_transfer"] = ["x", None, "y", "x"]
    a.obs["celltype_transfer_uncertainty"] = np.array([0.1, np.nan, 0.2, 0.3], np.float32)
    a.obs["imputed_Gad1"] = np.array([1.0, np.nan, 2.0, 3.0], np.float32)
    notes = finite_results([a], ["S"])
    assert len(notes) == 1 and "1 of 4" in notes[0]
    assert np.isfinite(a.obsm["X_fusemap_cell"]).all()
    assert a.obs["fusemap_low_counts"].tolist() == [False, True, False, False]
    assert a.obs["celltype_transfer"].iloc[1] == "unassigned"
    assert a.obs["celltype_transfer_uncertainty"].iloc[1] == 1.0
    assert a.obs["imputed_Gad1"].iloc[1] == 0.0
    (b,) = restore_missing([a])
    assert (
        np.isnan(b.obsm["X_fusemap_cell"][1]).all() and np.isfinite(a.obsm["X_fusemap_cell"]).all()
    )


def test_hierarchy_must_name_columns_the_reference_has():
    from napari_brainatlas.workflows.transfer import check_labels

    ref = ad.AnnData(np.ones((4, 2), np.float32))
    ref.obs["celltype"] = ["a", "b", "a", "b"]
    ref.obs["celltype_main"] = ["x", "x", "y", "y"]
    check_labels([ref], ["celltype"], {"celltype": "celltype_main"})  # fine
    with pytest.raises(BrainAtlasInputError, match="obs\\['missing'\\]"):
        check_labels([ref], ["celltype"], {"celltype": "missing"})
    with pytest.raises(BrainAtlasInputError, match="not among the labels"):
        check_labels([ref], ["celltype"], {"region": "celltype_main"})


def test_domains_top_k_below_one():
    from napari_brainatlas.workflows.domains import prepare_domains

    with pytest.raises(BrainAtlasInputError, match="top_k must be at least 1"):
        prepare_domains([], "demo", top_k=0)
