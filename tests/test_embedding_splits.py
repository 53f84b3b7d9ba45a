"""The embedding benchmark's split family (benchmarks/embedding/splits.py, issue 26):
deterministic for a seed, requested overlap and capture shift respected, dev and test
halves disjoint."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "embedding"))
import splits  # noqa: E402

needs_data = pytest.mark.skipif(
    not (splits.MERFISH.is_dir() and splits.OSMFISH.is_file()),
    reason="real data (../shared/data) not available",
)


def test_dev_and_test_halves_disjoint_and_fixed():
    for name in splits.SETS:
        dev = splits.split_indices(name, "dev")
        test = splits.split_indices(name, "test")
        assert not set(dev) & set(test)
        assert sorted(dev + test) == list(range(splits.N_SPLITS[name]))
        assert max(dev) < min(test)  # first half dev, second half test
        if name != "demo":
            assert len(dev) + len(test) >= 24
    for name in ("osmFISH", "MERFISH", "SlideSeq"):
        specs = [splits.split_spec(name, i) for i in range(splits.N_SPLITS[name])]
        assert {s.half for s in specs} == {"dev", "test"}
        # every cut kind is in both halves
        for h in ("dev", "test"):
            assert {s.index % 3 for s in specs if s.half == h} == {0, 1, 2}


def test_specs_deterministic_and_in_range():
    for name in splits.SETS:
        for i in range(splits.N_SPLITS[name]):
            a, b = splits.split_spec(name, i), splits.split_spec(name, i)
            assert a == b
            lo, hi = splits.OVERLAP_RANGE
            assert lo <= a.overlap <= hi
            assert any(s is not None for s in a.shift)
            for s in a.shift:
                if s is not None:
                    assert splits.SIGMA_RANGE[0] <= s[0] <= splits.SIGMA_RANGE[1]
                    assert splits.DEPTH_RANGE[0] <= s[1] <= splits.DEPTH_RANGE[1]
            assert a.reference and a.query and len(a.roles) >= 2
    other = [splits.split_spec("osmFISH", i, family_seed=1) for i in range(6)]
    assert other != [splits.split_spec("osmFISH", i) for i in range(6)]


def test_thin_counts_integer_with_the_requested_mean():
    rng = np.random.default_rng(0)
    c = rng.poisson(20.0, (4000, 3))
    f = np.array([0.5, 1.0, 1.8])
    out = splits.thin_counts(c, f[None, :], np.random.default_rng(1))
    assert out.dtype == np.int64 and (out >= 0).all()
    assert (out[:, 0] <= c[:, 0]).all()  # binomial thinning never adds
    np.testing.assert_array_equal(out[:, 1], c[:, 1])  # factor 1: unchanged
    np.testing.assert_allclose(out.mean(0) / c.mean(0), f, rtol=0.03)


@needs_data
@pytest.mark.parametrize("name", ["osmFISH", "MERFISH"])
def test_split_deterministic_overlap_and_disjoint_cells(name):
    s1 = splits.make_split(name, 4)
    s2 = splits.make_split(name, 4)
    for a, b in zip(s1.sections, s2.sections):
        np.testing.assert_array_equal(a.X, b.X)
        assert list(a.var_names) == list(b.var_names)
        assert list(a.obs_names) == list(b.obs_names)
    G = len(s1.truth_genes)
    union = set().union(*s1.panels)
    shared = set.intersection(*(set(p) for p in s1.panels))
    assert union == set(s1.truth_genes)
    assert len(shared) == round(s1.spec.overlap * G)
    # every cell is in one section only; counts stay integers; shifts only thin or add
    names = [n.split("_", 1)[1] for a in s1.sections for n in a.obs_names]
    assert len(names) == len(set(names))
    for v, a in enumerate(s1.sections):
        assert np.all(np.mod(a.X, 1) == 0) and (a.X >= 0).all()
        cols = [s1.truth_genes.index(g) for g in a.var_names]
        if s1.spec.shift[v] is None:
            np.testing.assert_array_equal(a.X, s1.truth[v][:, cols])
        else:  # the depth factor shows in the total counts
            ratio = a.X.sum() / max(s1.truth[v][:, cols].sum(), 1)
            assert 0.25 < ratio < 4.0
    assert s1.reference and s1.query
    assert splits.make_split(name, 4, family_seed=1).spec != s1.spec


@needs_data
def test_cap_cells_same_subset_every_time_and_truth_aligned():
    s = splits.make_split("osmFISH", 12)
    c1, c2 = splits.cap_cells(s, 300), splits.cap_cells(s, 300)
    assert c1.info["n_cells"] == [min(a.n_obs, 300) for a in s.sections]
    for a, b, t, full, tf in zip(c1.sections, c2.sections, c1.truth, s.sections, s.truth):
        assert list(a.obs_names) == list(b.obs_names)
        assert set(a.obs_names) <= set(full.obs_names)
        rows = full.obs_names.get_indexer(a.obs_names)
        np.testing.assert_array_equal(t, tf[rows])  # truth rows follow the cells
        np.testing.assert_array_equal(a.X, full.X[rows])
    assert splits.cap_cells(s, None) is s and splits.cap_cells(s, 10**6) is s
