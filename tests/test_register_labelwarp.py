"""Label-guided pieces of the registration on the real Allen CCFv3 (50 um): the cropped
label template, the reverse label term, the polynomial label warp, the restart spread
and its confidence factor, and the pivot of the joint plane search."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.register import register_section, sample_section
from napari_brainatlas.register.affine import apply_affine
from napari_brainatlas.register.boundary import section_outline
from napari_brainatlas.register.labelfit import (
    fit_spread,
    label_fit,
    label_warp,
    make_label_template,
    reverse_cost,
)
from napari_brainatlas.register.metrics import division_index
from napari_brainatlas.register.nonlinear import apply_warp
from napari_brainatlas.register.scoring import confidence_score
from napari_brainatlas.register.section import cell_divisions
from napari_brainatlas.register.settings import LabelFitSettings, RegistrationSettings
from napari_brainatlas.register.slices import atlas_slice
from napari_brainatlas.register.template import make_template

from ._data import CCF50, ONTO_CSV, shared


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


def _err(xy_atlas, a):
    return float(np.median(np.linalg.norm(xy_atlas - a.obsm["slice_xy_true"], axis=1)))


def test_cropped_label_template_matches_a_full_distance_transform(ccf50):
    """Cropping to the tissue and to each division's box leaves the distance of cells
    near the tissue to their own region unchanged."""
    sl = atlas_slice(ccf50, "coronal", 5000.0, "both")
    lt = make_label_template(ccf50, sl)
    assert lt.div.shape[0] <= sl.labels.shape[0] and lt.div.shape[1] <= sl.labels.shape[1]
    full, _ = division_index(ccf50, sl.labels)
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(sl.labels > 0)
    pick = rng.integers(0, len(rows), 3000)
    res = sl.resolution_um
    xy = np.column_stack([(cols[pick] + 0.5) * res, (rows[pick] + 0.5) * res])
    ks = [k for k in lt.near if (full == k).sum() > 50]
    cell_div = rng.choice(ks, len(xy))
    _, d = lt.lookup(xy, cell_div)
    for k in ks:
        ref = ndi.distance_transform_edt(full != k) * res
        sel = cell_div == k
        exp = ref[rows[pick][sel], cols[pick][sel]]
        near = exp <= 300.0  # beyond the box margin only an upper bound is kept
        assert np.allclose(d[sel][near], exp[near], atol=1e-6)
        assert np.all(d[sel] >= exp - 1e-6)
    # distances on demand (label-chamfer starts) agree with the lookup at pixel centres
    k = ks[0]
    r0, c0 = lt.origin
    sel = cell_div == k
    rr = rows[pick][sel] - r0
    cc = cols[pick][sel] - c0
    assert np.allclose(lt.dist[k][rr, cc], d[sel], atol=1e-3)


def test_reverse_term_prefers_the_true_fit(ccf50):
    """Edges of the template's divisions lie nearer the cells of their division at the
    true affine than at a shifted one, and the fit with the reverse term recovers a
    shift at least as well as the forward-only fit."""
    a = sample_section(ccf50, "sagittal", 9800.0, n_cells=8000, rotation_deg=30.0, seed=3)
    tr = a.uns["demo_truth"]
    xy = a.obsm["spatial"]
    sl = atlas_slice(ccf50, "sagittal", tr["position_um"])
    lt = make_label_template(ccf50, sl)
    div = cell_divisions(a, ccf50, "region")
    A = np.asarray(tr["affine"])
    groups = lt.groups(div)
    shifted = A.copy()
    shifted[:2, 2] += (120.0, -80.0)
    assert reverse_cost(apply_affine(A, xy), groups, lt) < reverse_cost(
        apply_affine(shifted, xy), groups, lt
    )
    tree = make_template(sl).tree
    outline = section_outline(xy)
    A_f, _ = label_fit(shifted, xy, div, lt, outline.points, tree, LabelFitSettings(n_iter=40))
    both = LabelFitSettings(n_iter=40, reverse_weight=0.5)
    A_r, info = label_fit(shifted, xy, div, lt, outline.points, tree, both)
    assert np.isfinite(info["reverse"])
    e0, ef, er = (_err(apply_affine(M, xy), a) for M in (shifted, A_f, A_r))
    assert er < 0.5 * e0, (e0, er)
    assert er <= ef + 5.0, (ef, er)


def test_label_warp_follows_a_smooth_tissue_warp(ccf50):
    """On a section warped by 80 um (a warp a quadratic can follow: the best quadratic
    of the true displacement brings the median from about 30 to 22 um), the polynomial
    label warp after the affine label fit lowers the cell error; on an unwarped section
    it changes little."""
    sl = atlas_slice(ccf50, "coronal", 8000.0, "both")
    tmpl = make_template(sl)
    lt = make_label_template(ccf50, sl)
    for warp_um in (80.0, 0.0):
        a = sample_section(
            ccf50,
            "coronal",
            8000.0,
            "both",
            n_cells=12000,
            warp_um=warp_um,
            rotation_deg=-40.0,
            seed=7,
        )
        tr = a.uns["demo_truth"]
        xy = a.obsm["spatial"]
        div = cell_divisions(a, ccf50, "region")
        outline = section_outline(xy)
        A, _ = label_fit(
            np.asarray(tr["affine"]),
            xy,
            div,
            lt,
            outline.points,
            tmpl.tree,
            LabelFitSettings(n_iter=40, reverse_weight=0.5),
        )
        stages, info = label_warp(
            A,
            xy,
            div,
            lt,
            outline.points,
            tmpl.tree,
            tmpl.size_um,
            fit=LabelFitSettings(reverse_weight=0.5),
        )
        e_aff = _err(apply_affine(A, xy), a)
        e_w = _err(apply_warp(stages, apply_affine(A, xy)), a)
        if warp_um > 0:
            assert stages, info
            assert info["cost_after"] < info["cost_before"]
            assert e_w < e_aff - 2.0, (e_aff, e_w)
        else:
            assert e_w < e_aff + 3.0, (e_aff, e_w)


def test_fit_spread_and_its_confidence_factor(ccf50):
    a = sample_section(ccf50, "coronal", 7000.0, "both", n_cells=8000, rotation_deg=10.0, seed=8)
    tr = a.uns["demo_truth"]
    xy = a.obsm["spatial"]
    sl = atlas_slice(ccf50, "coronal", tr["position_um"], "both")
    div = cell_divisions(a, ccf50, "region")
    lt, tree, pts = (
        make_label_template(ccf50, sl),
        make_template(sl).tree,
        section_outline(xy).points,
    )
    A, _ = label_fit(
        np.asarray(tr["affine"]),
        xy[:2000],
        div[:2000],
        lt,
        pts,
        tree,
        LabelFitSettings(n_iter=40, reverse_weight=0.5),
    )
    settings = RegistrationSettings()
    restarts = settings.spread_labels()  # the registration's restarts
    own = replace(restarts, reverse_trim_q=settings.labels.reverse_trim_q)
    # a converged fit restarted where it is, under its own cost, stays there
    s0 = fit_spread(A, xy[:2000], div[:2000], lt, pts, tree, own, delta_um=0.0)
    assert 0.0 <= s0 < 5.0, s0
    # the registration's restarts use the calibrated reverse trim, which also measures
    # how far the fit moves when the torn-tissue trim is relaxed: a few um on intact tissue
    s0c = fit_spread(A, xy[:2000], div[:2000], lt, pts, tree, restarts, delta_um=0.0)
    assert 0.0 <= s0c < 12.0, s0c
    s = fit_spread(A, xy[:2000], div[:2000], lt, pts, tree, restarts)
    assert s0c <= s < 100.0, s  # restarts 100 um off come back at least part of the way
    good = {"dice": 0.95, "boundary_inlier_fraction": 0.95, "label_agreement": 0.95}
    assert confidence_score(good) == pytest.approx(1.0)
    assert confidence_score(good | {"fit_spread_um": 2.0}) > 0.95
    half = settings.confidence.spread_half_um
    assert confidence_score(good | {"fit_spread_um": half}) == pytest.approx(0.5)
    assert confidence_score(good | {"fit_spread_um": 2.5 * half}) < 0.2


def test_plane_search_records_spread_and_label_warp(ccf50):
    """The label-guided path (refine_position with labels) ends with the label refit
    and warp and records the restart spread; the tilted, offset, warped section lands
    within the hard-set targets (the section of test_register_ccf's plane-search test)."""
    a = sample_section(
        ccf50,
        "coronal",
        7000.0,
        "both",
        n_cells=30000,
        angles_deg=(3.0, -2.0),
        rotation_deg=37.0,
        scale=1.3,
        warp_um=40.0,
        seed=2,
    )
    tr = a.uns["demo_truth"]
    res = register_section(a, ccf50, "coronal", 7120.0, "both", tr["midline"], refine_position=True)
    assert "fit_spread_um" in res.metrics and np.isfinite(res.metrics["fit_spread_um"])
    assert any(n.startswith("label warp") for n in res.notes)
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], ccf50) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0 and np.percentile(err, 95) < 150.0
    assert 0.0 <= res.confidence <= 1.0
    # the record round-trips with its warp
    from napari_brainatlas.register import RegistrationResult

    back = RegistrationResult.from_json(res.to_json())
    assert np.allclose(
        back.to_ccf(a.obsm["spatial"][:100], ccf50), res.to_ccf(a.obsm["spatial"][:100], ccf50)
    )
    # label_warp=False: no warp stages
    res2 = register_section(
        a, ccf50, "coronal", 7120.0, "both", tr["midline"], refine_position=True, label_warp=False
    )
    assert res2.warp == [] and "fit_spread_um" not in res2.metrics
