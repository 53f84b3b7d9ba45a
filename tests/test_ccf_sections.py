"""Validation sections cut from the real CCFv3 (50 um): deterministic, truth consistent,
uneven density, per-section panels and capture, reference vs query keys."""

import anndata
import numpy as np
import pytest

from napari_brainatlas.atlas import Atlas
from napari_brainatlas.demo.ccf_sections import (
    CCFExpressionModel,
    SectionSpec,
    as_reference,
    make_ccf_reference_and_queries,
    make_ccf_section,
    make_ccf_sections,
    random_section_specs,
)
from napari_brainatlas.register.affine import apply_affine
from napari_brainatlas.register.ccf_levels import ccf_level_labels, level_divisions, parse_level
from napari_brainatlas.register.metrics import label_division_index

from ._data import CCF50, ONTO_CSV, shared


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


@pytest.fixture(scope="module")
def pair(ccf50):
    return make_ccf_reference_and_queries(
        ccf50, 3, 4, seed=3, reference_cells=700, query_cells=(600, 900)
    )


def test_deterministic_for_a_seed(ccf50):
    specs = random_section_specs(ccf50, 2, seed=5, n_cells=500)
    a = make_ccf_sections(ccf50, specs, expression_seed=1)
    b = make_ccf_sections(
        ccf50, random_section_specs(ccf50, 2, seed=5, n_cells=500), expression_seed=1
    )
    for x, y in zip(a, b):
        assert np.array_equal(x.layers["counts"], y.layers["counts"])
        assert np.array_equal(x.obsm["spatial"], y.obsm["spatial"])
        assert list(x.var_names) == list(y.var_names)
        assert np.array_equal(x.uns["demo_truth"]["affine"], y.uns["demo_truth"]["affine"])
    c = make_ccf_sections(ccf50, random_section_specs(ccf50, 2, seed=6, n_cells=500))
    assert not np.array_equal(a[0].obsm["spatial"][:50], c[0].obsm["spatial"][:50])


def test_truth_is_consistent(ccf50, pair):
    ref, qry = pair
    for a in ref + qry:
        ids = a.obs["ccf_id_true"].to_numpy()
        # a cell's true id is the annotation at its true CCF coordinate, inside the brain
        assert np.array_equal(ccf50.structure_at(a.obsm["ccf_coords_true"]), ids)
        assert (ids > 0).all()
        assert np.array_equal(
            a.obs["ccf_division_true"].astype(str).to_numpy(),
            ccf_level_labels(ccf50, ids, "division"),
        )
        assert np.array_equal(
            a.obs["ccf_fine_true"].astype(str).to_numpy(), ccf_level_labels(ccf50, ids, "fine")
        )
        tr = a.uns["demo_truth"]
        assert tr["plane"] in ("coronal", "sagittal") and np.shape(tr["midline"]) == (2, 2)
        # the true affine maps the cells onto their slice position up to the smooth warp
        d = np.linalg.norm(
            apply_affine(tr["affine"], a.obsm["spatial"]) - a.obsm["slice_xy_true"], axis=1
        )
        assert d.max() <= np.sqrt(2) * tr["spec"]["warp_um"] + 1e-6  # each axis <= warp_um
        assert np.issubdtype(a.layers["counts"].dtype, np.number)
        assert np.allclose(a.layers["counts"], np.round(a.layers["counts"]))


def test_exact_section_affine_and_plane(ccf50):
    model = CCFExpressionModel(ccf50, 0)
    spec = SectionSpec(plane="coronal", position_um=6000.0, n_cells=600, rotation_deg=30.0, seed=2)
    a = make_ccf_section(ccf50, spec, model)
    xy = apply_affine(a.uns["demo_truth"]["affine"], a.obsm["spatial"])
    assert np.allclose(xy, a.obsm["slice_xy_true"], atol=1e-6)
    assert np.allclose(a.obsm["ccf_coords_true"][:, 0], 6000.0)  # exact coronal plane


def test_uneven_density_panels_and_capture(ccf50):
    model = CCFExpressionModel(ccf50, 0)
    specs = [
        SectionSpec(plane="coronal", position_um=7000.0, n_cells=3000, seed=s, name=f"s{s}")
        for s in (1, 2)
    ]
    a, b = (make_ccf_section(ccf50, s, model) for s in specs)
    # layer 1 is sparse, layer 4 dense: cells per unit of true area differ from uniform
    fine = a.obs["ccf_fine_true"].astype(str).to_numpy()
    sl = ccf50.slice("coronal", 7000.0)
    area = {
        lab: np.mean(ccf_level_labels(ccf50, sl.labels[sl.labels > 0], "fine") == lab)
        for lab in ("L1", "L4")
    }
    dens = {lab: np.mean(fine == lab) / area[lab] for lab in area}
    assert dens["L4"] > 2.0 * dens["L1"]
    # panels differ but share the core; captures differ
    core = {model.genes[i] for i in model.core}
    assert core <= set(a.var_names) and core <= set(b.var_names)
    assert set(a.var_names) != set(b.var_names)
    assert a.uns["demo_truth"]["capture"] != b.uns["demo_truth"]["capture"]
    # division programmes: a division's genes are higher in that division
    iso = fine != ""
    g = "Div_Isocortex_0"
    x = np.asarray(a[:, g].layers["counts"]).ravel()
    div = a.obs["ccf_division_true"].astype(str).to_numpy()
    assert x[iso & (div == "Isocortex")].mean() > 3 * x[iso & (div != "Isocortex")].mean()


def test_reference_and_query_keys(ccf50, pair, tmp_path):
    ref, qry = pair
    for a, name in ((ref[0], "r.h5ad"), (qry[0], "q.h5ad")):  # writable as .h5ad
        a.write_h5ad(tmp_path / name)
    back = anndata.read_h5ad(tmp_path / "r.h5ad")
    assert np.allclose(back.uns["demo_truth"]["affine"], ref[0].uns["demo_truth"]["affine"])
    for r in ref:
        assert np.array_equal(r.obsm["ccf_coords"], r.obsm["ccf_coords_true"])
        assert np.array_equal(r.obs["ccf_id"].to_numpy(), r.obs["ccf_id_true"].to_numpy())
        assert r.obs["ccf_acronym"].iloc[0] == ccf50.ontology.acronym(int(r.obs["ccf_id"].iloc[0]))
        name = r.obs["section"].iloc[0]
        assert name in r.uns["ccf_registration"]
    for q in qry:
        assert "ccf_id" not in q.obs and "region" not in q.obs and "ccf_coords" not in q.obsm
        assert "ccf_registration" not in q.uns
    kinds = {(q.uns["demo_truth"]["plane"], q.uns["demo_truth"]["hemisphere"]) for q in qry}
    assert kinds == {
        ("coronal", "both"),
        ("coronal", "left"),
        ("coronal", "right"),
        ("sagittal", "both"),
    }
    assert as_reference(qry[0], ccf50).obs["ccf_id"].dtype == np.int64


def test_levels(ccf50):
    onto = ccf50.ontology
    ids = np.array(
        [onto.id_of(a) for a in ("SSp-m2/3", "MOp5", "CA1sp", "DG-sg", "VPM", "CP", "MOB")] + [0]
    )
    assert list(ccf_level_labels(ccf50, ids, "division")) == [
        "Isocortex",
        "Isocortex",
        "HPF",
        "HPF",
        "TH",
        "STR",
        "OLF",
        "",
    ]
    assert list(ccf_level_labels(ccf50, ids, "fine")) == [
        "L2/3",
        "L5",
        "CA1",
        "DG",
        "VP",
        "STRd",
        "MOB",
        "",
    ]
    assert list(ccf_level_labels(ccf50, ids, "layer"))[:3] == ["L2/3", "L5", "HPF"]
    assert ccf_level_labels(ccf50, ids[:1], 6)[0] == "SS"
    assert parse_level("depth6") == 6 and parse_level("Fine") == "fine"
    div = level_divisions(ccf50, np.array(["L2/3", "CA1", "unassigned", "", "STRd"]))
    want = label_division_index(ccf50, np.array(["Isocortex", "HPF", "no such", "no such", "STR"]))
    assert list(div) == list(want) and list(div[2:4]) == [-1, -1] and min(div[[0, 1, 4]]) >= 0
