"""Automatic midline on sections cut from the real CCFv3 (50 um): the symmetry axis of
full coronal sections, the cut edge of hemisections, the DV axis of sagittal sections."""

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.atlas import Atlas
from napari_brainatlas.demo.ccf_sections import CCFExpressionModel, SectionSpec, make_ccf_section
from napari_brainatlas.register.ccf_levels import ccf_level_labels
from napari_brainatlas.register.metrics import label_division_index
from napari_brainatlas.register.midline_estimate import estimate_midline, midline_error
from napari_brainatlas.register.settings import MidlineSettings, RegistrationSettings

from ._data import CCF50, ONTO_CSV, shared

#: what every test section shares (cells, frame distortion, warp, dropped cells)
COMMON = {"n_cells": 2500, "scale": 1.2, "shear": 0.03, "warp_um": 40.0, "drop_fraction": 0.05}


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


@pytest.fixture(scope="module")
def sections(ccf50):
    model = CCFExpressionModel(ccf50, 0)
    specs = [
        SectionSpec(
            plane="coronal",
            position_um=5400.0,
            rotation_deg=70.0,
            angles_deg=(1.5, -1.0),
            tear_fraction=0.05,
            seed=1,
            name="full_a",
            **COMMON,
        ),
        SectionSpec(
            plane="coronal",
            position_um=8600.0,
            rotation_deg=-140.0,
            seed=2,
            name="full_b",
            **COMMON,
        ),
        SectionSpec(
            plane="coronal",
            position_um=4200.0,
            hemisphere="left",
            rotation_deg=25.0,
            mirror=True,
            tear_fraction=0.08,
            seed=3,
            name="left",
            **COMMON,
        ),
        SectionSpec(
            plane="coronal",
            position_um=7600.0,
            hemisphere="right",
            rotation_deg=-95.0,
            angles_deg=(-2.0, 1.0),
            seed=4,
            name="right",
            **COMMON,
        ),
        SectionSpec(
            plane="sagittal",
            position_um=3600.0,
            rotation_deg=160.0,
            mirror=True,
            seed=5,
            name="sag",
            **COMMON,
        ),
    ]
    return {s.name: make_ccf_section(ccf50, s, model) for s in specs}


def _estimate(a, atlas, level="fine", **kw):
    tr = a.uns["demo_truth"]
    lab = None if level is None else ccf_level_labels(atlas, a.obs["ccf_id_true"].to_numpy(), level)
    e = estimate_midline(
        a.obsm["spatial"],
        lab,
        atlas,
        level=level or "division",
        plane=tr["plane"],
        hemisphere=tr["hemisphere"],
        **kw,
    )
    return e, midline_error(e, tr["midline"], tr["plane"])


@pytest.mark.parametrize("name", ["full_a", "full_b", "left", "right"])
def test_coronal_midline_recovered(ccf50, sections, name):
    e, err = _estimate(sections[name], ccf50)
    assert err["angle_deg"] < 4.0, err  # direction, dorsal end first
    assert err["offset_um"] < 120.0, err
    assert e.method == ("symmetry" if name.startswith("full") else "cut_edge")
    assert e.dorsal_from == "labels" and 0.5 <= e.confidence <= 1.0
    assert e.midline.shape == (2, 2) and np.isfinite(e.midline).all()


def test_division_labels_and_weights(ccf50, sections):
    a = sections["right"]
    div = label_division_index(ccf50, a.obs["ccf_division_true"].astype(str).to_numpy())
    w = np.random.default_rng(0).uniform(0.3, 1.0, a.n_obs)
    tr = a.uns["demo_truth"]
    e = estimate_midline(
        a.obsm["spatial"], div, ccf50, plane="coronal", hemisphere="right", weights=w
    )
    err = midline_error(e, tr["midline"])
    assert err["angle_deg"] < 4.0 and err["offset_um"] < 120.0


def test_sagittal_dv_axis(ccf50, sections):
    e, err = _estimate(sections["sag"], ccf50)
    assert e.method == "dv_axis" and err["angle_deg"] < 8.0
    e0, _ = _estimate(sections["sag"], ccf50, level=None)
    assert e0.confidence == 0.0  # no labels: the direction is a guess


def test_shape_only_hemisection_finds_the_line(ccf50, sections):
    e, err = _estimate(sections["left"], ccf50, level=None)
    # without labels the dorsal end is a guess from the shape, the line is still found
    assert min(err["angle_deg"], 180.0 - err["angle_deg"]) < 4.0
    assert err["offset_um"] < 120.0
    assert e.dorsal_from == "shape" and e.confidence <= 0.5


def test_bad_input(ccf50):
    with pytest.raises(BrainAtlasInputError):
        estimate_midline(np.zeros((5, 2)))
    xy = np.random.default_rng(0).random((100, 2)) * 1000
    with pytest.raises(BrainAtlasInputError):
        estimate_midline(xy, np.zeros(100, dtype=int))  # labels need the atlas
    with pytest.raises(BrainAtlasInputError):
        estimate_midline(xy, plane="axial")
    # unknown labels are ignored: the estimate falls back to the shape
    e = estimate_midline(xy, np.array(["no such"] * 100), ccf50)
    assert e.dorsal_from == "shape"


def test_symmetry_labels_of_another_level(ccf50, sections):
    a = sections["full_b"]
    ids = a.obs["ccf_id_true"].to_numpy()
    tr = a.uns["demo_truth"]
    e = estimate_midline(
        a.obsm["spatial"],
        ccf_level_labels(ccf50, ids, "division"),
        ccf50,
        symmetry_labels=ccf_level_labels(ccf50, ids, 6),
    )
    err = midline_error(e, tr["midline"])
    assert err["angle_deg"] < 4.0 and err["offset_um"] < 120.0 and e.method == "symmetry"


@pytest.fixture(scope="module")
def torn_left(ccf50):
    """A left hemisection whose ventral part was torn off along a straight line: the
    torn edge is as straight as the cut, and longer."""
    spec = SectionSpec(
        plane="coronal", position_um=4200.0, hemisphere="left", rotation_deg=25.0, seed=3,
        name="torn", **COMMON,
    )  # fmt: skip
    a = make_ccf_section(ccf50, spec, CCFExpressionModel(ccf50, 0))
    t = np.asarray(a.uns["demo_truth"]["midline"], float)
    depth = (a.obsm["spatial"] - t[0]) @ ((t[1] - t[0]) / np.linalg.norm(t[1] - t[0]))
    b = a[depth <= np.quantile(depth, 0.8)].copy()
    b.obs["division"] = ccf_level_labels(ccf50, b.obs["ccf_id_true"].to_numpy(), "division")
    return b


def test_a_torn_straight_edge_keeps_the_cut_as_an_alternative(ccf50, torn_left):
    b = torn_left
    tr = b.uns["demo_truth"]
    args = (b.obsm["spatial"], b.obs["division"].to_numpy(), ccf50)
    e = estimate_midline(*args, plane="coronal", hemisphere="left")
    # the torn edge wins on the outline alone; the true cut is the runner-up
    assert midline_error(e, tr["midline"])["angle_deg"] > 45.0
    assert len(e.alternatives) == 1
    alt = e.alternatives[0]
    assert alt.shape == (2, 2) and np.isfinite(alt).all()
    err = midline_error(alt, tr["midline"])
    assert err["angle_deg"] < 4.0 and err["offset_um"] < 120.0, err
    # none kept when asked for none, nor without labels (nothing can tell them apart)
    none = MidlineSettings(alternative_ratio=1.0)
    assert (
        estimate_midline(*args, plane="coronal", hemisphere="left", settings=none).alternatives
        == []
    )
    assert (
        estimate_midline(b.obsm["spatial"], plane="coronal", hemisphere="left").alternatives == []
    )
    with pytest.raises(BrainAtlasInputError):
        MidlineSettings(alternative_ratio=0.0)


def test_register_keeps_the_midline_hypothesis_with_the_better_plane(ccf50, torn_left):
    from napari_brainatlas.register import register_section

    b = torn_left
    tr = b.uns["demo_truth"]
    # no clicks: the position is scanned, the midline estimated (the torn edge first)
    res = register_section(b, ccf50, "coronal", None, "left", "auto", region_key="division")
    assert res.metrics["midline_hypotheses"] == 2.0
    # the runner-up (the true cut) fits the labels better and is kept
    assert res.metrics["midline_hypothesis_kept"] == 1.0
    assert res.metrics["midline_hypothesis_gain"] > 5.0  # plane score, um
    assert midline_error(np.asarray(res.midline), tr["midline"])["angle_deg"] < 4.0
    assert any("2 hypotheses registered" in n for n in res.notes)
    assert np.isfinite(res.to_ccf(b.obsm["spatial"], ccf50)).all()


def test_symmetry_runner_up_as_an_alternative(ccf50, sections):
    from napari_brainatlas.register import register_section

    a = sections["full_b"]
    tr = a.uns["demo_truth"]
    lab = ccf_level_labels(ccf50, a.obs["ccf_id_true"].to_numpy(), "division")
    # a clear symmetry axis: no alternative at the default ratio
    e = estimate_midline(a.obsm["spatial"], lab, ccf50)
    assert e.alternatives == []
    # asked for any runner-up: the best axis at least distinct_deg (20) away
    st = MidlineSettings(symmetry_alternative_ratio=0.05)
    e2 = estimate_midline(a.obsm["spatial"], lab, ccf50, settings=st)
    assert np.allclose(e2.midline, e.midline) and len(e2.alternatives) == 1
    ang = midline_error(e2.alternatives[0], e2.midline)["angle_deg"]
    assert min(ang, 180.0 - ang) >= 17.0  # 20 deg, refined by up to 3
    # the registration judges it: the true axis keeps the better plane score
    b = a.copy()
    b.obs["division"] = lab
    polls = []

    def count():
        polls.append(1)
        return False

    kw = {"region_key": "division", "refine_position": True}
    kw["settings"] = RegistrationSettings(midline=st)
    res = register_section(b, ccf50, "coronal", 8600.0, "both", "auto", cancel=count, **kw)
    assert res.metrics["midline_hypotheses"] == 2.0
    assert res.metrics["midline_hypothesis_kept"] == 0.0
    assert midline_error(np.asarray(res.midline), tr["midline"])["angle_deg"] < 4.0
    # a cancel at the last poll (inside the second hypothesis) stops the whole call
    n, again = len(polls), []

    def cancel_at_the_last_poll():
        again.append(1)
        return len(again) >= n

    with pytest.raises(Cancelled):
        register_section(
            b, ccf50, "coronal", 8600.0, "both", "auto", cancel=cancel_at_the_last_poll, **kw
        )
    assert len(again) == n
