"""Backed reading of large .h5ad files: X stays on disk, sections split lazily, genes
read one column at a time, cells streamed in chunks."""

from __future__ import annotations

import gc
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_brainatlas.io import gene_values, read_sections
from napari_brainatlas.io.backed import iter_chunks, section_rows

N_BIG = 4_000_000
G_BIG = 96
SECTIONS = 8


def _value(i, j):
    """X[i, j] of the big file, known without reading it."""
    return ((np.asarray(i) % 7)[..., None] * (np.asarray(j) + 1)).astype(np.float32)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """A 4,000,000-cell x 96-gene, 8-section .h5ad (X dense, 1.5 GB), written in chunks."""
    import anndata as ad
    import h5py

    path = tmp_path_factory.mktemp("backed") / "big.h5ad"
    rng = np.random.default_rng(0)
    names = np.repeat([f"s{i}" for i in range(SECTIONS)], N_BIG // SECTIONS)
    obs = pd.DataFrame(
        {"section": pd.Categorical(names)},
        index=pd.Index(np.char.add("c", np.arange(N_BIG).astype(str)).astype(object)),
    )
    a = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(G_BIG)]))
    a.obsm["spatial"] = rng.random((N_BIG, 2)) * 1e4
    a.write_h5ad(path)
    del a, obs
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        d = f.create_dataset("X", shape=(N_BIG, G_BIG), dtype=np.float32, chunks=(32768, G_BIG))
        d.attrs["encoding-type"] = "array"
        d.attrs["encoding-version"] = "0.2.0"
        step = 500_000
        for lo in range(0, N_BIG, step):
            d[lo : lo + step] = _value(np.arange(lo, min(N_BIG, lo + step)), np.arange(G_BIG))
    gc.collect()
    return path


@pytest.mark.slow
def test_big_multisection_file_opens_without_loading_x(big_file):
    import h5py
    import psutil

    proc = psutil.Process(os.getpid())
    gc.collect()
    before = proc.memory_info().rss
    sections = read_sections(big_file, backed=True)
    grew = proc.memory_info().rss - before
    x_bytes = N_BIG * G_BIG * 4
    assert len(sections) == SECTIONS
    assert sum(s.n_obs for s in sections) == N_BIG
    assert [str(s.obs["section"].iloc[0]) for s in sections] == [f"s{i}" for i in range(SECTIONS)]
    parent, rows = section_rows(sections[3])
    assert all(s.isbacked for s in sections)
    assert isinstance(parent.X, h5py.Dataset)  # X is still the on-disk dataset
    assert np.array_equal(rows, np.arange(3 * N_BIG // SECTIONS, 4 * N_BIG // SECTIONS))
    # coordinates and obs are in memory; X (1.5 GB) is not
    assert grew < 0.35 * x_bytes, f"opening grew the process by {grew / 2**20:.0f} MB"
    # one gene of one section: one column is read, the right values
    v = gene_values(sections[3], "G5")
    assert v.shape == (N_BIG // SECTIONS,)
    assert np.array_equal(v, _value(rows, 5)[:, 0])
    grew2 = proc.memory_info().rss - before
    assert grew2 < grew + 0.1 * x_bytes
    # the Sections widget's layer data for a backed section: coordinates, obs, no X
    from napari_brainatlas.layers import section_layer_data

    data, kwargs, _ = section_layer_data(sections[0], size=5.0)
    assert data.shape == (N_BIG // SECTIONS, 2) and kwargs["name"] == "s0"
    assert proc.memory_info().rss - before < 0.6 * x_bytes


def _small(path, n=5_000, seed=0, dense=False):
    import anndata as ad

    rng = np.random.default_rng(seed)
    X = sp.random(n, 12, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.round(X.data * 10)
    a = ad.AnnData(
        X=X.toarray() if dense else X, var=pd.DataFrame(index=[f"G{j}" for j in range(12)])
    )
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obs["slice"] = pd.Categorical(np.array(["b", "a", "c"])[rng.integers(0, 3, n)])
    a.obs["region"] = pd.Categorical(np.array(["R1", "R2"])[rng.integers(0, 2, n)])
    a.obsm["spatial"] = rng.random((n, 2)) * 1000
    a.write_h5ad(path)
    return a


@pytest.mark.parametrize("dense", [False, True])
def test_backed_sections_match_in_memory(tmp_path, dense):
    a = _small(tmp_path / "s.h5ad", dense=dense)
    backed = read_sections(tmp_path / "s.h5ad", backed=True)
    memory = read_sections(tmp_path / "s.h5ad")
    assert [s.obs["section"].iloc[0] for s in backed] == [s.obs["section"].iloc[0] for s in memory]
    for b, m in zip(backed, memory):
        assert b.isbacked and not m.isbacked
        assert list(b.obs_names) == list(m.obs_names)
        assert np.allclose(b.obsm["spatial"], m.obsm["spatial"])
        for g in ("G0", "G7", "G11"):
            assert np.array_equal(gene_values(b, g), gene_values(m, g))
    whole = read_sections(tmp_path / "s.h5ad", backed=True, section_key="region")
    assert sorted(s.n_obs for s in whole) == sorted(a.obs["region"].value_counts().tolist())


def test_gene_values_fast_csr_column_is_exact():
    import anndata as ad

    X = sp.random(3000, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{j}" for j in range(40)]))
    for j in (0, 17, 39):
        assert np.array_equal(gene_values(a, f"G{j}"), X[:, j].toarray().ravel())


@pytest.mark.parametrize("backed", [True, False])
def test_iter_chunks_covers_every_cell_once(tmp_path, backed):
    a = _small(tmp_path / "s.h5ad", n=4_321)
    sections = read_sections(tmp_path / "s.h5ad", backed=backed)
    for sec in sections:
        truth = a[sec.obs_names].X
        seen, parts = [], []
        for rows, X in iter_chunks(sec, chunk_size=500):
            assert len(rows) <= 500 and X.shape[0] == len(rows)
            seen.append(rows)
            parts.append(X)
        rows = np.concatenate(seen)
        assert np.array_equal(rows, np.arange(sec.n_obs))  # each cell once, in order
        assert (sp.vstack(parts) != truth).nnz == 0
        genes = ["G3", "G9"]
        cols = np.vstack([X for _, X in iter_chunks(sec, genes=genes, chunk_size=777)])
        assert cols.dtype == np.float32 and cols.shape == (sec.n_obs, 2)
        assert np.array_equal(cols, truth[:, [3, 9]].toarray())
