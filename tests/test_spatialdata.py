"""SpatialData stores in and out, checked against the spatialdata library itself."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")

from anndata import AnnData
from spatialdata.models import PointsModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, get_transformation

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.io import is_spatialdata_store, read_sections, write_spatialdata

from ._fixtures import register_demo


@pytest.fixture(scope="module")
def registered():
    """The demo sections registered to the demo atlas, with an embedding and a
    transferred label, as the pipeline leaves them."""
    from napari_brainatlas.demo import make_demo_sections

    secs = register_demo(make_demo_sections(seed=0)[:2])
    rng = np.random.default_rng(0)
    secs = [s[np.sort(rng.choice(s.n_obs, 400, replace=False))].copy() for s in secs]
    for s in secs:
        # (zarr writes every uns value as its own array: keep the tests' stores small)
        del s.uns["demo_truth"]
        s.obsm["X_fusemap_cell"] = rng.normal(size=(s.n_obs, 8)).astype(np.float32)
        s.obs["celltype_transfer"] = s.obs["celltype"].astype("category")
        s.obs["celltype_transfer_uncertainty"] = rng.random(s.n_obs)
        s.uns["celltype_transfer_colors"] = ["#1f77b4"] * len(
            s.obs["celltype_transfer"].cat.categories
        )
    return secs


@pytest.fixture(scope="module")
def store(registered, tmp_path_factory):
    return write_spatialdata(registered, tmp_path_factory.mktemp("sd") / "cells.zarr")


def _same_section(a: AnnData, b: AnnData) -> None:
    np.testing.assert_array_equal(b.obsm["spatial"], a.obsm["spatial"])
    assert list(b.var_names) == list(a.var_names)
    assert list(b.obs_names) == list(a.obs_names)
    xa = a.X.toarray() if sp.issparse(a.X) else a.X
    xb = b.X.toarray() if sp.issparse(b.X) else b.X
    np.testing.assert_array_equal(xb, xa)
    pd.testing.assert_frame_equal(b.obs, a.obs, check_categorical=True)
    for key in ("ccf_coords", "X_fusemap_cell"):
        np.testing.assert_array_equal(b.obsm[key], a.obsm[key])
    assert "counts" in b.layers
    assert set(b.uns["ccf_registration"]) == set(a.uns["ccf_registration"])
    assert list(b.uns["celltype_transfer_colors"]) == list(a.uns["celltype_transfer_colors"])


@pytest.mark.parametrize("shapes", ["circles", "points"])
def test_round_trip_ours_spatialdata_ours(registered, store, tmp_path, shapes):
    if shapes == "points":
        path = write_spatialdata(registered, tmp_path / "cells.zarr", shapes=shapes)
    else:
        path = store
    assert is_spatialdata_store(path)
    sdata = sd.read_zarr(path)  # the library itself opens it
    names = [s.uns["napari_brainatlas"]["section"] for s in registered]
    elements = sdata.points if shapes == "points" else sdata.shapes
    assert sorted(elements) == sorted(names)
    assert sorted(sdata.tables) == sorted(f"table_{n}" for n in names)
    for s, n in zip(registered, names):
        table = sdata.tables[f"table_{n}"]
        attrs = table.uns["spatialdata_attrs"]
        assert attrs["region"] == n and table.n_obs == s.n_obs
        assert list(table.obs[attrs["instance_key"]]) == list(range(s.n_obs))
        assert isinstance(get_transformation(elements[n], "global"), Identity)
        if shapes == "circles":
            el = elements[n]
            np.testing.assert_array_equal(
                np.column_stack([el.geometry.x, el.geometry.y]), s.obsm["spatial"]
            )
            assert (el["radius"] > 0).all()
    back = read_sections(path)
    assert [b.uns["napari_brainatlas"]["section"] for b in back] == names
    for a, b in zip(registered, back):
        _same_section(a, b)
        meta = b.uns["napari_brainatlas"]
        assert meta["format"] == "spatialdata" and meta["pixel_size_um"] == 1.0
        assert "coordinate system 'global'" in meta["coords_from"]
        assert "spatialdata_attrs" not in b.uns


def _foreign_store(path: Path, rng) -> dict:
    """A store written by spatialdata's own API: circles (pixels, scale 0.5 um/px,
    ids from 100), 3D points (scale 2) and polygons, one table annotating all three
    (rows shuffled) and a second table annotating the circles again. (Labels elements
    are not written here: spatialdata 0.7.0 cannot write images with the dask that
    brainglobe-atlasapi needs; this package never writes any.)"""
    n1, n2, n3, g = 30, 20, 6, 5
    xy1 = rng.random((n1, 2)) * 1000
    circles = ShapesModel.parse(
        xy1,
        geometry=0,
        radius=np.full(n1, 8.0),
        index=np.arange(100, 100 + n1),
        transformations={"global": Scale([0.5, 0.5], axes=("x", "y"))},
    )
    xyz2 = rng.random((n2, 3)) * 500
    points = PointsModel.parse(
        pd.DataFrame(xyz2, columns=["x", "y", "z"]),
        transformations={"global": Scale([2.0, 2.0, 1.0], axes=("x", "y", "z"))},
    )
    from geopandas import GeoDataFrame
    from shapely.geometry import box

    corners = rng.random((n3, 2)) * 300
    polys = ShapesModel.parse(
        GeoDataFrame(geometry=[box(x, y, x + 10, y + 20) for x, y in corners]),
        transformations={"global": Identity()},
    )
    region = np.array(["cells_a"] * n1 + ["cells_b"] * n2 + ["cells_c"] * n3)
    ids = np.r_[np.arange(100, 100 + n1), np.arange(n2), np.arange(n3)]
    order = rng.permutation(len(region))
    X = rng.poisson(2.0, (len(region), g)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(region[order]),
            "cell_id": ids[order],
            "celltype": pd.Categorical(rng.choice(["A", "B", "C"], len(region))),
        },
        index=[f"c{i}" for i in range(len(region))],
    )
    var = pd.DataFrame(index=[f"gene{i}" for i in range(g)])
    table = TableModel.parse(
        AnnData(X=X[order], obs=obs, var=var),
        region=["cells_a", "cells_b", "cells_c"],
        region_key="region",
        instance_key="cell_id",
    )
    obs2 = pd.DataFrame(
        {"region": pd.Categorical(["cells_a"] * n1), "cell_id": np.arange(100, 100 + n1)},
        index=[f"d{i}" for i in range(n1)],
    )
    table2 = TableModel.parse(
        AnnData(X=np.ones((n1, 2), np.float32), obs=obs2),
        region="cells_a",
        region_key="region",
        instance_key="cell_id",
    )
    sdata = sd.SpatialData(
        shapes={"cells_a": circles, "cells_c": polys},
        points={"cells_b": points},
        tables={"table": table, "table2": table2},
    )
    sdata.write(path)
    return {"xy1": xy1, "xyz2": xyz2, "corners": corners, "X": X[order], "obs": obs}


def test_store_written_by_spatialdata_opens_as_sections(tmp_path):
    path = tmp_path / "foreign.zarr"
    truth = _foreign_store(path, np.random.default_rng(1))
    secs = {s.uns["napari_brainatlas"]["section"]: s for s in read_sections(path)}
    assert sorted(secs) == ["cells_a", "cells_b", "cells_c", "table2:cells_a"]
    obs = truth["obs"]
    for name, scale, coords in (
        ("cells_a", 0.5, lambda ids: truth["xy1"][ids - 100]),
        ("cells_b", 2.0, lambda ids: truth["xyz2"][ids, :2]),
        ("cells_c", 1.0, lambda ids: truth["corners"][ids] + [5.0, 10.0]),
    ):
        s = secs[name]
        rows = np.flatnonzero(obs["region"].to_numpy() == name)
        ids = obs["cell_id"].to_numpy()[rows]
        assert list(s.obs_names) == list(obs.index[rows])  # table row order kept
        np.testing.assert_allclose(s.obsm["spatial"], coords(ids) * scale)
        np.testing.assert_array_equal(s.X, truth["X"][rows])
        assert list(s.var_names) == [f"gene{i}" for i in range(5)]
        assert list(s.obs["celltype"]) == list(obs["celltype"].to_numpy()[rows])
        assert "counts" in s.layers  # integer counts kept as counts
        meta = s.uns["napari_brainatlas"]
        assert meta["spatialdata"]["table"] == "table"
        assert meta["spatialdata"]["element"] == name
    m = secs["cells_a"].uns["napari_brainatlas"]
    assert "circle centres" in m["coords_from"] and m["spatialdata"]["transformation"][0][0] == 0.5
    assert "z dropped" in secs["cells_b"].uns["napari_brainatlas"]["coords_from"]
    assert "polygon centroids" in secs["cells_c"].uns["napari_brainatlas"]["coords_from"]
    # a pixel size scales the coordinate system's units to um
    scaled = {s.uns["napari_brainatlas"]["section"]: s for s in read_sections(path, 3.0)}
    for name, s in secs.items():
        np.testing.assert_allclose(scaled[name].obsm["spatial"], s.obsm["spatial"] * 3.0)


def test_info_understands_zarr(registered, store, capsys):
    from napari_brainatlas.cli import main

    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "2 section(s), format spatialdata" in out
    for s in registered:
        assert f"{s.uns['napari_brainatlas']['section']}: {s.n_obs} cells" in out


# ---------------------------------------------------------------------- bad stores
def test_bad_stores_give_one_clear_error(tmp_path, registered):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(BrainAtlasInputError, match="empty.zarr"):
        read_sections(empty)
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    with pytest.raises(BrainAtlasInputError, match="junk.zarr"):
        read_sections(junk)
    # a store without tables
    no_tab = tmp_path / "notable.zarr"
    sd.SpatialData(
        shapes={"c": ShapesModel.parse(np.ones((3, 2)), geometry=0, radius=np.ones(3))}
    ).write(no_tab)
    with pytest.raises(BrainAtlasInputError, match="no table"):
        read_sections(no_tab)
    # a table whose instance ids match nothing in its element
    bad_ids = tmp_path / "badids.zarr"
    obs = pd.DataFrame(
        {"region": pd.Categorical(["c"] * 3), "cell_id": [7, 8, 9]}, index=["a", "b", "d"]
    )
    t = TableModel.parse(
        AnnData(np.ones((3, 1), np.float32), obs=obs),
        region="c",
        region_key="region",
        instance_key="cell_id",
    )
    sd.SpatialData(
        shapes={"c": ShapesModel.parse(np.ones((3, 2)), geometry=0, radius=np.ones(3))},
        tables={"table": t},
    ).write(bad_ids)
    with pytest.raises(BrainAtlasInputError, match="no row of table 'table' matches"):
        read_sections(bad_ids)
    with pytest.raises(BrainAtlasInputError, match="file not found"):
        read_sections(tmp_path / "missing.zarr")


def test_writer_is_atomic_and_never_overwrites_an_input(registered, tmp_path):
    path = write_spatialdata(registered[0], tmp_path / "cells.zarr")
    assert list(sd.read_zarr(path).tables) == ["table"]  # one section: 'table'
    with pytest.raises(BrainAtlasInputError, match="exists"):
        write_spatialdata(registered, path)
    back = read_sections(path)
    _same_section(registered[0], back[0])
    with pytest.raises(BrainAtlasInputError, match="input"):  # read from it: never over it
        write_spatialdata(back, path, overwrite=True)
    with pytest.raises(BrainAtlasInputError, match=".zarr folder"):
        write_spatialdata(registered, tmp_path / "cells.h5ad")
    # a failing write leaves the previous store and no temporary folder behind
    before = sorted(os.listdir(path))
    bad = registered[0].copy()
    bad.uns["not_writable"] = object()
    with pytest.raises(BrainAtlasInputError, match="cannot"):
        write_spatialdata([bad], path, overwrite=True)
    assert sorted(os.listdir(path)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cells.zarr"]
    # overwrite replaces the store
    write_spatialdata(registered, path, overwrite=True)
    assert len(read_sections(path)) == 2
    bad_xy = registered[0].copy()
    bad_xy.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(BrainAtlasInputError, match="NaN"):
        write_spatialdata(bad_xy, tmp_path / "nan.zarr")


# ---------------------------------------------------------------------- napari hooks
def test_napari_reader_and_writer_hooks(registered, tmp_path):
    from napari_brainatlas._napari import get_reader, write_spatialdata_layers
    from napari_brainatlas.layers import section_layer_data

    layers = [section_layer_data(s) for s in registered]
    (out,) = write_spatialdata_layers(str(tmp_path / "from_layers"), layers)
    assert out.endswith("from_layers.zarr")
    reader = get_reader(out)
    assert reader is not None
    got = reader(out)
    assert [kw["name"] for _, kw, _ in got] == [kw["name"] for _, kw, _ in layers]
    for (d0, kw0, _), (d1, kw1, t1) in zip(layers, got):
        assert t1 == "points"
        np.testing.assert_array_equal(d1, d0)
        ad = kw1["metadata"]["adata"]
        np.testing.assert_array_equal(
            ad.obsm["ccf_coords"], kw0["metadata"]["adata"].obsm["ccf_coords"]
        )
