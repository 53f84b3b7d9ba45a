"""Engine pieces of the 3D atlas view, without Qt: region meshes, picking along a ray,
registered cells gathered in CCF space, the 3D level of detail, the per-cell CCF export
(BrainGlobe asr axes, ABC atlas columns) and the dock's session."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import Atlas, make_demo_atlas
from napari_brainatlas.atlas.meshes import (
    MeshSettings,
    region_mesh,
    region_meshes,
    regions_at_depth,
    structure_on_ray,
)
from napari_brainatlas.cells3d import ccf_points, color_points, shared_keys
from napari_brainatlas.io.ccf_export import ccf_table, write_ccf_table
from napari_brainatlas.lod3d import LevelOfDetail3D, OrthoView
from napari_brainatlas.widgets.atlas3d_session import Atlas3DSession

from ._data import shared


@pytest.fixture(scope="module")
def atlas():
    return make_demo_atlas()


@pytest.fixture(scope="module")
def registered():
    """Demo sections with their true CCF keys (registration itself is tested elsewhere;
    the GUI test uses the pipeline's registration step)."""
    from napari_brainatlas.demo import make_demo_sections

    out = []
    for s in make_demo_sections(seed=0, n_sections=3, cells_per_mm2=60):
        s.obs["ccf_id"] = s.obs["ccf_id_true"].to_numpy().astype(np.int64)
        s.obs["ccf_acronym"] = s.obs["ccf_acronym_true"].astype(str).to_numpy()
        s.obsm["ccf_coords"] = np.asarray(s.obsm["ccf_coords_true"], float)
        s.uns["ccf_registration"] = {"x": {"atlas": "demo"}}
        out.append(s)
    return out


# ---------------------------------------------------------------------- meshes
def test_region_meshes_at_any_depth(atlas):
    onto = atlas.ontology
    majors = regions_at_depth(atlas, 3)
    assert onto.id_of("Isocortex") in majors and onto.id_of("TH") in majors
    layers = regions_at_depth(atlas, 4, within=onto.id_of("Isocortex"))
    assert {onto.acronym(i) for i in layers} >= {"CTX1", "CTX4", "CTX6"}
    iso = region_mesh(atlas, onto.id_of("Isocortex"))
    assert iso.acronym == "Isocortex" and iso.faces.dtype == np.int32
    assert 0 < len(iso.faces) <= MeshSettings().max_faces
    # vertices in CCF um lie on the region's boundary: inside the atlas box, and the
    # region's voxels are within a voxel or two of the surface
    v = iso.vertices
    assert (v >= 0).all() and (v <= atlas.shape_um).all()
    ids = atlas.structure_at(v)
    members = set(onto.descendants(onto.id_of("Isocortex")))
    near = np.isin(ids, list(members))
    assert 0.2 < near.mean() < 0.9  # half inside, half outside the smooth surface
    assert region_mesh(atlas, onto.id_of("Isocortex")) is iso  # cached
    # a parent's surface encloses its children: the whole brain is bigger than a part
    root = region_mesh(atlas, onto.id_of("root"))
    assert np.ptp(root.vertices, 0).prod() > np.ptp(iso.vertices, 0).prod()
    light = region_mesh(atlas, onto.id_of("root"), MeshSettings(max_faces=3000))
    assert len(light.faces) <= 3000 < len(root.faces)  # decimated by a coarser step
    assert region_mesh(atlas, 987654321) is None  # no voxels
    done = []
    got = region_meshes(atlas, majors[:3], progress=lambda d, n, info: done.append((d, n)))
    assert len(got) == 3 and done[-1] == (3, 3)


def test_meshes_on_the_real_ccf():
    path = shared("ccfv3_annotation/annotation_50.nrrd")
    onto = shared("ccfv3_ontology/structure_tree_safe_2017.csv")
    ccf = Atlas.from_nrrd(path, onto)
    hip = ccf.ontology.id_of("HPF")
    assert hip in regions_at_depth(ccf, ccf.ontology.depth(hip))
    m = region_mesh(ccf, hip, MeshSettings(voxel_um=100.0, max_faces=8000))
    assert len(m.faces) <= 8000
    # the hippocampal formation sits in the posterior-dorsal half of the brain
    c = m.vertices.mean(0)
    assert c[0] > ccf.shape_um[0] * 0.4 and c[1] < ccf.shape_um[1] * 0.6


def test_structure_on_ray(atlas):
    onto = atlas.ontology
    # from above, through the left hemisphere at AP 2600: cortex layer 1 first
    sid = structure_on_ray(atlas, (2600, 0, 2500), (0, 1, 0))
    assert onto.ancestor_at_depth(sid, 3) == onto.id_of("Isocortex")
    # the same ray given from below the brain, pointing up: the first hit is ventral
    below = structure_on_ray(atlas, (2600, 5400, 2500), (0, -1, 0))
    assert below != 0 and onto.ancestor_at_depth(below, 3) != onto.id_of("Isocortex")
    assert structure_on_ray(atlas, (2600, 100, -500), (0, 0, -1)) == 0  # misses
    with pytest.raises(BrainAtlasInputError):
        structure_on_ray(atlas, (0, 0, 0), (0, 0, 0))


# ---------------------------------------------------------------------- cells
def test_ccf_points_gathers_and_colours(registered):
    secs = [s.copy() for s in registered]
    del secs[1].obsm["ccf_coords"]  # never registered: left out
    secs[2].obsm["ccf_coords"][:5] = np.nan  # not placed: left out
    pts = ccf_points(secs, "celltype")
    assert pts.n == secs[0].n_obs + secs[2].n_obs - 5
    assert list(np.unique(pts.section)) == [0, 2]
    np.testing.assert_allclose(
        pts.coords[pts.section == 2], secs[2].obsm["ccf_coords"][5:], rtol=1e-6
    )
    assert pts.kind == "categorical" and pts.rgba.shape == (pts.n, 4)
    # one legend over all sections, written to each in the scverse convention
    for s in (secs[0], secs[2]):
        cats = list(s.obs["celltype"].astype("category").cat.categories)
        assert len(s.uns["celltype_colors"]) == len(cats)
    labels, numbers, genes = shared_keys(secs)
    assert "celltype" in labels and "ccf_id" in numbers and len(genes) >= 16
    color_points(pts, secs, genes[0])
    assert pts.kind == "continuous" and pts.clim[1] > pts.clim[0]
    color_points(pts, secs, None)  # one colour per section
    assert len(pts.legend) == 3
    with pytest.raises(BrainAtlasInputError, match="register"):
        ccf_points([secs[1]])


def test_level_of_detail_3d():
    rng = np.random.default_rng(0)
    xyz = rng.random((200_000, 3)).astype(np.float32) * 1000
    lod = LevelOfDetail3D(xyz)
    m = lod.shown_mask(None, 10_000)
    assert 10_000 <= m.sum() <= 12_600  # the budget, rounded up to the ladder
    assert lod.shown_mask(None, 500_000).all()  # under the budget: every cell
    # nested: a cell drawn with a small budget is drawn with a larger one
    assert not (lod.shown_mask(None, 5_000) & ~m).any()
    # a view onto one corner: only cells in it (grown by the margin), all of them when few
    view = OrthoView.from_camera((100, 100, 500), (0, 0, 1), (-1, 0, 0), (100, 100), 1.0)
    inside = view.contains(xyz)
    got = lod.shown_mask(view, 50_000)
    assert got.sum() == inside.sum() and not got[~inside].any()
    # a focus gets most of the budget, the context the rest; clip: only the focus
    focus = xyz[:, 0] < 20  # ~4k cells: fewer than the focus share of the budget
    f = lod.shown_mask(None, 10_000, focus=focus)
    assert f[focus].sum() == focus.sum() and f[~focus].sum() > 0
    assert not lod.shown_mask(None, 10_000, focus=focus, clip=True)[~focus].any()


# ---------------------------------------------------------------------- export
def test_ccf_export_brainglobe_and_abc_columns(registered, tmp_path):
    t = ccf_table(registered, extra_obs=("celltype",))
    n = sum(s.n_obs for s in registered)
    assert len(t) == n
    c = registered[0].obsm["ccf_coords"]
    first = t[t["section"] == registered[0].uns["napari_brainatlas"]["section"]]
    np.testing.assert_allclose(first[["ap_um", "si_um", "rl_um"]], c)
    np.testing.assert_allclose(first[["x_ccf", "y_ccf", "z_ccf"]], c / 1000.0)
    assert list(first["cell_id"]) == list(registered[0].obs_names)
    assert {"ccf_id", "ccf_acronym", "celltype"} <= set(t.columns)
    vox = ccf_table(registered, units="voxel", resolution_um=50.0)
    np.testing.assert_allclose(vox["ap_vox"], t["ap_um"] / 50.0)
    # voxel coordinates index the annotation: the structure there is the cell's
    atlas = make_demo_atlas()
    idx = np.floor(vox[["ap_vox", "si_vox", "rl_vox"]].to_numpy()).astype(int)
    assert (atlas.annotation[tuple(idx.T)] == t["ccf_id"].to_numpy()).mean() > 0.99
    out = write_ccf_table(registered, tmp_path / "cells.csv.gz", atlas_name="demo")
    back = pd.read_csv(out)
    np.testing.assert_allclose(back["x_ccf"], t["x_ccf"], rtol=1e-5)
    info = json.loads((tmp_path / "cells.json").read_text())
    assert info["orientation"] == "asr" and info["rows"] == n and info["atlas"] == "demo"
    with pytest.raises(BrainAtlasInputError, match="resolution"):
        ccf_table(registered, units="voxel")
    with pytest.raises(BrainAtlasInputError, match=".csv"):
        write_ccf_table(registered, tmp_path / "cells.xlsx")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------- session
def test_session_highlight_plane_and_focus(registered, atlas):
    s = Atlas3DSession(atlas, budget=2_000, motion_budget=500)
    s.set_sections(registered + [registered[0][:0].copy()])  # an empty one is dropped
    assert len(s.sections) == 3 and s.default_atlas_name() == "demo"
    pts = s.prepare()
    assert s.color_by == "ccf_acronym" and pts.kind == "categorical"
    iso = atlas.ontology.id_of("Isocortex")
    # atlas colours for CCF structures
    np.testing.assert_allclose(
        pts.legend["CTX1"][:3],
        np.array(atlas.ontology.rgb(atlas.ontology.id_of("CTX1"))) / 255.0,
        atol=1e-6,
    )
    n = s.set_highlight(iso)
    inside = s.region_cells(iso)
    assert n == inside.sum() > 0
    rgba = s.display_rgba()
    assert (rgba[inside, 3] == 1).all() and (rgba[~inside, 3] < 0.5).all()
    shown = s.shown_mask()
    assert shown[inside].sum() >= min(inside.sum(), 1_500) * 0.9  # most of the budget
    assert s.shown_mask(moving=True).sum() < shown.sum()
    assert s.pick((2600, 0, 2500), (0, 1, 0)) == iso
    s.set_highlight(None)
    ap = float(registered[1].uns["demo_truth"]["position_um"])
    s.set_plane(axis=0, position_um=ap, thickness_um=200, mode="clip")
    near = s.near_plane()
    assert near.sum() > 0 and np.all(np.abs(pts.coords[near, 0] - ap) <= 100)
    assert not s.shown_mask()[~near].any()
    s.set_plane(mode="emphasise")
    assert (s.display_rgba()[~near, 3] < 0.5).all()
    assert s.plane_range(0) == (0.0, float(atlas.shape_um[0]))
    with pytest.raises(BrainAtlasInputError):
        s.set_plane(mode="sideways")
    m = s.meshes([iso])
    assert m[0].acronym == "Isocortex"
