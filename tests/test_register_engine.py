"""Registration engine on the demo atlas and demo sections: API contract, bad input,
serialisation, progress / cancel, pieces (outline, anchors, affine, ICP, series)."""

import json

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import make_demo_atlas
from napari_brainatlas.register import (
    RegistrationCancelled,
    RegistrationResult,
    apply_registration,
    register_section,
    sample_section,
    series_positions,
)
from napari_brainatlas.register.affine import (
    apply_affine,
    compose,
    fit_affine,
    fit_similarity,
    rotation,
)
from napari_brainatlas.register.anchors import MidlineFrame, outline_anchors
from napari_brainatlas.register.boundary import section_outline, template_outline
from napari_brainatlas.register.slices import atlas_slice


@pytest.fixture(scope="module")
def atlas():
    return make_demo_atlas()


@pytest.fixture(scope="module")
def demo_sections(atlas):
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=6, atlas=atlas)


@pytest.fixture(scope="module")
def section(atlas):
    return sample_section(
        atlas,
        "coronal",
        4000.0,
        "both",
        n_cells=8000,
        rotation_deg=-65.0,
        scale=1.4,
        seed=3,
        name="s1",
    )


def _truth_args(a):
    tr = a.uns["demo_truth"]
    return {
        "plane": tr["plane"],
        "position_um": tr["position_um"],
        "hemisphere": tr["hemisphere"],
        "midline": tr["midline"],
    }


# ---------------------------------------------------------------- pieces
def test_affine_fits_exactly():
    rng = np.random.default_rng(0)
    src = rng.random((20, 2)) * 1000
    A = np.array([[1.2, 0.1, 30.0], [-0.2, 0.9, -50.0], [0, 0, 1]])
    assert np.allclose(fit_affine(src, apply_affine(A, src)), A)
    S = compose(rotation(0.7), np.diag([2.0, 2.0, 1.0]))
    assert np.allclose(fit_similarity(src, apply_affine(S, src)), S)


def test_outline_is_concave_for_a_hemisection(atlas):
    sl = atlas_slice(atlas, "coronal", 4000.0, "left")
    t = template_outline(sl.labels, sl.resolution_um)
    a = sample_section(atlas, "coronal", 4000.0, "left", n_cells=20000, seed=1)
    o = section_outline(a.obsm["spatial"])
    # the outline area matches the tissue (a convex hull would overshoot the fissure etc.)
    assert abs(o.area_um2 - t.area_um2) / t.area_um2 < 0.05
    assert o.contains(a.obsm["spatial"]).mean() > 0.98


def test_anchors_match_between_section_and_template(atlas):
    sl = atlas_slice(atlas, "coronal", 4000.0, "both")
    t = template_outline(sl.labels, sl.resolution_um)
    mid = np.array([[sl.midline_x_um, 500.0], [sl.midline_x_um, 5000.0]])
    an_t = outline_anchors(t.contours, MidlineFrame(mid[0], mid[1]), midline_ends=True)["points"]
    A = compose(rotation(1.0), np.diag([0.5, 0.5, 1.0]))
    contours = [apply_affine(A, c) for c in t.contours]
    mid_s = apply_affine(A, mid)
    an_s = outline_anchors(contours, MidlineFrame(mid_s[0], mid_s[1]), midline_ends=True)["points"]
    assert an_t.shape == (6, 2)
    assert np.allclose(apply_affine(A, an_t), an_s, atol=2 * sl.resolution_um)


def test_series_positions_follow_composition():
    labs = [["A"] * 10, ["A"] * 8 + ["B"] * 2, ["A"] * 2 + ["B"] * 8, ["B"] * 10]
    pos = series_positions(labs, 1000.0, 4000.0)
    assert pos[0] == 1000.0 and pos[-1] == 4000.0
    assert np.all(np.diff(pos) > 0)
    # the big composition change between sections 2 and 3 gets the biggest step
    assert np.argmax(np.diff(pos)) == 1
    with pytest.raises(BrainAtlasInputError):
        series_positions([["A"]], 0.0, 1.0)


# ---------------------------------------------------------------- demo sections
def test_demo_sections_register(atlas, demo_sections):
    for a in demo_sections:
        tr = a.uns["demo_truth"]
        full_coronal = tr["plane"] == "coronal" and tr["hemisphere"] == "both"
        # a mirrored full coronal section is indistinguishable by shape: say so
        kw = {"mirrored": bool(tr["mirrored"])} if full_coronal else {}
        res = register_section(a, atlas, **_truth_args(a), **kw)
        err = np.linalg.norm(
            res.to_ccf(a.obsm["spatial"], atlas) - a.obsm["ccf_coords_true"], axis=1
        )
        assert np.median(err) < 50.0, (tr, np.median(err))
        assert res.mirrored == bool(tr["mirrored"])
        assert res.confidence > 0.7
        assert res.metrics["label_agreement"] > 0.9


def test_register_then_apply_writes_the_contract(atlas, section):
    before = section.copy()
    res = register_section(section, atlas, **_truth_args(section))
    # the input is untouched
    assert "ccf_coords" not in section.obsm and "ccf_registration" not in section.uns
    assert np.array_equal(section.obsm["spatial"], before.obsm["spatial"])
    out = apply_registration(section, res, atlas)
    assert out is not section and "ccf_coords" not in section.obsm
    assert out.obsm["ccf_coords"].shape == (section.n_obs, 3)
    assert out.obs["ccf_id"].dtype.kind == "i"
    assert (out.obs["ccf_acronym"][out.obs["ccf_id"] == 0] == "").all()
    rec = out.uns["ccf_registration"]["s1"]
    for k in (
        "atlas",
        "atlas_version",
        "plane",
        "position_um",
        "hemisphere",
        "midline",
        "anchors_section",
        "anchors_atlas",
        "affine",
        "cost_history",
        "converged",
        "iterations",
        "confidence",
        "metrics",
    ):
        assert k in rec, k
    assert np.asarray(rec["affine"]).shape == (3, 3)
    assert np.asarray(rec["anchors_section"]).shape == (4, 2)
    assert 0.0 <= res.confidence <= 1.0
    for k in ("boundary_median_um", "dice", "iterations", "converged", "dice_divisions_mean"):
        assert k in res.metrics
    same = apply_registration(section.copy(), res, atlas, inplace=True)
    assert "ccf_coords" in same.obsm


def test_result_json_and_h5ad_round_trip(atlas, section, tmp_path):
    res = register_section(section, atlas, **_truth_args(section), nonlinear=True)
    assert res.warp  # the thin-plate stages are kept
    back = RegistrationResult.from_json(res.to_json())
    assert back == res
    assert np.allclose(
        back.transform(section.obsm["spatial"]), res.transform(section.obsm["spatial"])
    )
    json.loads(res.to_json())  # plain JSON, no NaN / numpy
    out = apply_registration(section, res, atlas)
    path = tmp_path / "reg.h5ad"
    out.write_h5ad(path)
    import anndata as ad

    rec = ad.read_h5ad(path).uns["ccf_registration"]["s1"]
    again = RegistrationResult.from_uns(rec)
    assert np.allclose(again.affine_matrix, res.affine_matrix)
    assert np.allclose(again.to_ccf(section.obsm["spatial"], atlas), out.obsm["ccf_coords"])
    with pytest.raises(BrainAtlasInputError):
        RegistrationResult.from_json("{not json")
    with pytest.raises(BrainAtlasInputError):
        RegistrationResult.from_dict({"atlas": "demo"})


def test_progress_and_cancel(atlas, section):
    seen = []
    register_section(
        section, atlas, **_truth_args(section), progress=lambda i, c: seen.append((i, c))
    )
    assert len(seen) > 3
    assert all(isinstance(c, float) and c >= 0 for _, c in seen)
    assert [i for i, _ in seen] == sorted(i for i, _ in seen)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RegistrationCancelled):
        register_section(section, atlas, **_truth_args(section), cancel=cancel)


def test_no_midline_falls_back_to_a_rotation_sweep(atlas, section):
    args = _truth_args(section)
    args["midline"] = None
    res = register_section(section, atlas, **args)
    err = np.linalg.norm(
        res.to_ccf(section.obsm["spatial"], atlas) - section.obsm["ccf_coords_true"], axis=1
    )
    assert np.median(err) < 60.0
    assert res.start.startswith("rotation")


def test_auto_position_on_the_demo_atlas(atlas):
    a = sample_section(atlas, "coronal", 5200.0, "left", n_cells=4000, rotation_deg=30.0, seed=5)
    args = _truth_args(a)
    args["position_um"] = "auto"
    res = register_section(a, atlas, **args)
    assert res.position_estimated
    assert abs(res.position_um - 5200.0) < 300.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change, match",
    [
        ({"midline": [[100.0, 100.0], [100.0, 100.0]]}, "identical"),
        ({"midline": [[1e6, 1e6], [1e6, 1.001e6]]}, "midline"),
        ({"midline": [[1.0, 2.0, 3.0]]}, "midline"),
        ({"position_um": -100.0}, "outside the atlas"),
        ({"position_um": 1e6}, "outside the atlas"),
        ({"position_um": "somewhere"}, "position"),
        ({"plane": "axial"}, "plane"),
        ({"hemisphere": "middle"}, "hemisphere"),
        ({"hemisphere": "left", "midline": None}, "cut edge"),
    ],
)
def test_bad_input_raises_one_clear_error(atlas, section, change, match):
    args = _truth_args(section)
    args.update(change)
    with pytest.raises(BrainAtlasInputError, match=match):
        register_section(section, atlas, **args)


def test_bad_sections_and_atlas(atlas, section):
    args = _truth_args(section)
    with pytest.raises(BrainAtlasInputError, match="at least"):
        register_section(section[:10].copy(), atlas, **args)
    nan = section.copy()
    nan.obsm["spatial"] = nan.obsm["spatial"].copy()
    nan.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(BrainAtlasInputError, match="non-finite"):
        register_section(nan, atlas, **args)
    nos = section.copy()
    del nos.obsm["spatial"]
    with pytest.raises(BrainAtlasInputError, match="spatial"):
        register_section(nos, atlas, **args)
    with pytest.raises(BrainAtlasInputError):
        register_section(section, "/nonexistent/annotation.nrrd", **args)


def test_no_midline_with_position_refinement_on_a_demo_section(atlas, demo_sections):
    """Regression: midline=None with refine_position=True used to fail with
    AttributeError ('NoneType' has no attribute 'affine'): the plane search fitted
    without the rotation sweep, and without a midline there was no other start."""
    a = demo_sections[0]  # S1, a full coronal section at AP 2600 um
    tr = a.uns["demo_truth"]
    res = register_section(
        a, atlas, "coronal", float(tr["position_um"]), "both", midline=None, refine_position=True
    )
    assert res.position_estimated
    assert abs(res.position_um - tr["position_um"]) <= 100.0
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], atlas) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0
    assert res.start.startswith("rotation")


def test_label_fit_recovers_a_perturbed_affine(atlas):
    """The label fit (cells pulled into their own region + outline) undoes a small
    rotation / shift / scale of the true section -> atlas affine."""
    from napari_brainatlas.register.labelfit import label_cost, label_fit, make_label_template
    from napari_brainatlas.register.section import cell_divisions
    from napari_brainatlas.register.settings import LabelFitSettings

    a = sample_section(atlas, "coronal", 4400.0, "both", n_cells=6000, rotation_deg=25.0, seed=11)
    tr = a.uns["demo_truth"]
    xy = a.obsm["spatial"]
    sl = atlas_slice(atlas, "coronal", tr["position_um"], "both")
    lt = make_label_template(atlas, sl)
    div = cell_divisions(a, atlas, "region")
    A_true = np.asarray(tr["affine"])
    c = xy.mean(0)
    P = compose(
        np.array([[1.0, 0, 120.0], [0, 1, -80.0], [0, 0, 1]]),
        rotation(np.deg2rad(4.0), centre=A_true[:2, :2] @ c + A_true[:2, 2]),
        np.diag([1.04, 1.04, 1.0]),
    )
    A0 = P @ A_true

    def err(A):
        return float(
            np.median(np.linalg.norm(apply_affine(A, xy) - a.obsm["slice_xy_true"], axis=1))
        )

    from napari_brainatlas.register.template import make_template

    outline = section_outline(xy)
    tree = make_template(sl).tree
    A1, info = label_fit(A0, xy, div, lt, outline.points, tree, LabelFitSettings(n_iter=60))
    assert err(A0) > 100.0
    assert err(A1) < 0.6 * err(A0), (err(A0), err(A1))
    assert info["inside"] > 0.9
    assert label_cost(lt, apply_affine(A1, xy), div) < label_cost(lt, apply_affine(A0, xy), div)


def test_label_chamfer_starts_find_the_section_without_an_outline_fit(atlas):
    from napari_brainatlas.register.labelfit import label_chamfer_starts, make_label_template
    from napari_brainatlas.register.section import cell_divisions
    from napari_brainatlas.register.template import make_template

    a = sample_section(
        atlas, "coronal", 5200.0, "left", n_cells=5000, rotation_deg=-70.0, scale=1.2, seed=12
    )
    tr = a.uns["demo_truth"]
    xy = a.obsm["spatial"]
    sl = atlas_slice(atlas, "coronal", tr["position_um"], "left")
    tmpl = make_template(sl)
    lt = make_label_template(atlas, sl)
    div = cell_divisions(a, atlas, "region")
    fs = MidlineFrame(tr["midline"][0], tr["midline"][1])
    outline = section_outline(xy)
    scale = np.sqrt(tmpl.outline.area_um2 / outline.area_um2)
    starts = label_chamfer_starts(xy, div, lt, tmpl, fs, scale)
    assert starts
    A, _ = starts[0]
    e = np.median(np.linalg.norm(apply_affine(A, xy) - a.obsm["slice_xy_true"], axis=1))
    assert e < 250.0, e
    # a start rotated half a turn is much worse by the same measure
    bad = compose(rotation(np.pi, centre=apply_affine(A, xy).mean(0)), A)
    from napari_brainatlas.register.labelfit import label_cost

    assert label_cost(lt, apply_affine(bad, xy), div) > 2 * label_cost(lt, apply_affine(A, xy), div)
