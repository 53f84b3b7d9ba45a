"""CellFormer: tokens, training on the demo and on real osmFISH, save / load, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError
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
    genes, bins = tokenize(a, vocab, max_genes=2, n_bins=4)
    # cell 0: kept g1 (5) > g3 (2); cell 1: nothing; cell 2: g3 (9), then g0 = g1 (3):
    # the tie goes to the first gene
    assert genes.tolist() == [[3, 5], [0, 0], [5, 2]]
    assert bins[1].tolist() == [0, 0] and (bins[0] > 0).all()
    assert bins[0, 0] > bins[0, 1] and bins[2, 0] > bins[2, 1]


def test_train_demo_sections_different_panels(demo, tmp_path):
    panels = {tuple(s.var_names) for s in demo}
    assert len(panels) > 1  # the demo sections measure different genes
    m = CellFormer(demo, seed=0, d_model=16, n_heads=2, max_genes=16, dim_feedforward=32,
                   batch_size=128)
    assert set(m.genes) == set().union(*[set(s.var_names) for s in demo])
    hist = m.train(epochs=2)
    assert len(hist) == 2 and hist[-1]["loss"] < hist[0]["loss"]
    z = m.get_latent_representation()
    assert z.shape == (sum(s.n_obs for s in demo), 16) and np.isfinite(z).all()
    assert demo[1].obsm[LATENT_KEY].shape == (demo[1].n_obs, 16)
    # save / load as a folder gives the same embeddings
    m.save(tmp_path / "cf")
    assert {p.name for p in (tmp_path / "cf").iterdir()} == {"model.pt", "config.json",
                                                             "genes.json"}
    m2 = CellFormer.load(tmp_path / "cf", demo)
    np.testing.assert_allclose(m2.get_latent_representation(write=False), z, atol=1e-5)
    one = m2.get_latent_representation(demo[2], write=False)
    np.testing.assert_allclose(one, demo[2].obsm[LATENT_KEY], atol=1e-5)


def test_train_real_osmfish_loss_decreases():
    from napari_brainatlas.io import read_sections

    sec = read_sections(shared(OSMFISH))[0]
    m = CellFormer(sec, seed=0, batch_size=128, d_model=32, max_genes=16,
                   dim_feedforward=64)
    seen = []
    hist = m.train(epochs=2, progress=lambda e, n, loss: seen.append((e, n, loss)))
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)]
    assert hist[1]["loss"] < hist[0]["loss"]
    assert hist[1]["accuracy"] > 1 / 16  # masked bins predicted better than chance
    z = m.get_latent_representation()
    assert z.shape == (6471, 32) and sec.obsm[LATENT_KEY].shape == (6471, 32)


def test_cancel_and_bad_input(demo, tmp_path):
    m = CellFormer(demo[:1], seed=0, d_model=16, n_heads=2)
    calls = []
    m.train(epochs=5, cancel=lambda: len(calls) > 2 or calls.append(1))
    assert m.cancelled and len(m.history) <= 1
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
    assert "napari_brainatlas.cellformer.cli" in cli.SUBCOMMAND_MODULES
    code = cli.main(["cellformer", *map(str, files["sections"]), "--out",
                     str(tmp_path / "out"), "--epochs", "1"])
    assert code == 0
    assert (tmp_path / "out" / "model" / "model.pt").exists()
    import anndata as ad

    outs = sorted((tmp_path / "out").glob("*.h5ad"))
    assert len(outs) == 2 and LATENT_KEY in ad.read_h5ad(outs[0]).obsm
    code = cli.main(["cellformer", str(tmp_path / "missing.h5ad"), "--out",
                     str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not found" in err[-1]
