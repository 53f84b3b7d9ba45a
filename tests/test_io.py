"""Readers on the real public datasets, the conventions, and every bad-input case."""

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.io import read_sections, write_h5ad

from ._data import MERFISH, OSMFISH, SLIDESEQ, VISIUM, shared
from .bad_inputs import make_bad_files, sha1


def _check_conventions(s):
    xy = s.obsm["spatial"]
    assert xy.dtype == np.float64 and xy.shape == (s.n_obs, 2)
    assert np.isfinite(xy).all()
    assert s.X.dtype == np.float32
    assert set(s.obs["section"]) == {s.uns["napari_brainatlas"]["section"]}
    assert s.obs_names.is_unique and s.var_names.is_unique


def test_osmfish_loom():
    (s,) = read_sections(shared(OSMFISH))
    assert s.shape == (6471, 33)
    assert {"ClusterName", "Region"} <= set(s.obs.columns)
    assert s.obs["Region"].nunique() > 5 and "Layer 4" in set(s.obs["Region"])
    meta = s.uns["napari_brainatlas"]
    assert meta["format"] == "loom" and "X" in meta["coords_from"]
    # pixel size from size_um2 / size_pix: osmFISH images are 0.065 um per pixel
    assert meta["pixel_size_um"] == pytest.approx(0.065, rel=0.02)
    ext = s.obsm["spatial"].max(0) - s.obsm["spatial"].min(0)
    assert 1000 < ext.max() < 5000  # a piece of cortex a few mm across
    assert "counts" in s.layers
    _check_conventions(s)


def test_merfish_csv_folder():
    (s,) = read_sections(shared(MERFISH))
    assert s.shape == (750, 134)
    assert "nUMI" in s.obs.columns
    assert np.allclose(s.obs["nUMI"].to_numpy(), s.layers["counts"].sum(axis=1).A1, rtol=0.5)
    _check_conventions(s)


def test_slideseq_csv_folder():
    (s,) = read_sections(shared(SLIDESEQ))
    assert s.shape == (100, 378)
    assert "BeadLocationsForR.csv" in s.uns["napari_brainatlas"]["coords_from"]
    _check_conventions(s)


def test_visium_h5ad():
    (s,) = read_sections(shared(VISIUM))
    assert s.shape == (49, 1999)
    assert s.uns["napari_brainatlas"]["format"] == "visium-h5ad"
    # spots are 100 um apart centre to centre: nearest-neighbour distance ~ 100 um
    from scipy.spatial import cKDTree

    d, _ = cKDTree(s.obsm["spatial"]).query(s.obsm["spatial"], k=2)
    assert 80 < np.median(d[:, 1]) < 120
    _check_conventions(s)


def test_pixel_size_option_scales_coordinates():
    (a,) = read_sections(shared(SLIDESEQ))
    (b,) = read_sections(shared(SLIDESEQ), pixel_size_um=0.5)
    assert np.allclose(b.obsm["spatial"], 0.5 * a.obsm["spatial"])
    with pytest.raises(BrainAtlasInputError, match="pixel size"):
        read_sections(shared(SLIDESEQ), pixel_size_um=-1)


def test_multisection_h5ad_split_and_roundtrip(tmp_path, demo_sections):
    import anndata as ad

    a, b = demo_sections[0].copy(), demo_sections[1].copy()
    common = a.var_names.intersection(b.var_names)
    both = ad.concat([a[:, common], b[:, common]])
    both.obs["brain_section_label"] = both.obs["section"].astype(str)
    del both.obs["section"]
    both.obs["x"] = both.obsm["spatial"][:, 0]
    both.obs["y"] = both.obsm["spatial"][:, 1]
    del both.obsm["spatial"]
    p = tmp_path / "two.h5ad"
    both.write_h5ad(p)
    secs = read_sections(p)
    assert [s.n_obs for s in secs] == [a.n_obs, b.n_obs]
    assert secs[0].uns["napari_brainatlas"]["coords_from"] == "obs['x'], obs['y']"
    assert np.allclose(secs[1].obsm["spatial"], b.obsm["spatial"])
    # written results are read back unchanged (pixel size not applied twice)
    out = write_h5ad(secs[0], tmp_path / "out" / "s0.h5ad")
    (again,) = read_sections(out)
    assert np.allclose(again.obsm["spatial"], secs[0].obsm["spatial"])


def test_center_xy_columns(tmp_path, demo_sections):
    a = demo_sections[0][:50].copy()
    a.obs["center_x"], a.obs["center_y"] = a.obsm["spatial"].T
    a.obs = a.obs.drop(columns=["x", "y"])
    del a.obsm["spatial"]
    a.uns.pop("napari_brainatlas")
    p = tmp_path / "cxy.h5ad"
    a.write_h5ad(p)
    (s,) = read_sections(p, pixel_size_um=2.0)
    assert np.allclose(s.obsm["spatial"][:, 0], 2 * a.obs["center_x"].to_numpy())


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
def test_bad_input_one_clear_error(tmp_path, case):
    path, words = make_bad_files(tmp_path)[case]
    before = sha1(path)
    with pytest.raises(BrainAtlasInputError) as err:
        read_sections(path)
    msg = str(err.value)
    assert words in msg and "\n" not in msg
    assert sha1(path) == before


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(BrainAtlasInputError, match="not found"):
        read_sections(tmp_path / "nope.h5ad")
    p = tmp_path / "x.xyz"
    p.write_text("1")
    with pytest.raises(BrainAtlasInputError, match="unknown format"):
        read_sections(p)


def test_writer_refuses_to_overwrite_input(tmp_path, demo_sections):
    p = write_h5ad(demo_sections[0], tmp_path / "a.h5ad")
    (s,) = read_sections(p)
    before = sha1(p)
    with pytest.raises(BrainAtlasInputError, match="refusing to overwrite"):
        write_h5ad(s, p)
    assert sha1(p) == before
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
