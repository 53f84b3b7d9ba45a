"""The two cheaper steps of the joint plane search: the quadratic finish (one step to
the vertex of the parabolas through the final plane and its neighbours) and the
coarse-to-fine angle grid of the label-agreement plane proposals (real Allen CCFv3,
50 um)."""

from dataclasses import replace

import numpy as np
import pytest

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.register.joint_search import _quadratic_step
from napari_brainatlas.register.metrics import label_division_index
from napari_brainatlas.register.position import refine_plane
from napari_brainatlas.register.settings import ProposalSettings, RegistrationSettings
from napari_brainatlas.register.slices import atlas_slice
from napari_brainatlas.register.synthetic import sample_section

from ._data import CCF50, ONTO_CSV, shared


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


def _search_events():
    """A progress callback collecting the info of each candidate plane of the search."""
    seen = []

    def progress(done, total, info):
        if info["stage"] == "plane_search":
            seen.append(info)

    return seen, progress


def _evaluator(f):
    """An ``evaluate(q, a, A_init)`` of the search over an analytic score ``f``,
    counting its calls."""
    calls = []

    def evaluate(q, a, A_init, refit=False):
        calls.append((q, a))
        return (f(q, a), A_init, {})

    return evaluate, calls


def test_quadratic_step_lands_on_the_vertex_of_a_concave_score():
    # a concave quadratic with its maximum at (q, a0, a1) = (8 um, 0.2 deg, -0.3 deg)
    def f(q, a):
        return (
            -(((q - 8.0) / 25.0) ** 2) - ((a[0] - 0.2) / 0.75) ** 2 - 2 * ((a[1] + 0.3) / 0.75) ** 2
        )

    evaluate, calls = _evaluator(f)
    cur = evaluate(0.0, (0.0, 0.0), np.eye(3))
    q, a, r = _quadratic_step(evaluate, lambda q, a: True, 0.0, (0.0, 0.0), cur, 25.0, 0.75)
    # on a quadratic the vertex is exact
    assert q == pytest.approx(8.0) and a[0] == pytest.approx(0.2) and a[1] == pytest.approx(-0.3)
    assert r[0] == pytest.approx(0.0) and r[0] > cur[0]
    # six neighbours and the vertex: seven new planes, not a further level of polls
    assert len(calls) == 1 + 6 + 1


def test_quadratic_step_clips_to_half_a_step_and_keeps_a_better_plane():
    # the maximum lies two steps away along depth: the step is clipped to half a step
    evaluate, _ = _evaluator(lambda q, a: -(((q - 50.0) / 25.0) ** 2) - a[0] ** 2 - a[1] ** 2)
    cur = evaluate(0.0, (0.0, 0.0), np.eye(3))
    q, a, r = _quadratic_step(evaluate, lambda q, a: True, 0.0, (0.0, 0.0), cur, 25.0, 0.75)
    assert q == pytest.approx(12.5) and a == (0.0, 0.0) and r[0] > cur[0]
    # no axis opens downwards (a saddle / minimum): the plane is kept
    evaluate, _ = _evaluator(lambda q, a: q**2 + a[0] ** 2 + a[1] ** 2)
    cur = evaluate(0.0, (0.0, 0.0), np.eye(3))
    q, a, r = _quadratic_step(evaluate, lambda q, a: True, 0.0, (0.0, 0.0), cur, 25.0, 0.75)
    assert (q, a) == (0.0, (0.0, 0.0)) and r is cur
    # neighbours outside the search box are not evaluated, and that axis stays
    evaluate, calls = _evaluator(
        lambda q, a: -(((q - 8.0) / 25.0) ** 2) - (a[0] - 0.2) ** 2 - a[1] ** 2
    )
    cur = evaluate(0.0, (0.0, 0.0), np.eye(3))
    q, a, _ = _quadratic_step(evaluate, lambda q, a: q <= 0.0, 0.0, (0.0, 0.0), cur, 25.0, 0.75)
    assert all(c[0] <= 0.0 for c in calls)
    assert q == 0.0 and a[0] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "plane,pos,hemi,angles",
    [
        ("coronal", 7000.0, "both", (2.2, -1.4)),
        ("coronal", 8500.0, "left", (-3.1, 0.6)),
        ("sagittal", 3500.0, "both", (1.0, 2.5)),
    ],
)
def test_coarse_angle_grid_proposes_the_same_plane_as_the_full_grid(
    ccf50, plane, pos, hemi, angles
):
    a = sample_section(
        ccf50, plane, pos, hemi, n_cells=8000, angles_deg=angles, rotation_deg=25.0, seed=3
    )
    cell_div = label_division_index(ccf50, np.asarray(a.obs["region"]))  # true major divisions
    xy = a.obsm["slice_xy_true"]  # cells at their in-plane position in the tilted slice
    given = pos + 100.0
    sl = atlas_slice(ccf50, plane, given, hemi)
    full = refine_plane(
        ccf50,
        plane,
        given,
        xy,
        cell_div,
        sl.centre_um,
        150.0,
        settings=ProposalSettings(max_cells=1500),
    )
    coarse = refine_plane(
        ccf50,
        plane,
        given,
        xy,
        cell_div,
        sl.centre_um,
        150.0,
        settings=ProposalSettings(max_cells=1500, coarse_factor=2),
    )
    assert coarse["position_um"] == full["position_um"]
    assert coarse["angles_deg"] == full["angles_deg"]
    assert coarse["agreement_start"] == full["agreement_start"]
    # and it is the true plane, to the grid's step
    assert abs(coarse["position_um"] - pos) <= 75.0
    assert np.abs(np.subtract(coarse["angles_deg"], angles)).max() <= 1.0


def test_search_with_the_quadratic_finish_finds_a_tilted_offset_plane(ccf50):
    """The default search (one level of steps, then the quadratic finish) finds a
    tilted plane given 120 um off, and the finish never lowers the plane score."""
    from napari_brainatlas.register import register_section

    a = sample_section(
        ccf50,
        "coronal",
        7000.0,
        "both",
        n_cells=20000,
        angles_deg=(2.5, -1.5),
        rotation_deg=-52.0,
        scale=0.8,
        warp_um=40.0,
        seed=5,
    )
    tr = a.uns["demo_truth"]
    s = RegistrationSettings()
    assert s.search.quadratic_finish and len(s.search.steps) == 1
    res = register_section(a, ccf50, "coronal", 7120.0, "both", tr["midline"], refine_position=True)
    assert abs(res.position_um - 7000.0) <= 30.0
    assert abs(res.angles_deg[0] - 2.5) <= 1.0 and abs(res.angles_deg[1] + 1.5) <= 1.0
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], ccf50) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0
    no_finish = replace(s, search=replace(s.search, quadratic_finish=False))
    off = register_section(
        a, ccf50, "coronal", 7120.0, "both", tr["midline"], settings=no_finish, refine_position=True
    )
    assert res.metrics["plane_score"] >= off.metrics["plane_score"] - 1e-9
    assert res.metrics["plane_evals"] >= off.metrics["plane_evals"]


def test_sagittal_sections_search_with_the_finer_level(ccf50):
    """Sagittal sections span most of the brain's length, so their search keeps the
    finer (12.5 um, 0.4 deg) level (``PlaneSearchSettings.steps_sagittal``); coronal
    ones use ``PlaneSearchSettings.steps``. The progress callback says at which step
    each polled plane was tried."""
    from napari_brainatlas.register import register_section

    seen, progress = _search_events()
    a = sample_section(
        ccf50,
        "sagittal",
        3600.0,
        "both",
        n_cells=12000,
        angles_deg=(1.2, -0.8),
        rotation_deg=140.0,
        scale=1.2,
        warp_um=30.0,
        seed=9,
    )
    tr = a.uns["demo_truth"]
    res = register_section(
        a, ccf50, "sagittal", 3700.0, "both", tr["midline"], refine_position=True, progress=progress
    )
    s = RegistrationSettings().search
    polled = {i["step"] for i in seen if i["move"] in ("depth", "a_x", "a_y")}
    assert polled == set(s.steps_sagittal) and s.steps_for("sagittal") == s.steps_sagittal
    assert s.steps_sagittal[-1][1] < s.steps[-1][1] and s.steps_for("coronal") == s.steps
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], ccf50) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0
    assert abs(res.position_um - 3600.0) <= 50.0


def test_search_near_the_lateral_edge_skips_planes_without_tissue(ccf50):
    """A far-lateral sagittal section: the search's depth steps reach past the brain's
    lateral edge (10.9 mm in the 50 um annotation), where the atlas has no tissue. Those
    planes are no candidates; the registration goes on (it raised before) and stays
    inside the tissue."""
    from napari_brainatlas.register import register_section

    a = sample_section(
        ccf50,
        "sagittal",
        10600.0,
        "both",
        n_cells=8000,
        angles_deg=(-1.0, 2.0),
        rotation_deg=20.0,
        scale=1.4,
        seed=3,
    )
    res = register_section(
        a, ccf50, "sagittal", 10750.0, "both", a.uns["demo_truth"]["midline"], refine_position=True
    )
    assert res.position_estimated
    assert 550.0 <= res.position_um < 10900.0
    assert 0.0 <= res.confidence <= 1.0
    assert res.metrics["plane_evals"] > 0


def test_tissue_range_of_the_real_annotation(ccf50):
    """The planes with tissue: 550-10900 um left to right in the 50 um CCFv3 (the
    volume is 11400 um wide), and the AP range inside the volume's 13200 um."""
    assert ccf50.tissue_range_um("sagittal") == (550.0, 10900.0)
    lo, hi = ccf50.tissue_range_um("coronal")
    assert 0.0 <= lo < 1000.0 and 12000.0 < hi <= 13200.0
    assert ccf50.position_range_um("coronal") == (0.0, 13200.0)


def test_hemisections_also_poll_the_tilt_about_the_midline(ccf50):
    """Coronal hemisections poll the left-right tilt about the slice's midline (the
    depth at the midline kept) besides the tilt about the section's centre: the search
    asks for planes whose position (the depth at the slice centre) equals that of a
    polled plane while the left-right tilt differs by one step. Whole coronal sections
    (whose centre is near the midline anyway) do not."""
    from napari_brainatlas.register import register_section

    events, progress = _search_events()
    a = sample_section(
        ccf50,
        "coronal",
        6000.0,
        "left",
        n_cells=8000,
        angles_deg=(2.0, 0.5),
        rotation_deg=25.0,
        scale=1.1,
        seed=4,
    )
    mid = a.uns["demo_truth"]["midline"]
    res = register_section(
        a, ccf50, "coronal", 6080.0, "left", mid, refine_position=True, progress=progress
    )
    settings = RegistrationSettings().search
    da = settings.steps[-1][1]
    s = {
        (round(i["position_um"], 3), round(i["angles_deg"][0], 3), round(i["angles_deg"][1], 3))
        for i in events
    }
    pairs = [(p, a0, a1) for p, a0, a1 in s if (p, round(a0 + da, 3), a1) in s]
    tilts = [i for i in events if i["move"] == "midline_tilt"]
    assert settings.hemi_midline_tilt and tilts and pairs
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], ccf50) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0
    b = sample_section(ccf50, "coronal", 6000.0, "both", n_cells=8000, rotation_deg=25.0, seed=4)
    events.clear()
    register_section(
        b,
        ccf50,
        "coronal",
        6080.0,
        "both",
        b.uns["demo_truth"]["midline"],
        refine_position=True,
        progress=progress,
    )
    assert events and not [i for i in events if i["move"] == "midline_tilt"]
