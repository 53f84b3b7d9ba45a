"""``napari-brainatlas embed`` on small files."""

import anndata as ad
import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.fusemap import make_synthetic_sections


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _parser():
    import argparse

    from napari_brainatlas.cli.embed import add_parser

    p = argparse.ArgumentParser(prog="napari-brainatlas")
    add_parser(p.add_subparsers(dest="command"))
    return p


def test_embed_writes_model_and_sections(tmp_path, capsys):
    secs = make_synthetic_sections(n_sections=2, n_cells=[150, 120], n_genes=20, n_shared=10)
    paths = []
    for a in secs:
        p = tmp_path / f"{a.obs['section'].iloc[0]}_in.h5ad"
        a.write_h5ad(p)
        paths.append(str(p))
    out = tmp_path / "out"
    args = _parser().parse_args(
        ["embed", *paths, "--out", str(out), "--epochs", "1", "--device", "cpu", "--seed", "1"]
    )
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "embed [" in err and "2/2" in err
    assert "quality: " in err and "mixing" in err and "recon R2" in err  # one-line summary
    assert (out / "model" / "weights.pt").exists() and (out / "model" / "config.json").exists()
    h5 = sorted(out.glob("*.h5ad"))
    assert len(h5) == 2
    b = ad.read_h5ad(h5[0])
    assert b.obsm["X_fusemap_cell"].shape[1] == 64
    assert np.isfinite(b.obsm["X_fusemap_tissue"]).all()
    # inputs untouched
    assert "X_fusemap_cell" not in ad.read_h5ad(paths[0]).obsm


def test_embed_bad_input(tmp_path):
    args = _parser().parse_args(
        ["embed", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "o")]
    )
    with pytest.raises(BrainAtlasInputError):
        args.func(args)
