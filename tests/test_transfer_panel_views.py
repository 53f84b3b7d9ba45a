"""Label transfer through the panel views (annotate.panel_views; issue 26): reference
cells read through the query's encoder and query cells read through the reference
encoders, used when transfer_labels is given the model."""

import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate import map_query, transfer_labels
from napari_brainatlas.annotate.panel_views import PanelViews, read_through_panel
from napari_brainatlas.fusemap import CELL_KEY, FuseMap
from napari_brainatlas.fusemap._preprocess import preprocess_section


@pytest.fixture(scope="module")
def chain():
    """Reference FuseMap on 3 demo sections with different panels; the 4th mapped."""
    demo = pytest.importorskip("napari_brainatlas.demo")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    secs = demo.make_demo_sections(seed=1, n_sections=4, cells_per_mm2=40.0)
    model = FuseMap(secs[:3], seed=0, n_latent=16, n_hidden=128, disc_hidden=64)
    model.train(epochs=2)
    mapping = map_query(model, [secs[3]], epochs=2, seed=0)
    torch.set_num_threads(n)
    return model, mapping, model.write_embeddings(copy=True), mapping.write_embeddings()


def test_own_panel_reads_back_the_own_embedding(chain):
    """A section read through its own panel is its own encoder on its own input: the
    posterior means FuseMap stores as z_C."""
    model, _, refs, _ = chain
    name = model.section_names[0]
    p = preprocess_section(refs[0], name, min_cell_counts=model.settings.min_cell_counts)
    z = np.asarray(refs[0].obsm[CELL_KEY], np.float32)[p.kept]
    again = read_through_panel(model.module, p.X, p.genes, z, name)
    np.testing.assert_allclose(again, z, atol=1e-4)


def test_other_panel_fills_missing_genes_from_the_decoder(chain):
    """Through another panel: the genes that panel has and this section lacks come from
    the decoder, so the result depends on z for those genes (not zeros)."""
    model, _, refs, _ = chain
    a, b = model.section_names[0], model.section_names[1]
    lacking = set(model.module.section_genes[b]) - set(model.module.section_genes[a])
    assert lacking, "the demo panels differ"
    p = preprocess_section(refs[0], a, min_cell_counts=model.settings.min_cell_counts)
    z = np.asarray(refs[0].obsm[CELL_KEY], np.float32)[p.kept]
    out = read_through_panel(model.module, p.X, p.genes, z, b)
    assert out.shape == z.shape and np.isfinite(out).all()
    shifted = read_through_panel(model.module, p.X, p.genes, z + 1.0, b)
    assert not np.allclose(out, shifted)


def test_transfer_with_the_model_uses_the_panel_views(chain):
    model, mapping, refs, qrys = chain
    plain = transfer_labels(refs, qrys, labels=["celltype", "region"], max_epochs=40)[0]
    views = transfer_labels(
        refs, qrys, labels=["celltype", "region"], max_epochs=40, model=mapping
    )[0]
    rec = views.uns["label_transfer"]
    assert rec["celltype"]["views"] == "panels"
    assert rec["region"]["views"] == "embedding"  # regions read z_T: the embedding
    assert plain.uns["label_transfer"]["celltype"]["views"] == "embedding"
    truth = views.obs["celltype"].astype(str).to_numpy()
    chance = views.obs["celltype"].value_counts(normalize=True).max()
    for out in (plain, views):
        pred = out.obs["celltype_transfer"].astype(str).to_numpy()
        assert (pred == truth).mean() > chance + 0.1
        u = out.obs["celltype_transfer_uncertainty"].to_numpy()
        assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= 1
    # the hierarchy's main level follows the sub label in the panel views too
    main = views.obs["celltype_main_transfer"].astype(str)
    pairs = dict(zip(refs[0].obs["celltype"].astype(str), refs[0].obs["celltype_main"].astype(str)))
    sub = views.obs["celltype_transfer"].astype(str)
    assert all(pairs.get(s, m) == m for s, m in zip(sub, main))
    # views="embedding" turns them off; the nested hierarchy reads the embedding
    off = transfer_labels(
        refs, qrys, labels=["celltype"], max_epochs=40, model=mapping, views="embedding"
    )[0]
    assert off.uns["label_transfer"]["celltype"]["views"] == "embedding"
    nested = transfer_labels(
        refs, qrys, labels=["celltype"], max_epochs=40, model=mapping, hierarchy_mode="nested"
    )[0]
    assert nested.uns["label_transfer"]["celltype"]["views"] == "embedding"
    with pytest.raises(BrainAtlasInputError, match="views"):
        transfer_labels(refs, qrys, labels=["celltype"], model=mapping, views="both")
    with pytest.raises(BrainAtlasInputError, match="model must be"):
        transfer_labels(refs, qrys, labels=["celltype"], model="model_dir")  # not a model


def test_joint_model_matches_sections_by_name(chain):
    """Sections of one joint FuseMap: reference and query are matched to their encoders
    by the name write_embeddings stored; sections it cannot match read the embedding."""
    model, mapping, refs, qrys = chain
    views = PanelViews.of(model, refs[:2], refs[2:])
    assert views is not None
    assert [s.name for s in views.query] == [model.section_names[2]]
    out = transfer_labels(refs[:2], refs[2:], labels=["celltype"], max_epochs=40, model=model)[0]
    assert out.uns["label_transfer"]["celltype"]["views"] == "panels"
    assert PanelViews.of(model, refs, qrys) is None  # the query is not a section of model
    stray = qrys[0].copy()
    stray.uns.pop("fusemap_query")
    assert PanelViews.of(mapping, refs, [stray, stray]) is None  # two queries, one known
    flat = refs[0].copy()
    del flat.obsm["spatial"]  # a reference the model's preprocessing cannot read
    assert PanelViews.of(mapping, [flat, *refs[1:]], qrys) is None
