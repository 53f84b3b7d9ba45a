"""The cheaper pieces of the joint plane search on the real Allen CCFv3 (50 um): tilted
slices by integer indexing, coarse slices, cropped search templates, the one-gather
label lookup and the coarse-to-fine search. Each must give what the slower original
gives (or, for the coarse slice, sample the same plane)."""

from dataclasses import replace

import numpy as np
import pytest

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.register.labelfit import make_label_template
from napari_brainatlas.register.settings import RegistrationSettings
from napari_brainatlas.register.slices import _oblique, atlas_slice, coarse_slice
from napari_brainatlas.register.template import make_template

from ._data import CCF50, ONTO_CSV, shared


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


def test_tilted_slice_by_indexing_equals_the_library_slice(ccf50):
    rng = np.random.default_rng(0)
    for i in range(12):
        plane = ("coronal", "sagittal")[i % 2]
        hemi = ("both", "left", "right")[i % 3] if plane == "coronal" else "both"
        lo, hi = ccf50.position_range_um(plane)
        p = float(rng.uniform(lo + 50, hi - 50)) if i != 4 else lo + 20.0  # one near the edge
        a = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)))
        ref = ccf50.slice(plane, p, hemi, a)
        new = _oblique(ccf50, plane, p, hemi, a)
        assert np.array_equal(ref.labels, new.labels)
        assert new.centre_um == ref.centre_um and new.resolution_um == ref.resolution_um
        # and through the cached entry point
        assert np.array_equal(atlas_slice(ccf50, plane, p, hemi, a).labels, ref.labels)


def test_coarse_slice_samples_the_same_plane(ccf50):
    for plane, p, hemi, a in [
        ("coronal", 6000.0, "left", (2.0, -3.0)),
        ("sagittal", 3000.0, "both", (-1.5, 2.5)),
        ("coronal", 8000.0, "both", (0.0, 0.0)),
    ]:
        full = atlas_slice(ccf50, plane, p, hemi, a)
        c = coarse_slice(ccf50, plane, p, hemi, a, 2)
        assert c.resolution_um == 2 * full.resolution_um
        assert c.centre_um == full.centre_um
        # each coarse pixel holds the label at its centre: compare with the full slice's
        # label at the same in-plane point (rounding of the depth may differ in a few)
        rows, cols = np.mgrid[0 : c.labels.shape[0], 0 : c.labels.shape[1]]
        xy = np.column_stack(
            [((cols + 0.5) * c.resolution_um).ravel(), ((rows + 0.5) * c.resolution_um).ravel()]
        )
        want = ccf50.structure_at(full.to_3d(xy))
        if hemi == "left":
            want[xy[:, 0] >= ccf50.midline_ml_um] = 0
        assert np.mean(c.labels.ravel() == want) > 0.98


def test_cropped_template_has_the_same_outline(ccf50):
    sl = atlas_slice(ccf50, "coronal", 7000.0, "right", (1.0, 2.0))
    a = make_template(sl, sigma_um=60.0)
    b = make_template(sl, sigma_um=60.0, crop=True)
    assert a.outline.points.shape == b.outline.points.shape
    assert np.allclose(a.outline.points, b.outline.points, atol=1e-6)
    assert np.allclose(a.midline, b.midline)
    assert a.outline.area_um2 == b.outline.area_um2
    # the cropped mask sits at its origin: the same points fall inside
    pts = np.random.default_rng(2).uniform(0, 11000, (2000, 2))
    assert np.array_equal(a.outline.contains(pts), b.outline.contains(pts))


def test_one_gather_lookup_matches_per_division_lookup(ccf50):
    sl = atlas_slice(ccf50, "sagittal", 4000.0, "both", (2.0, 1.0))
    lt = make_label_template(ccf50, sl)
    rng = np.random.default_rng(1)
    xy = rng.uniform(-500, 13000, (3000, 2))
    cd = rng.integers(-1, max(lt.near) + 4, 3000)  # unknown, present and absent divisions
    tgt, d = lt.lookup(xy, cd)
    H, W = lt.div.shape
    px = lt.pixel_um
    r0, c0 = lt.origin
    col = np.clip(np.floor(xy[:, 0] / px).astype(int) - c0, 0, W - 1)
    row = np.clip(np.floor(xy[:, 1] / px).astype(int) - r0, 0, H - 1)
    out = (
        (np.floor(xy[:, 0] / px).astype(int) - c0 < 0)
        | (np.floor(xy[:, 0] / px).astype(int) - c0 >= W)
        | (np.floor(xy[:, 1] / px).astype(int) - r0 < 0)
        | (np.floor(xy[:, 1] / px).astype(int) - r0 >= H)
    )
    for i in range(len(xy)):
        k = int(cd[i])
        if k not in lt.near:
            assert np.isnan(d[i]) and np.all(np.isnan(tgt[i]))
            continue
        if lt.div[row[i], col[i]] == k and not out[i]:
            assert np.allclose(tgt[i], xy[i]) and d[i] == 0
            continue
        ind = lt.near[k]
        b0, b1 = lt.boxes[k]
        rb = np.clip(row[i] - b0, 0, ind.shape[1] - 1)
        cb = np.clip(col[i] - b1, 0, ind.shape[2] - 1)
        exp = np.array([(ind[1][rb, cb] + c0 + 0.5) * px, (ind[0][rb, cb] + r0 + 0.5) * px])
        assert np.allclose(tgt[i], exp)
        assert np.isclose(d[i], np.linalg.norm(exp - xy[i]))


def test_coarse_to_fine_plane_search_option(ccf50):
    """The coarse-to-fine option of the joint search (off by default) still finds a
    tilted, offset plane and says how many of its planes were coarse."""
    from napari_brainatlas.register import register_section, sample_section

    a = sample_section(
        ccf50,
        "coronal",
        7000.0,
        "both",
        n_cells=20000,
        angles_deg=(3.0, -2.0),
        rotation_deg=37.0,
        scale=1.3,
        warp_um=40.0,
        seed=2,
    )
    tr = a.uns["demo_truth"]
    s = RegistrationSettings()
    assert s.search.coarse_factor == 1  # off by default
    s = replace(s, search=replace(s.search, coarse_factor=2))
    coarse = []

    def progress(done, total, info):
        if info["stage"] == "plane_search":
            coarse.append(info["coarse"])

    res = register_section(
        a,
        ccf50,
        "coronal",
        7120.0,
        "both",
        tr["midline"],
        settings=s,
        refine_position=True,
        progress=progress,
    )
    assert any(coarse) and not all(coarse)  # coarse planes, then full resolution
    assert abs(res.position_um - 7000.0) <= 75.0
    assert abs(res.angles_deg[0] - 3.0) <= 1.0 and abs(res.angles_deg[1] + 2.0) <= 1.0
    err = np.linalg.norm(res.to_ccf(a.obsm["spatial"], ccf50) - a.obsm["ccf_coords_true"], axis=1)
    assert np.median(err) < 60.0
    assert res.metrics["plane_evals"] >= 10
