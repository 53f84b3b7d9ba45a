"""Training FuseMap on the demo sections lowers the reconstruction loss and mixes sections."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from napari_brainatlas.fusemap import FuseMap


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mixing_and_transfer(zs, labels, k=20):
    """Fraction of kNN from other sections; accuracy of labels voted by other sections."""
    Z = np.concatenate(zs)
    b = np.concatenate([np.full(len(z), i) for i, z in enumerate(zs)])
    L = np.concatenate(labels)
    ok = np.isfinite(Z).all(1)
    Z, b, L = Z[ok], b[ok], L[ok]
    idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)[1][:, 1:]
    other = b[idx] != b[:, None]
    agree = (L[idx] == L[:, None]) & other
    has = other.sum(1) > 0
    acc = (agree.sum(1)[has] / other.sum(1)[has]).mean() if has.any() else 0.0
    return other.mean(), acc


def test_demo_training_reconstructs_and_mixes():
    demo = pytest.importorskip("napari_brainatlas.demo")
    secs = demo.make_demo_sections(seed=0, n_sections=3, cells_per_mm2=50.0)
    labels = [a.obs["celltype"].astype(str).to_numpy() for a in secs]
    m = FuseMap(secs, seed=0, n_latent=16, n_hidden=128, disc_hidden=64)
    mix0, acc0 = _mixing_and_transfer(m.get_latent_representation("cell"), labels)
    m.train(max_epochs=3)
    pre = [h for h in m.history if h["phase"] == "pretrain"]
    assert pre[-1]["recon"] < pre[0]["recon"]
    assert m.history[-1]["val_loss"] < m.history[0]["val_loss"]
    mix1, acc1 = _mixing_and_transfer(m.get_latent_representation("cell"), labels)
    assert mix1 > mix0 + 0.05  # sections share neighbourhoods after training
    assert acc1 > acc0  # and neighbours across sections share cell types
    zt = m.get_latent_representation("tissue")
    assert all(np.isfinite(z[np.isfinite(z).all(1)]).all() for z in zt)
