"""Preprocessing and spatial graph of the FuseMap engine."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.fusemap import (
    delaunay_edges,
    make_synthetic_sections,
    preprocess_section,
    spatial_graph,
)


def test_graph_symmetric_self_loops_normalised():
    rng = np.random.default_rng(0)
    xy = rng.random((400, 2)) * 1000
    B = delaunay_edges(xy)
    assert (B != B.T).nnz == 0 and B.diagonal().sum() == 0
    assert set(np.unique(B.data)) == {1.0}
    A = spatial_graph(xy)
    assert sp.issparse(A) and A.format == "csr" and A.dtype == np.float32
    assert abs(A - A.T).max() < 1e-7  # symmetric
    assert np.all(A.diagonal() > 0)  # self loops
    deg = np.asarray(B.sum(1)).ravel() + 1  # degree of A + I
    Ad = A.toarray().astype(np.float64)
    expect = (B.toarray() + np.eye(400)) / np.sqrt(np.outer(deg, deg))
    np.testing.assert_allclose(Ad, expect, atol=1e-6)  # D^-1/2 (A+I) D^-1/2
    assert A.nnz < 400 * 12  # stays sparse (planar graph)
    # the largest eigenvalue of a symmetric-normalised adjacency is 1
    ev = np.linalg.eigvalsh(Ad)
    assert abs(ev.max() - 1.0) < 1e-5


def test_graph_degenerate_points_fall_back():
    xy = np.column_stack([np.arange(10.0), np.zeros(10)])  # collinear
    A = spatial_graph(xy)
    assert A.shape == (10, 10) and abs(A - A.T).max() < 1e-7
    assert np.all(A.diagonal() > 0) and A.nnz > 10


def test_preprocess_counts_filters_and_maps_back():
    a = make_synthetic_sections(n_sections=1, n_cells=200, seed=1)[0]
    X = a.X.copy()
    X[3] = 0
    X[7, :] = 0
    X[7, 0] = 5  # total 5 -> dropped (<= 5)
    X[:, 2] = 0
    X[0, 2] = 1  # gene sum 1 -> dropped (<= 1)
    a.X = X
    a.layers["counts"] = X.copy()
    a.var_names = [g.lower() for g in a.var_names[:-1]] + [a.var_names[0].lower()]
    before = a.X.copy()
    p = preprocess_section(a, "s")
    np.testing.assert_array_equal(a.X, before)  # input untouched
    assert p.was_counts
    assert 3 not in p.kept and 7 not in p.kept and p.n_cells == 198
    assert all(g == g.upper() for g in p.genes)
    assert len(set(p.genes)) == len(p.genes)  # de-duplicated
    assert a.var_names[2].upper() not in p.genes
    assert p.X.max() <= 10.0 + 1e-6 and p.X.min() >= 0  # log1p + scale, clipped at 10
    np.testing.assert_allclose(p.coords, a.obsm["spatial"][p.kept])


def test_preprocess_non_integer_used_as_is_and_sparse():
    a = make_synthetic_sections(n_sections=1, n_cells=100, sparse=True, seed=2)[0]
    p = preprocess_section(a, "s")
    assert sp.issparse(p.X) and p.was_counts
    b = AnnData(
        X=np.random.default_rng(0).random((50, 8)).astype(np.float32),
        var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
    )
    b.obsm["spatial"] = np.random.default_rng(1).random((50, 2))
    q = preprocess_section(b, "t")
    assert not q.was_counts and q.n_cells == 50
    np.testing.assert_array_equal(q.X, b.X)


def test_preprocess_bad_input():
    a = make_synthetic_sections(n_sections=1, n_cells=50, seed=3)[0]
    del a.obsm["spatial"]
    with pytest.raises(BrainAtlasInputError):
        preprocess_section(a, "s")


@pytest.mark.parametrize("sparse", [False, True])
def test_normalisation_matches_scanpy(sparse):
    sc = pytest.importorskip("scanpy")
    from napari_brainatlas.fusemap._preprocess import normalize_log_scale

    a = make_synthetic_sections(n_sections=1, n_cells=120, sparse=sparse, seed=4)[0]
    ref = AnnData(X=a.X.copy())
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    sc.pp.scale(ref, zero_center=False, max_value=10)
    R = ref.X.toarray() if sp.issparse(ref.X) else ref.X
    M = normalize_log_scale(a.X)
    M = M.toarray() if sp.issparse(M) else M
    np.testing.assert_allclose(M, R, rtol=1e-4, atol=1e-5)


def test_dissociated_section_gets_identity_graph():
    a = make_synthetic_sections(n_sections=1, n_cells=60, seed=5)[0]
    a.obsm["spatial"] = np.full((a.n_obs, 2), np.nan)
    p = preprocess_section(a, "sc")
    assert np.isnan(p.coords).all()
    A = spatial_graph(p.coords)
    np.testing.assert_array_equal(A.toarray(), np.eye(p.n_cells, dtype=np.float32))
    b = a.copy()
    b.obsm["spatial"] = np.random.default_rng(0).random((a.n_obs, 2))
    b.obsm["spatial"][3] = np.nan  # some NaN rows among finite ones: an input error
    with pytest.raises(BrainAtlasInputError):
        preprocess_section(b, "s")
