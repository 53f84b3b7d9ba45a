"""Registration on the real Allen CCFv3 annotation (25 and 50 um), with synthetic
sections cut from it (truth known cell by cell)."""

from pathlib import Path

import numpy as np
import pytest

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.register import apply_registration, register_section, sample_section

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ANN = DATA / "ccfv3_annotation"
ONTO = DATA / "ccfv3_ontology" / "structure_tree_safe_2017.csv"


def _load(res):
    path = ANN / f"annotation_{res}.nrrd"
    if not path.exists() or not ONTO.exists():
        pytest.skip(f"CCFv3 annotation not found under {ANN}")
    return Atlas.load(path, ontology=ONTO)


@pytest.fixture(scope="module")
def ccf25():
    return _load(25)


@pytest.fixture(scope="module")
def ccf50():
    return _load(50)


def _register(adata, atlas, **kw):
    tr = adata.uns["demo_truth"]
    args = {
        "plane": tr["plane"],
        "position_um": tr["position_um"],
        "hemisphere": tr["hemisphere"],
        "midline": tr["midline"],
    }
    args.update(kw)
    return register_section(adata, atlas, **args)


def _errors(adata, res, atlas):
    ccf = res.to_ccf(adata.obsm["spatial"], atlas)
    return np.linalg.norm(ccf - adata.obsm["ccf_coords_true"], axis=1)


def test_exact_coronal_25um_recovers_cells(ccf25):
    a = sample_section(
        ccf25,
        "coronal",
        6500.0,
        "both",
        n_cells=60000,
        rotation_deg=37.0,
        scale=1.3,
        offset_um=(5000.0, -2000.0),
        seed=1,
    )
    res = _register(a, ccf25)
    err = _errors(a, res, ccf25)
    assert np.median(err) < 10.0
    assert np.percentile(err, 95) < 25.0
    assert res.converged and res.confidence > 0.8
    assert res.metrics["dice"] > 0.97
    assert res.metrics["label_agreement"] > 0.95
    out = apply_registration(a, res, ccf25)
    assert np.mean(out.obs["ccf_id"].to_numpy() == a.obs["ccf_id_true"].to_numpy()) > 0.85
    assert out.obsm["ccf_coords"].shape == (a.n_obs, 3)


@pytest.mark.parametrize(
    "case",
    [
        {
            "plane": "coronal",
            "position_um": 8000.0,
            "hemisphere": "left",
            "rotation_deg": -120.0,
            "scale": 0.8,
            "mirror": True,
        },
        {
            "plane": "coronal",
            "position_um": 4500.0,
            "hemisphere": "right",
            "rotation_deg": 170.0,
            "scale": 1.0,
        },
        {
            "plane": "sagittal",
            "position_um": 3500.0,
            "rotation_deg": 80.0,
            "scale": 1.1,
            "mirror": True,
        },
        {"plane": "sagittal", "position_um": 2000.0, "rotation_deg": -10.0, "scale": 2.5},
        {
            "plane": "coronal",
            "position_um": 3000.0,
            "rotation_deg": 90.0,
            "scale": 0.5,
            "shear": 0.05,
        },
        {
            "plane": "coronal",
            "position_um": 9500.0,
            "rotation_deg": -150.0,
            "scale": 1.2,
            "midline_jitter": 0.02,
            "drop_fraction": 0.1,
        },
    ],
    ids=[
        "hemi-left-mirrored",
        "hemi-right",
        "sagittal-mirrored",
        "sagittal-scaled",
        "coronal-shear",
        "coronal-jitter-drop",
    ],
)
def test_rotation_mirror_scale_hemi_sagittal_25um(ccf25, case):
    a = sample_section(ccf25, n_cells=30000, seed=2, **case)
    res = _register(a, ccf25)
    err = _errors(a, res, ccf25)
    assert np.median(err) < 15.0, np.median(err)
    assert np.percentile(err, 95) < 35.0
    assert res.confidence > 0.7
    assert res.mirrored == bool(case.get("mirror", False))


def test_torn_tissue_and_confidence(ccf50):
    torn = sample_section(
        ccf50,
        "coronal",
        7000.0,
        "both",
        n_cells=20000,
        rotation_deg=50.0,
        tear_fraction=0.15,
        seed=1,
    )
    res = _register(torn, ccf50)
    assert np.median(_errors(torn, res, ccf50)) < 40.0
    assert res.confidence > 0.6
    # a registration that fails (wrong position given) must say so
    bad = _register(torn, ccf50, position_um=3000.0)
    assert np.median(_errors(torn, bad, ccf50)) > 1000.0
    assert bad.confidence < 0.3 < res.confidence
    # half the tissue torn away: confidence drops below the 15% case
    half = sample_section(
        ccf50,
        "coronal",
        7000.0,
        "both",
        n_cells=20000,
        rotation_deg=50.0,
        tear_fraction=0.45,
        seed=1,
    )
    assert _register(half, ccf50).confidence < res.confidence


def test_tilted_offset_section_with_plane_search(ccf50):
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
    plain = _register(a, ccf50, position_um=7120.0)
    found = _register(a, ccf50, position_um=7120.0, refine_position=True)
    assert abs(found.position_um - 7000.0) <= 75.0
    assert abs(found.angles_deg[0] - 3.0) <= 1.0 and abs(found.angles_deg[1] + 2.0) <= 1.0
    e_plain, e_found = np.median(_errors(a, plain, ccf50)), np.median(_errors(a, found, ccf50))
    assert e_found < 60.0 and e_found < e_plain


def test_landmarks_pull_the_fit(ccf50):
    a = sample_section(ccf50, "coronal", 6000.0, "both", n_cells=20000, rotation_deg=20.0, seed=4)
    A = np.asarray(a.uns["demo_truth"]["affine"])
    src = a.obsm["spatial"][:3]
    dst = src @ A[:2, :2].T + A[:2, 2]
    lm = np.column_stack([src, dst])
    res = _register(a, ccf50, landmarks=lm)
    assert np.median(_errors(a, res, ccf50)) < 25.0
    with pytest.raises(ValueError, match="landmarks"):
        _register(a, ccf50, landmarks=np.zeros((3, 3)))


def test_far_lateral_sagittal_plane_search(ccf50):
    """Far-lateral sagittal sections change quickly with ML: the joint search (plane and
    in-plane fit together, labels inside + outline) must find the plane, where the
    outline fit at the given position is far off."""
    a = sample_section(
        ccf50,
        "sagittal",
        10300.0,
        n_cells=30000,
        angles_deg=(0.5, 1.5),
        rotation_deg=60.0,
        scale=1.2,
        warp_um=30.0,
        tear_fraction=0.05,
        seed=7,
    )
    plain = _register(a, ccf50, position_um=10400.0)
    found = _register(a, ccf50, position_um=10400.0, refine_position=True)
    e_plain, e_found = np.median(_errors(a, plain, ccf50)), np.median(_errors(a, found, ccf50))
    assert abs(found.position_um - 10300.0) <= 50.0, found.position_um
    assert e_found < 60.0 and e_found < 0.6 * e_plain, (e_found, e_plain)
    assert "plane_label_um" in found.metrics and "plane_sensitivity" in found.metrics
