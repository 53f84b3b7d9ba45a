"""CellFormer: tokens, training on the demo and on real osmFISH, save / load, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.cellformer import LATENT_KEY, CellFormer, tokenize

from ._data import OSMFISH, shared


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: small matrices on a busy 2-core machine run far faster so."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo():
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=4, cells_per_mm2=100)


def test_tokens_by_hand():
    import anndata as ad
    import pandas as pd

    X = np.array([[0, 5, 1, 2], [0, 0, 0, 0], [3, 3, 0, 9]], dtype=np.float32)
    a = ad.AnnData(X=X, var=pd.DataFrame(index=["g0", "g1", "g2", "g3"]))
    vocab = {"g0": 2, "g1": 3, "g3": 5}  # g2 is not in the vocabulary
    genes, bins = tokenize(a, vocab, max_genes=2, n_bins=4, binning="cell")
    # cell 0: kept g1 (5) > g3 (2); cell 1: nothing; cell 2: g3 (9), then g0 = g1 (3):
    # the tie goes to the first gene
    assert genes.tolist() == [[3, 5], [0, 0], [5, 2]]
    assert bins[1].tolist() == [0, 0] and (bins[0] > 0).all()
    assert bins[0, 0] > bins[0, 1] and bins[2, 0] > bins[2, 1]
    with pytest.raises(BrainAtlasInputError, match="binning"):
        tokenize(a, vocab, binning="global")


def test_gene_bins_by_hand():
    """Per-gene bins: the quantiles of the gene's non-zero CP10k values over the cells."""
    import anndata as ad
    import pandas as pd

    X = np.array([[1, 1], [2, 1], [3, 1], [0, 1]], dtype=np.float32)
    # fractions: g0 1/2, 2/3, 3/4, - (ranks 1, 2, 3 of 3); g1 1/2, 1/3, 1/4, 1 (3, 2, 1, 4)
    # bin = ceil(rank / n_nonzero * 4): g0 2, 3, 4; g1 3, 2, 1, 4
    a = ad.AnnData(X=X, var=pd.DataFrame(index=["g0", "g1"]))
    for sparse in (False, True):
        if sparse:
            import scipy.sparse as sps

            a.X = sps.csr_matrix(X)
        genes, bins = tokenize(a, {"g0": 2, "g1": 3}, max_genes=2, n_bins=4)
        # token order: highest value first (cell 0 ties -> gene order)
        assert genes.tolist() == [[2, 3], [2, 3], [2, 3], [3, 0]]
        assert bins.tolist() == [[2, 3], [3, 2], [4, 1], [4, 0]]


def test_training_separates_synthetic_cell_types():
    """Two cell types that express the same genes, at swapped levels: the trained
    embedding separates them far better than the untrained one."""
    import anndata as ad
    import pandas as pd
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    rate = np.where((np.arange(20) < 10)[None, :] == (y[:, None] == 0), 8.0, 3.0)
    a = ad.AnnData(
        X=rng.poisson(rate).astype(np.float32), var=pd.DataFrame(index=[f"g{i}" for i in range(20)])
    )
    kw = {"seed": 0, "d_model": 16, "n_heads": 2, "dim_feedforward": 32, "n_layers": 1}
    before = silhouette_score(CellFormer(a, **kw).get_latent_representation(write=False), y)
    m = CellFormer(a, **kw)
    m.train(epochs=3)
    after = silhouette_score(m.get_latent_representation(write=False), y)
    assert after > before + 0.15, (before, after)


def test_train_demo_sections_different_panels(demo, tmp_path):
    panels = {tuple(s.var_names) for s in demo}
    assert len(panels) > 1  # the demo sections measure different genes
    m = CellFormer(
        demo, seed=0, d_model=16, n_heads=2, max_genes=16, dim_feedforward=32, batch_size=128
    )
    assert set(m.genes) == set().union(*[set(s.var_names) for s in demo])
    hist = m.train(epochs=2)
    assert len(hist) == 2 and hist[-1]["loss"] < hist[0]["loss"]
    z = m.get_latent_representation()
    assert z.shape == (sum(s.n_obs for s in demo), 16) and np.isfinite(z).all()
    assert demo[1].obsm[LATENT_KEY].shape == (demo[1].n_obs, 16)
    # save / load as a folder gives the same embeddings
    m.save(tmp_path / "cf")
    assert {p.name for p in (tmp_path / "cf").iterdir()} == {
        "weights.pt",
        "config.json",
        "history.json",
        "genes.csv",
    }
    m2 = CellFormer.load(tmp_path / "cf", demo)
    np.testing.assert_allclose(m2.get_latent_representation(write=False), z, atol=1e-5)
    one = m2.get_latent_representation(demo[2], write=False)
    np.testing.assert_allclose(one, demo[2].obsm[LATENT_KEY], atol=1e-5)
    # a folder of another format version is refused with one clear message
    import json

    meta = json.loads((tmp_path / "cf" / "config.json").read_text())
    meta["format_version"] = 1
    (tmp_path / "cf" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BrainAtlasInputError, match="format 1"):
        CellFormer.load(tmp_path / "cf", demo)


def test_train_real_osmfish_loss_decreases():
    from napari_brainatlas.io import read_sections

    sec = read_sections(shared(OSMFISH))[0]
    m = CellFormer(sec, seed=0, batch_size=128, d_model=32, max_genes=16, dim_feedforward=64)
    seen = []
    hist = m.train(epochs=2, progress=lambda e, n, loss: seen.append((e, n, loss)))
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)]
    assert hist[1]["loss"] < hist[0]["loss"]
    # per-gene bins are uniform over 1..16: always guessing the middle scores 1 (MSE / (1/12));
    # the masked values are predicted better from the cell's other genes
    assert hist[1]["mlm"] < 0.9
    z = m.get_latent_representation()
    assert z.shape == (6471, 32) and sec.obsm[LATENT_KEY].shape == (6471, 32)


def test_cancel_and_bad_input(demo, tmp_path):
    m = CellFormer(demo[:1], seed=0, d_model=16, n_heads=2)
    calls = []
    with pytest.raises(Cancelled):
        m.train(epochs=5, cancel=lambda: len(calls) > 2 or calls.append(1))
    assert m.cancelled and len(m.history) <= 1 and not m.is_trained
    with pytest.raises(BrainAtlasInputError, match="pooling"):
        CellFormer(demo, pooling="max")
    with pytest.raises(BrainAtlasInputError, match="multiple of n_heads"):
        CellFormer(demo, d_model=30, n_heads=4)
    with pytest.raises(BrainAtlasInputError, match="not a CellFormer model folder"):
        CellFormer.load(tmp_path)
    with pytest.raises(BrainAtlasInputError, match="no CUDA"):
        if torch.cuda.is_available():
            raise BrainAtlasInputError("no CUDA")  # a GPU is here: nothing to refuse
        CellFormer(demo, device="cuda")


def test_cli_cellformer(tmp_path, capsys):
    from napari_brainatlas import cli
    from napari_brainatlas.demo import write_demo_data

    files = write_demo_data(tmp_path / "d", seed=0, n_sections=2, cells_per_mm2=40)
    assert "napari_brainatlas.cli.cellformer" in cli.SUBCOMMAND_MODULES
    code = cli.main(
        [
            "cellformer",
            *map(str, files["sections"]),
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "1",
        ]
    )
    assert code == 0
    assert (tmp_path / "out" / "model" / "weights.pt").exists()
    import anndata as ad

    outs = sorted((tmp_path / "out").glob("*.h5ad"))
    assert len(outs) == 2 and LATENT_KEY in ad.read_h5ad(outs[0]).obsm
    code = cli.main(["cellformer", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not found" in err[-1]
