"""QC of a registration that can fail visibly, unit and crop checks, the start pose,
series interpolation and the QuickNII export - all without Qt.

Demo sections (generated) for the checks that need a section; the real Allen CCFv3 at
50 um (../shared/data) for the QuickNII vectors when present.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.register import RegistrationResult, register_section
from napari_brainatlas.workflows import register as wf
from napari_brainatlas.workflows.register_checks import (
    check_units,
    fitted_scale,
    partial_reason,
    scale_warning,
)
from napari_brainatlas.workflows.register_qc import (
    AGREE,
    DISAGREE,
    MAJOR,
    NO_LABEL,
    checkerboard,
    compare_columns,
    default_compare_column,
    label_agreement,
    level_ids,
    outline_image,
    section_label_image,
)

from ._data import shared


@pytest.fixture(scope="module")
def sections():
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=4, cells_per_mm2=100)


@pytest.fixture(scope="module")
def atlas():
    from napari_brainatlas.atlas import make_demo_atlas

    return make_demo_atlas()


def _truth(a):
    return a.uns["demo_truth"]


def _landed(res, atlas, a):
    xy = np.asarray(a.obsm["spatial"], float)
    return res.slice_of(atlas).labels_at(res.transform(xy))


# ---------------------------------------------------------------------- agreement
def test_agreement_drops_at_a_wrong_position(sections, atlas):
    """A section fitted 1 mm off its plane: the own 'region' labels (CCF acronyms)
    disagree with where the cells landed; the per-label table says which."""
    a = sections[1]
    t = _truth(a)
    out = {}
    for off in (0.0, 1000.0):
        res = register_section(
            a, atlas, "coronal", t["position_um"] + off, t["hemisphere"], midline=t["midline"]
        )
        out[off] = label_agreement(
            a.obs["region"].to_numpy(), _landed(res, atlas, a), atlas.ontology, column="region"
        )
    right, wrong = out[0.0], out[1000.0]
    assert right.mode == "ccf" and right.level == MAJOR
    assert right.overall > 0.85
    assert wrong.overall < right.overall - 0.2
    worst = wrong.worst(min_cells=20)
    assert worst["agree"].iloc[0] < 0.5  # some label mostly landed elsewhere
    assert set(right.table.columns) == {"label", "cells", "agree", "landed mostly in"}
    assert right.table["cells"].sum() == right.n_labelled == a.n_obs
    hover = right.hover()
    assert set(hover) == {"region", "landed region", "agreement"}
    assert set(np.unique(hover["agreement"])) <= {"agree", "disagree", "no label"}
    assert "region" in right.summary() and "%" in right.summary()


def test_agreement_levels_and_other_labels(atlas):
    onto = atlas.ontology
    ctx = [onto.id_of(a) for a in ("CTX1", "CTX5")]
    iso, str_ = onto.id_of("Isocortex"), onto.id_of("STR")
    landed = np.array([ctx[0], ctx[0], ctx[1], str_, 0, str_])
    own = np.array(["CTX1", "CTX5", "Isocortex", "Isocortex", "STR", "nan"], dtype=object)
    # at the major divisions CTX1 and CTX5 are both Isocortex
    ag = label_agreement(own, landed, onto, level=MAJOR)
    assert list(ag.status) == [AGREE, AGREE, AGREE, DISAGREE, DISAGREE, NO_LABEL]
    assert ag.landed[4] == "outside"
    # at the finest level a layer-5 cell in layer 1 disagrees
    fine = label_agreement(own, landed, onto, level="finest")
    assert fine.status[1] == DISAGREE and fine.status[2] == AGREE
    assert level_ids(onto, np.array([ctx[0], 0]), MAJOR).tolist() == [iso, 0]
    # labels that are not atlas acronyms: side by side, consistency with the main region
    types = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    cons = label_agreement(types, np.array([str_, str_, iso, iso, iso, str_]), onto)
    assert cons.mode == "consistency"
    assert list(cons.status) == [AGREE, AGREE, DISAGREE, AGREE, AGREE, DISAGREE]
    assert cons.table.set_index("label").loc["a", "landed mostly in"].startswith("STR")
    with pytest.raises(ValueError):
        label_agreement(types, landed[:3], onto)


def test_compare_columns_prefer_acronyms(sections, atlas):
    a = sections[0]
    cols = compare_columns(a)
    assert cols[0] == "region" and "celltype" in cols and "section" not in cols
    assert default_compare_column(a, atlas.ontology) == "region"
    b = a.copy()
    del b.obs["region"], b.obs["region_fine"]
    b.obs["tissue"] = a.obs["region"].astype(str).to_numpy()
    assert default_compare_column(b, atlas.ontology) == "tissue"


def test_outline_level_checkerboard_and_section_image(atlas):
    from napari_brainatlas.register.slices import atlas_slice

    sl = atlas_slice(atlas, "coronal", 4000.0)
    fine = outline_image(sl.labels, atlas.ontology, "finest")
    major = outline_image(sl.labels, atlas.ontology, MAJOR)
    assert major.sum() < fine.sum()  # major divisions: fewer, coarser outlines
    assert set(np.unique(major)) <= {0, 1}
    a = np.zeros((8, 8), int)
    b = np.ones((8, 8), int)
    cb = checkerboard(a, b, 2)
    assert cb[0, 0] == 0 and cb[0, 2] == 1 and cb[2, 2] == 0 and cb.sum() == 32
    with pytest.raises(ValueError):
        checkerboard(a, b[:4], 2)
    xy = np.array([[125.0, 75.0], [1000.0, 1000.0]])
    img = section_label_image(xy, np.array([7, 9]), (40, 40), 50.0, radius_um=60.0)
    assert img[1, 2] == 7 and img[20, 20] == 9 and img[39, 0] == 0


# ---------------------------------------------------------------------- units, crops, scale
def test_units_warning_suggests_the_pixel_size(sections, atlas):
    a = sections[0]
    assert check_units(a, atlas).plausible
    px = a.copy()  # read as um although the coordinates are 0.2 um pixels
    px.obsm["spatial"] = np.asarray(a.obsm["spatial"]) / 0.2
    px.uns["napari_brainatlas"] = {**a.uns["napari_brainatlas"], "pixel_size_um": 1.0}
    chk = check_units(px, atlas, name="S1")
    assert not chk.plausible and "larger than the whole brain" in chk.problem
    assert chk.pixel_size_um == pytest.approx(0.2, rel=0.15)
    assert "S1 spans" in chk.message and "pixel size of about 0.2" in chk.message
    mm = a.copy()  # millimetres read as um
    mm.obsm["spatial"] = np.asarray(a.obsm["spatial"]) / 1000.0
    mm.uns["napari_brainatlas"] = {**a.uns["napari_brainatlas"], "pixel_size_um": 1.0}
    chk = check_units(mm, atlas)
    assert not chk.plausible and chk.pixel_size_um == pytest.approx(1000.0, rel=0.3)
    assert "um" in chk.message


def test_partial_section_is_flagged(sections, atlas):
    a = sections[2]
    t = _truth(a)
    assert partial_reason(a, atlas, "coronal", t["position_um"], t["hemisphere"]) is None
    xy = np.asarray(a.obsm["spatial"], float)
    c = np.median(xy, axis=0)
    crop = a[(np.abs(xy - c) < 700).all(axis=1)].copy()
    why = partial_reason(crop, atlas, "coronal", t["position_um"], t["hemisphere"])
    assert why is not None and why.startswith("looks partial")
    px = a.copy()
    px.obsm["spatial"] = xy * 6
    assert partial_reason(px, atlas, "coronal", t["position_um"]).startswith("units look wrong")


def test_scale_is_reported_and_warned(sections, atlas):
    a = sections[0]
    t = _truth(a)
    reg = wf.register_one(
        a, atlas, plane="coronal", position_um=t["position_um"], midline=t["midline"]
    )
    assert 0.8 < reg.scale < 1.25
    assert any("scale" in line for line in reg.summary())
    assert scale_warning(reg.result) is None
    res = RegistrationResult(
        atlas="demo",
        atlas_version="",
        plane="coronal",
        position_um=1.0,
        hemisphere="both",
        affine=[[0.2, 0, 0], [0, 0.2, 0], [0, 0, 1]],
    )
    assert fitted_scale(res) == pytest.approx(0.2)
    w = scale_warning(res)
    assert w is not None and "0.20" in w and "pixel size of about 0.2" in w


# ---------------------------------------------------------------------- start pose
def test_start_pose_rescues_wrong_units_and_composes_back(sections, atlas):
    """A section in 0.25 um pixels, registered with a start pose of scale 0.25: the
    result maps the original coordinates (affine composed back) near the truth."""
    from napari_brainatlas.workflows.register_pose import StartPose, placement, pose_midline

    a = sections[0]
    t = _truth(a)
    px = a.copy()
    px.obsm["spatial"] = np.asarray(a.obsm["spatial"], float) * 4.0
    mid = np.asarray(t["midline"], float) * 4.0
    reg = wf.register_one(
        px,
        atlas,
        plane="coronal",
        position_um=t["position_um"],
        midline=mid,
        start_pose={"rotation_deg": 0.0, "scale": 0.25},
    )
    err = np.linalg.norm(reg.adata.obsm["ccf_coords"] - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 120.0
    assert reg.scale == pytest.approx(0.25 * t["scale"], rel=0.1)
    assert np.allclose(reg.result.midline, mid, atol=1e-6)  # in the section's own frame
    assert any(n.startswith("start pose") for n in reg.result.notes)
    # the pose's placement puts a full section's centroid on the template's midline
    xy = np.asarray(a.obsm["spatial"], float)
    pose = StartPose(rotation_deg=-t["rotation_deg"])
    M = placement(xy, atlas, "coronal", t["position_um"], "both", (0, 0), pose)
    z = xy @ M[:2, :2].T + M[:2, 2]
    assert z[:, 0].mean() == pytest.approx(atlas.midline_ml_um)
    line = pose_midline(xy, atlas, "coronal", t["position_um"], "both", (0, 0), pose)
    assert line.shape == (2, 2)
    with pytest.raises(BrainAtlasInputError):
        StartPose(scale=0.0)


# ---------------------------------------------------------------------- series
def test_series_interpolation_places_the_rest(sections, atlas):
    from napari_brainatlas.workflows.sections import section_names

    names = section_names(sections)
    known = {n: (_truth(a)["position_um"], (1.0, -2.0)) for n, a in zip(names, sections)}
    plan = wf.interpolate_series(
        sections, {names[0]: known[names[0]], names[3]: known[names[3]]}, atlas=atlas
    )
    assert plan.unplaced() == names[1:3] and plan.spacing == "composition"
    pos = plan.positions_um
    assert pos[0] == 2600.0 and pos[3] == 5600.0 and 2600 < pos[1] < pos[2] < 5600
    for i in (1, 2):
        assert abs(pos[i] - _truth(sections[i])["position_um"]) < 600
    assert np.allclose(plan.angles_deg, [[1.0, -2.0]] * 4)
    assert len(plan.lines()) == 4
    # past the ends: extrapolated with the nearest pair's slope
    tail = wf.interpolate_series(
        sections, {names[0]: known[names[0]], names[1]: known[names[1]]}, atlas=atlas
    )
    assert tail.positions_um[3] > tail.positions_um[2] > 3600
    # without labels: equal steps
    bare = [s.copy() for s in sections]
    del bare[2].obs["region"]
    eq = wf.interpolate_series(bare, {names[0]: known[names[0]], names[3]: known[names[3]]})
    assert eq.spacing == "equal" and np.allclose(np.diff(eq.positions_um), 1000.0)
    with pytest.raises(BrainAtlasInputError, match="at least two"):
        wf.interpolate_series(sections, {names[0]: known[names[0]]})


# ---------------------------------------------------------------------- QuickNII
@pytest.fixture(scope="module")
def ccf50():
    from napari_brainatlas.atlas import Atlas

    ann = shared("ccfv3_annotation/annotation_50.nrrd")
    onto = shared("ccfv3_ontology/structure_tree_safe_2017.csv")
    if not ann.exists() or not onto.exists():
        pytest.skip("CCFv3 50 um annotation not found")
    return Atlas.load(ann, ontology=onto)


def _result(**kw):
    d = dict(
        atlas="annotation_50",
        atlas_version="",
        plane="coronal",
        position_um=5000.0,
        hemisphere="both",
        affine=np.eye(3).tolist(),
        section="s1",
    )
    d.update(kw)
    return RegistrationResult(**d)


def test_quicknii_vectors_of_a_known_slice(ccf50):
    """A coronal section at AP 5000 um drawn 1:1 on the atlas slice: QuickNII's RAS voxel
    grid (25 um, 456 x 528 x 320) gives o = (0, 528 - 200, 320), u along x, v down z."""
    from napari_brainatlas.io.quicknii import (
        QUICKNII_CCF_TARGET,
        SectionFrame,
        quicknii_slice,
        quicknii_target,
        section_frame,
        voxel_to_ccf,
    )

    assert quicknii_target(ccf50).name == QUICKNII_CCF_TARGET
    frame = SectionFrame((0.0, 0.0), 25.0, 456, 320)
    s = quicknii_slice(_result(), ccf50, np.array([[0.0, 0.0], [11400.0, 8000.0]]), frame=frame)
    assert s["width"] == 456 and s["height"] == 320 and "markers" not in s
    assert np.allclose(s["anchoring"], [0, 328, 320, 456, 0, 0, 0, 0, -320])
    # any affine and tilt: o + s u + t v is the cell's CCF position
    res = _result(
        position_um=6000.0,
        affine=[[0.9, -0.3, 2000.0], [0.25, 0.95, 500.0], [0, 0, 1]],
        angles_deg=[3.0, -2.0],
    )
    xy = np.random.default_rng(0).uniform(0, 6000, (300, 2))
    s = quicknii_slice(res, ccf50, xy)
    o, u, v = np.split(np.asarray(s["anchoring"]), 3)
    fr = section_frame(xy)
    st = fr.to_px(xy) / [fr.width, fr.height]
    q = o + st[:, :1] * u + st[:, 1:] * v
    got = voxel_to_ccf(q, quicknii_target(ccf50))
    assert np.abs(got - res.to_ccf(xy, ccf50)).max() < 1e-6


def test_quicknii_file_markers_and_other_atlases(tmp_path, sections, atlas):
    from napari_brainatlas.io.quicknii import read_quicknii, section_frame, write_quicknii

    a = sections[0]
    t = _truth(a)
    reg = wf.register_one(
        a,
        atlas,
        plane="coronal",
        position_um=t["position_um"],
        midline=t["midline"],
        nonlinear=True,
    )
    xy = np.asarray(a.obsm["spatial"], float)
    paths = write_quicknii(tmp_path / "series.json", [(reg.result, xy)], atlas)
    assert paths[0].name == "series.json" and paths[1].suffix == ".png" and paths[1].exists()
    doc = read_quicknii(paths[0])
    assert doc["target"] == "demo" and doc["target-resolution"] == [160, 160, 110]
    (sl,) = doc["slices"]
    assert sl["filename"] == paths[1].name and sl["nr"] == 1
    if reg.result.warp:
        # each marker: the linear anchoring's overlay point (x, y) shows the atlas
        # position the warped fit gives the section pixel (nx, ny)
        fr = section_frame(xy)
        A = np.asarray(reg.result.affine, float)
        for x, y, nx, ny in sl["markers"]:
            lin = fr.to_um([[x, y]]) @ A[:2, :2].T + A[:2, 2]
            assert np.allclose(lin, reg.result.transform(fr.to_um([[nx, ny]])), atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(BrainAtlasInputError):
        write_quicknii(tmp_path / "series.txt", [(reg.result, xy)], atlas)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"slices": [{"anchoring": [1, 2]}]}))
    with pytest.raises(BrainAtlasInputError):
        read_quicknii(bad)
