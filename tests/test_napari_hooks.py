"""The npe2 manifest and its hooks: reader, writer, sample data, widget contribution.

The viewer tests need a display: ``xvfb-run -a python -m pytest tests/test_napari_hooks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")

from napari_brainatlas._napari import (
    get_reader,
    make_demo_atlas_sample,
    make_demo_sample,
    write_sections,
)
from napari_brainatlas.io import read_sections
from napari_brainatlas.layers import section_layer_data

from ._data import MERFISH, OSMFISH, SLIDESEQ, VISIUM, shared
from .bad_inputs import sha1

PLUGIN = "napari-brainatlas"
DATASETS = {  # rel path, cells, genes, feature columns
    "osmfish": (OSMFISH, 6471, 33, ("ClusterName", "Region")),
    "merfish": (MERFISH, 750, 134, ("nUMI",)),
    "slideseq": (SLIDESEQ, 100, 378, ()),
    "visium": (VISIUM, 49, 1999, ("leiden",)),
}


# ---------------------------------------------------------------------- manifest (no Qt)
def test_manifest_discovered_and_valid():
    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest(PLUGIN)
    assert mf.display_name == "napari-brainatlas"
    npe2.PluginManifest.validate(mf.model_dump() if hasattr(mf, "model_dump") else mf.dict())
    (reader,) = mf.contributions.readers
    assert reader.accepts_directories
    assert {"*.h5ad", "*.loom", "*.csv"} <= set(reader.filename_patterns)
    writers = {w.filename_extensions[0]: w for w in mf.contributions.writers}
    assert set(writers) == {".h5ad", ".zarr"}  # AnnData and SpatialData
    assert all(w.layer_types == ["points+"] for w in writers.values())
    assert "*.zarr" in reader.filename_patterns
    assert {s.display_name for s in mf.contributions.sample_data} >= {"Demo sections"}
    assert "Sections" in {w.display_name for w in mf.contributions.widgets}
    # every command resolves to a Python object
    for cmd in mf.contributions.commands:
        assert callable(cmd.exec) or cmd.python_name
        mod, _, attr = cmd.python_name.partition(":")
        import importlib

        assert hasattr(importlib.import_module(mod), attr), cmd.python_name


def test_get_reader_accepts_only_what_it_can_read(tmp_path):
    for rel in (OSMFISH, MERFISH, VISIUM):
        assert get_reader(str(shared(rel))) is not None
    for name in ("image.tif", "notes.txt.bak", "volume.nrrd", "x.json"):
        p = tmp_path / name
        p.write_bytes(b"x")
        assert get_reader(str(p)) is None
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert get_reader(str(empty)) is None
    assert get_reader([str(shared(VISIUM)), str(tmp_path / "image.tif")]) is None


def test_npe2_reader_path_and_layer_data():
    path = shared(VISIUM)
    readers = list(npe2.PluginManager.instance().iter_compatible_readers([str(path)]))
    assert PLUGIN in {r.plugin_name for r in readers}
    layer_data = npe2.read([str(path)], plugin_name=PLUGIN, stack=False)
    ((data, kwargs, ltype),) = layer_data
    assert ltype == "points" and data.shape == (49, 2)
    ad = kwargs["metadata"]["adata"]
    np.testing.assert_allclose(data, ad.obsm["spatial"][:, ::-1])
    assert kwargs["features"]["cell_id"].tolist() == list(ad.obs_names)
    assert kwargs["border_width"] == 0


def test_section_layer_data_keeps_every_cell_and_categoricals():
    (ad,) = read_sections(shared(OSMFISH))
    data, kwargs, _ = section_layer_data(ad)
    assert len(data) == ad.n_obs == 6471
    feats = kwargs["features"]
    assert str(feats["ClusterName"].dtype) == "category"
    assert list(feats.columns[:1]) == ["cell_id"]
    assert 3 < kwargs["size"] < 30  # about a cell diameter in um
    assert kwargs["face_color"].shape == (6471, 4)


def test_writer_round_trip(tmp_path):
    (ad,) = read_sections(shared(VISIUM))
    data, kwargs, ltype = section_layer_data(ad)
    kwargs["features"]["my_label"] = np.where(np.arange(len(data)) % 2, "a", "b")
    kwargs["features"]["Gfap"] = 1.0  # a hover-only column must not be written
    kwargs["metadata"]["hover_columns"] = ["Gfap"]
    out = tmp_path / "cells.h5ad"
    (written,) = write_sections(str(out), [(data, kwargs, ltype)])
    (back,) = read_sections(written)
    assert back.n_obs == 49 and back.n_vars == 1999
    assert list(back.obs_names) == list(ad.obs_names)
    assert "my_label" in back.obs and "Gfap" not in back.obs
    np.testing.assert_allclose(back.obsm["spatial"], ad.obsm["spatial"])
    np.testing.assert_allclose(
        back.X.toarray() if hasattr(back.X, "toarray") else back.X,
        ad.X.toarray() if hasattr(ad.X, "toarray") else ad.X,
    )
    # the writer refuses to overwrite the file the section came from
    src = shared(VISIUM)
    before = sha1(src)
    from napari_brainatlas import BrainAtlasInputError

    with pytest.raises(BrainAtlasInputError):
        write_sections(str(src), [section_layer_data(read_sections(src)[0])])
    assert sha1(src) == before


def test_writer_several_layers_and_plain_points(tmp_path):
    secs = make_demo_sample(seed=1)[:2]
    written = write_sections(str(tmp_path / "demo.h5ad"), secs)
    assert len(written) == 2 and all(p.endswith(".h5ad") for p in written)
    back = [read_sections(p)[0] for p in written]
    assert [b.n_obs for b in back] == [len(d) for d, _, _ in secs]
    # a Points layer made by hand (no AnnData behind it) is written as positions + features
    import pandas as pd

    pts = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    meta = {"name": "hand", "features": pd.DataFrame({"kind": ["a", "b", "a"]}), "metadata": {}}
    (p,) = write_sections(str(tmp_path / "hand.h5ad"), [(pts, meta, "points")])
    (b,) = read_sections(p)
    np.testing.assert_allclose(b.obsm["spatial"], pts[:, ::-1])
    assert b.obs["kind"].tolist() == ["a", "b", "a"]


def test_demo_samples():
    secs = make_demo_sample()
    assert len(secs) == 4
    for data, kwargs, ltype in secs:
        assert ltype == "points" and len(data) == kwargs["metadata"]["adata"].n_obs
        assert "region" in kwargs["features"]
    ((vol, kw, lt),) = make_demo_atlas_sample()
    assert lt == "labels" and vol.ndim == 3
    ids = set(np.unique(vol).tolist()) - {0}
    assert ids <= set(kw["colormap"])


# ---------------------------------------------------------------------- through napari
@pytest.mark.gui
@pytest.mark.parametrize("key", list(DATASETS))
def test_viewer_open_with_plugin(make_napari_viewer, key):
    rel, n, g, cols = DATASETS[key]
    path = shared(rel)
    before = sha1(path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    (layer,) = layers
    assert layer._type_string == "points"
    ad = layer.metadata["adata"]
    assert len(layer.data) == n and ad.n_obs == n and ad.n_vars == g
    for c in ("cell_id", *cols):
        assert c in layer.features.columns
    assert sha1(path) == before


@pytest.mark.gui
def test_viewer_sample_data_and_widget_contribution(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo_sections")
    assert len(viewer.layers) == 4
    widget_name = "Sections"
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    assert widget.table.rowCount() == 4  # it picks up layers added before it
    # save one layer through napari's writer machinery
    layer = viewer.layers[0]
    out = tmp_path / "one.h5ad"
    viewer.layers.selection = {layer}
    written = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert written and out.exists()
    (back,) = read_sections(out)
    assert back.n_obs == len(layer.data)
    assert set(back.obs.columns) >= {"region", "celltype"}
    viewer.open_sample(PLUGIN, "demo_atlas")
    atlas = viewer.layers[-1]
    assert atlas._type_string == "labels"
    assert type(atlas.colormap).__name__ == "DirectLabelColormap"
    onto = atlas.metadata["atlas"].ontology
    sid = int(np.unique(atlas.data)[1])
    np.testing.assert_allclose(
        atlas.colormap.map(sid)[:3], np.array(onto.rgb(sid)) / 255, atol=1e-6
    )
