"""CCF labels transferred from registered reference sections to a query through FuseMap's
tissue embedding (tiny sections cut from the real CCFv3 at 50 um)."""

import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate import MLPLabelClassifier, map_query
from napari_brainatlas.annotate.ccf_labels import (
    UNASSIGNED,
    ccf_transfer_key,
    estimate_position,
    plane_search_inputs,
    reference_level_labels,
    transfer_ccf_labels,
)
from napari_brainatlas.atlas import Atlas
from napari_brainatlas.demo.ccf_sections import (
    CCFExpressionModel,
    SectionSpec,
    as_reference,
    make_ccf_sections,
)
from napari_brainatlas.fusemap import TISSUE_KEY, FuseMap
from napari_brainatlas.register.ccf_levels import ccf_level_labels
from napari_brainatlas.register.metrics import label_division_index

from ._data import CCF50, ONTO_CSV, shared

MAPPINGS: dict = {}


@pytest.fixture(scope="module")
def mapped():
    """3 reference coronal sections around AP 6000-7500 um and a query between them."""
    atlas = Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = CCFExpressionModel(atlas, 0)
    specs = [
        SectionSpec(position_um=p, n_cells=700, rotation_deg=r, seed=i, name=f"R{i}")
        for i, (p, r) in enumerate([(6000.0, 20.0), (6700.0, -60.0), (7500.0, 130.0)])
    ]
    specs.append(SectionSpec(position_um=6900.0, n_cells=700, rotation_deg=75.0, seed=9, name="Q"))
    secs = make_ccf_sections(atlas, specs, model=model)
    ref = [as_reference(a, atlas) for a in secs[:3]]
    fm = FuseMap(ref, n_latent=16, n_hidden=64, disc_hidden=32, min_steps=0, seed=0)
    fm.train(max_epochs=4)
    ref_emb = fm.write_embeddings(copy=True)
    mapping = map_query(fm, [secs[3]], epochs=4, seed=0)
    q = mapping.write_embeddings()[0]
    torch.set_num_threads(n)
    MAPPINGS["mapped"] = mapping  # for the panel-view test (the value stays a triple)
    return atlas, ref_emb, q


def test_transfer_beats_chance(mapped):
    atlas, ref, q = mapped
    out = transfer_ccf_labels(ref, q, atlas, levels=("division", "fine"), min_confidence=0.0)[0]
    truth = ccf_level_labels(atlas, q.obs["ccf_id_true"].to_numpy(), "division")
    pred = out.obs["ccf_division_transfer"].astype(str).to_numpy()
    chance = max(np.mean(truth == t) for t in np.unique(truth))  # the majority class
    acc = np.mean(pred == truth)
    assert acc > chance + 0.15, (acc, chance)
    assert "ccf_fine_transfer" in out.obs and "ccf_fine_transfer_uncertainty" in out.obs
    rec = out.uns["ccf_label_transfer"]
    assert set(rec) == {"division", "fine"} and rec["division"]["fraction_assigned"] == 1.0
    assert ccf_transfer_key(6) == "ccf_depth6_transfer"


def test_unassigned_and_uncertainty(mapped):
    atlas, ref, q = mapped
    kw = {"levels": "division", "smooth_k": 0, "seed": 3}
    raw = transfer_ccf_labels(ref, q, atlas, min_confidence=0.0, **kw)[0]
    thr = transfer_ccf_labels(ref, q, atlas, min_confidence=0.6, **kw)[0]
    key = "ccf_division_transfer"
    u = thr.obs[f"{key}_uncertainty"].to_numpy()
    assert u.dtype == np.float32 and np.isfinite(u).all() and (u >= 0).all() and (u <= 1).all()
    # the uncertainty is 1 - max p of FuseMap's classifier on the reference z_T
    Z = np.concatenate([a.obsm[TISSUE_KEY] for a in ref])
    y = np.concatenate([reference_level_labels(a, atlas) for a in ref])
    clf = MLPLabelClassifier(seed=3, balance="balanced").fit(Z[y != ""], y[y != ""])
    p = clf.predict_proba(q.obsm[TISSUE_KEY])
    assert np.allclose(u, 1.0 - p.max(1), atol=1e-5)
    assert np.array_equal(raw.obs[key].astype(str), clf.classes_[p.argmax(1)])
    low = 1.0 - u < 0.6
    lab = thr.obs[key].astype(str).to_numpy()
    assert low.any() and (~low).any()
    assert (lab[low] == UNASSIGNED).all()
    assert np.array_equal(lab[~low], raw.obs[key].astype(str).to_numpy()[~low])
    # too few counts: unassigned with uncertainty 1
    none = transfer_ccf_labels(ref, q, atlas, levels="division", min_counts=1e9)[0]
    assert (none.obs[key] == UNASSIGNED).all()
    assert (none.obs[f"{key}_uncertainty"] == 1.0).all()
    assert none.uns["ccf_label_transfer"]["division"]["fraction_assigned"] == 0.0


def test_cells_without_embedding_are_unassigned(mapped):
    atlas, ref, q = mapped
    q2 = q.copy()
    q2.obsm[TISSUE_KEY] = q2.obsm[TISSUE_KEY].copy()
    q2.obsm[TISSUE_KEY][:10] = np.nan  # cells the model dropped
    out = transfer_ccf_labels(ref, q2, atlas)[0]
    assert (out.obs["ccf_division_transfer"].iloc[:10] == UNASSIGNED).all()
    u = out.obs["ccf_division_transfer_uncertainty"].to_numpy()
    assert np.isfinite(u).all() and (u[:10] == 1.0).all()


def test_plane_search_inputs(mapped):
    atlas, ref, q = mapped
    out = transfer_ccf_labels(ref, q, atlas, levels=("division", "fine"), min_confidence=0.5)[0]
    div, w = plane_search_inputs(out, atlas)
    lab = out.obs["ccf_division_transfer"].astype(str).to_numpy()
    assert np.array_equal(div, label_division_index(atlas, lab))
    assert (div[lab == UNASSIGNED] == -1).all() and (w[div < 0] == 0).all()
    u = out.obs["ccf_division_transfer_uncertainty"].to_numpy()
    assert np.allclose(w[div >= 0], 1.0 - u[div >= 0])
    # fine labels: layers count as isocortex
    dfine, _ = plane_search_inputs(out, atlas, "ccf_fine_transfer")
    fine = out.obs["ccf_fine_transfer"].astype(str).to_numpy()
    iso = label_division_index(atlas, np.array(["Isocortex"]))[0]
    assert (dfine[np.char.startswith(fine.astype(str), "L")] == iso).all()
    with pytest.raises(BrainAtlasInputError):
        plane_search_inputs(q, atlas)


def test_position_and_bad_input(mapped):
    atlas, ref, q = mapped
    est = estimate_position(ref, q, atlas, plane="coronal")
    # between the references' positions (6000 - 7500 um), near the query's 6900 um
    assert 5900.0 <= est["position_um"] <= 7600.0 and est["spread_um"] >= 0
    with pytest.raises(BrainAtlasInputError):
        transfer_ccf_labels(ref, [a.copy() for a in [q]], atlas, levels="no level")
    bare = ref[0].copy()
    del bare.obs["ccf_id"], bare.obs["ccf_acronym"]
    with pytest.raises(BrainAtlasInputError):
        transfer_ccf_labels([bare], q, atlas)
    noemb = q.copy()
    del noemb.obsm[TISSUE_KEY]
    with pytest.raises(BrainAtlasInputError):
        transfer_ccf_labels(ref, noemb, atlas)


def test_panel_views_with_the_mapping(mapped):
    """views='panels' with the mapping: the level classifier's probabilities averaged
    over the reference read through the query's encoder (z_T on the reference's own
    graph) and the query read through each reference encoder; a valid transfer that
    beats chance and records the views; 'embedding' (default) or no model reads z_T."""
    atlas, ref, q = mapped
    mapping = MAPPINGS["mapped"]
    out = transfer_ccf_labels(
        ref, q, atlas, levels=("division", "fine"), model=mapping, views="panels"
    )[0]
    plain = transfer_ccf_labels(ref, q, atlas, levels="division")[0]
    rec = out.uns["ccf_label_transfer"]
    assert rec["division"]["views"] == "panels" and rec["fine"]["views"] == "panels"
    assert plain.uns["ccf_label_transfer"]["division"]["views"] == "embedding"
    truth = ccf_level_labels(atlas, q.obs["ccf_id_true"].to_numpy(), "division")
    pred = out.obs["ccf_division_transfer"].astype(str).to_numpy()
    chance = max(np.mean(truth == t) for t in np.unique(truth))
    assert np.mean(pred == truth) > chance + 0.15
    u = out.obs["ccf_division_transfer_uncertainty"].to_numpy()
    assert u.dtype == np.float32 and np.isfinite(u).all() and (u >= 0).all() and (u <= 1).all()
    assert set(out.obs["ccf_division_transfer"].cat.categories) == set(
        plain.obs["ccf_division_transfer"].cat.categories
    )
    no_model = transfer_ccf_labels(ref, q, atlas, levels="division", views="panels")[0]
    assert no_model.uns["ccf_label_transfer"]["division"]["views"] == "embedding"
    off = transfer_ccf_labels(ref, q, atlas, levels="division", model=mapping, views="embedding")
    assert off[0].uns["ccf_label_transfer"]["division"]["views"] == "embedding"
    with pytest.raises(BrainAtlasInputError, match="views"):
        transfer_ccf_labels(ref, q, atlas, views="both")


def test_cancel_anywhere_in_the_panel_views_stops(mapped):
    """A cancel raised at any point of a panel-view transfer (the level classifier or the
    extra classifiers of the views) ends in Cancelled, never in labels from a classifier
    that stopped early."""
    from napari_brainatlas import Cancelled

    atlas, ref, q = mapped
    mapping = MAPPINGS["mapped"]
    calls = []
    kw = {"levels": "division", "model": mapping, "max_epochs": 30}
    transfer_ccf_labels(ref, q, atlas, cancel=lambda: calls.append(1) and False, **kw)
    n = len(calls)
    for k in (1, n // 2, n - 1):
        seen = []
        with pytest.raises(Cancelled):
            transfer_ccf_labels(
                ref, q, atlas, cancel=lambda: seen.append(1) or len(seen) >= k, **kw
            )
