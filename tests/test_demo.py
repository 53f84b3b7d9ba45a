"""The demo sections: deterministic, honest ground truth, partial panels, batch effects."""

import numpy as np

from napari_brainatlas.demo import make_demo_sections


def test_deterministic_for_a_seed():
    a = make_demo_sections(seed=3, n_sections=2, cells_per_mm2=60)
    b = make_demo_sections(seed=3, n_sections=2, cells_per_mm2=60)
    c = make_demo_sections(seed=4, n_sections=2, cells_per_mm2=60)
    for x, y in zip(a, b):
        assert np.array_equal(x.obsm["spatial"], y.obsm["spatial"])
        assert (x.X != y.X).sum() == 0
    assert a[0].n_obs != c[0].n_obs or not np.allclose(a[0].obsm["spatial"], c[0].obsm["spatial"])


def test_truth_affine_maps_cells_onto_their_ccf_position(demo_sections, demo_atlas):
    for s in demo_sections:
        t = s.uns["demo_truth"]
        h = np.c_[s.obsm["spatial"], np.ones(s.n_obs)] @ np.asarray(t["affine"]).T
        true = s.obsm["ccf_coords_true"]
        assert np.allclose(h[:, 0], true[:, 2]) and np.allclose(h[:, 1], true[:, 1])
        assert np.allclose(true[:, 0], t["position_um"])
        assert np.array_equal(demo_atlas.structure_at(true), s.obs["ccf_id_true"].to_numpy())
        # midline truth lies on the atlas midline (or the cut edge of a hemisection)
        m = np.c_[np.asarray(t["midline"]), np.ones(2)] @ np.asarray(t["affine"]).T
        assert np.allclose(m[:, 0], demo_atlas.midline_ml_um)
        assert m[0, 1] < m[1, 1]  # dorsal first


def test_sections_differ_in_frame_panel_and_batch(demo_sections):
    hemis = [s.uns["demo_truth"]["hemisphere"] for s in demo_sections]
    assert "both" in hemis and {"left", "right"} & set(hemis)
    assert any(s.uns["demo_truth"]["mirrored"] for s in demo_sections)
    rots = [s.uns["demo_truth"]["rotation_deg"] for s in demo_sections]
    assert np.ptp(rots) > 30
    panels = [set(s.var_names) for s in demo_sections]
    shared = set.intersection(*panels)
    union = set.union(*panels)
    assert 10 <= len(shared) < min(len(p) for p in panels) < len(union)
    caps = [s.uns["demo_truth"]["capture"] for s in demo_sections]
    assert np.ptp(caps) > 0.1


def test_expression_is_region_and_type_specific(demo_sections):
    s = demo_sections[0]
    counts = s.layers["counts"]
    assert np.issubdtype(np.asarray(counts).dtype, np.number)
    assert np.all(np.mod(counts, 1) == 0)

    def mean(gene, mask):
        return counts[mask, s.var_names.get_loc(gene)].mean()

    exc = (s.obs["celltype_main"] == "Excitatory").to_numpy()
    assert mean("Slc17a7", exc) > 5 * mean("Slc17a7", ~exc)
    ctx = (s.obs["region"] == "Isocortex").to_numpy()
    assert mean("Emx1", ctx) > 3 * mean("Emx1", ~ctx)
    assert s.obs["celltype"].nunique() >= 8
