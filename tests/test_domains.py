"""SpaCon connectivity-aware domains: connectome reading and mapping, GAT, training,
re-mixing without retraining, connectivity prediction, the ``domains`` command."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.domains import (
    GATLayer,
    demo_connectome,
    map_cells,
    map_structures,
    mix_weight,
    prepare,
    read_oh2014,
    train,
)
from napari_brainatlas.domains.connectome import DEMO_MIDLINE_ML_UM
from napari_brainatlas.domains.graphs import connectivity_graph, spatial_graph
from napari_brainatlas.domains.predict import (
    connectome_without_rows,
    predict_connectivity,
    region_means,
    ridge_cv_r2,
)
from napari_brainatlas.domains.spacon import embed

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OH2014 = SHARED / "oh2014_connectome" / "nature13186-s4_SupplTable3_W_ipsi_contra.xlsx"
CCF_ONTOLOGY = SHARED / "ccfv3_ontology" / "structure_tree_safe_2017.csv"


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def _truth_registered(adata: AnnData) -> AnnData:
    """What a perfect registration writes: ccf_id, ccf_acronym, ccf_coords from the truth."""
    ad = adata.copy()
    ad.obs["ccf_id"] = ad.obs["ccf_id_true"].to_numpy().astype(np.int64)
    ad.obs["ccf_acronym"] = ad.obs["ccf_acronym_true"].astype(str).to_numpy()
    ad.obsm["ccf_coords"] = np.asarray(ad.obsm["ccf_coords_true"], float)
    ad.uns["ccf_registration"] = {"truth": {"atlas": "demo"}}
    return ad


@pytest.fixture(scope="module")
def sections():
    from napari_brainatlas.demo import make_demo_sections

    return [
        _truth_registered(s) for s in make_demo_sections(seed=0, n_sections=4, cells_per_mm2=60)
    ]


@pytest.fixture(scope="module")
def ontology():
    from napari_brainatlas.atlas.demo_atlas import demo_ontology

    return demo_ontology()


@pytest.fixture(scope="module")
def data(sections, ontology):
    return prepare(sections, demo_connectome(), ontology)


@pytest.fixture(scope="module")
def model(data):
    return train(data, epochs=4, batch_size=512, seed=0, num_threads=1)


# --------------------------------------------------------------------------- connectome
def test_demo_connectome_is_a_connectome():
    con = demo_connectome()
    assert con.n_regions == 8 and con.w_ipsi.shape == con.w_contra.shape == (8, 8)
    f = con.frame("ipsi")
    assert f.loc["Isocortex", "TH"] > 0.5 and f.loc["TH", "Isocortex"] > 0.5
    assert f.loc["STR", "PAL"] > 0.5 and f.loc["PAL", "STR"] == 0.0
    assert f.loc["HPF", "Isocortex"] > 0 and f.loc["Isocortex", "HPF"] > 0
    assert type(con) is type(
        read_oh2014.__globals__["Connectome"](["a", "b"], np.eye(2), np.zeros((2, 2)))
    )


def test_mapping_walks_up_and_sides(sections, ontology):
    con = demo_connectome()
    ad = sections[0]
    region, hemi = map_cells(ad, ontology, con)
    acr = ad.obs["ccf_acronym"].to_numpy()
    major = ad.obs["region"].astype(str).to_numpy()
    layer = np.isin(acr, ["CTX1", "CTX2/3", "CTX4", "CTX5", "CTX6"])
    assert layer.any()
    assert np.all(region[layer] == con.index("Isocortex"))  # CTX2/3 -> Isocortex
    dg = acr == "DG"
    if dg.any():
        assert np.all(region[dg] == con.index("HPF"))
    outside = np.isin(major, ["fiber tracts", "VS"])
    assert outside.any() and np.all(region[outside] == -1)
    inside = np.isin(major, list(con.regions))
    assert np.array_equal(np.asarray(con.regions)[region[inside]], major[inside])
    ml = ad.obsm["ccf_coords"][:, 2]
    assert np.array_equal(hemi, (ml >= DEMO_MIDLINE_ML_UM).astype(np.int8))
    assert set(np.unique(hemi)) == {0, 1}  # a full section
    # by acronym only (no ccf_id) gives the same rows
    ad2 = ad.copy()
    del ad2.obs["ccf_id"]
    r2, _ = map_cells(ad2, ontology, con)
    assert np.array_equal(r2, region)


def test_unregistered_section_is_refused(sections, ontology):
    ad = sections[0].copy()
    del ad.obs["ccf_id"], ad.obs["ccf_acronym"]
    with pytest.raises(BrainAtlasInputError, match="not registered"):
        map_cells(ad, ontology, demo_connectome())


def test_connectivity_graph_follows_the_matrix(data):
    con = data.connectome
    g = data.connect
    region, hemi = data.region, data.hemi
    real = g.src != g.dst
    s, d = g.src[real], g.dst[real]
    assert s.size > 0
    assert np.all(region[s] >= 0) and np.all(region[d] >= 0)
    same = hemi[s] == hemi[d]
    # every edge carries a positive weight between the two regions, in one direction or
    # the other (the graph is symmetric), through W_ipsi on one side, W_contra across
    w_sd = np.where(same, con.w_ipsi[region[s], region[d]], con.w_contra[region[s], region[d]])
    w_ds = np.where(same, con.w_ipsi[region[d], region[s]], con.w_contra[region[d], region[s]])
    assert np.all(np.maximum(w_sd, w_ds) > 0)
    # symmetric, and cells without a row hear only themselves
    key = set(zip(s.tolist(), d.tolist()))
    assert all((b, a) in key for a, b in list(key)[:2000])
    lonely = np.flatnonzero(region < 0)
    deg = g.in_degree()
    assert np.all(deg[lonely] == 1) and np.all(g.src[g.indptr[lonely]] == lonely)
    # cortex cells hear from thalamus cells (strong reciprocal pair)
    ctx, th = con.index("Isocortex"), con.index("TH")
    assert np.any((region[s] == th) & (region[d] == ctx))
    # sparsified: a bounded number of edges per cell
    assert deg.max() < 200


def test_spatial_graph_knn():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 1000, (500, 3))
    g = spatial_graph(xyz, k=6)
    assert np.all(g.in_degree() >= 7)  # k neighbours + itself (+ symmetric extras)
    d = np.linalg.norm(xyz[g.src] - xyz[g.dst], axis=1)
    assert np.median(d) < 150
    key = set(zip(g.src.tolist(), g.dst.tolist()))
    assert all((b, a) in key for a, b in key)


def test_connectivity_graph_sampling_is_bounded():
    region = np.repeat([0, 1, 2, -1], 50)
    hemi = np.tile([0, 1], 100)
    wi = np.array([[0, 1.0, 0.5], [1.0, 0, 0], [0, 0, 0]])
    wc = np.array([[0, 0.2, 0], [0, 0, 0], [0, 0, 0]])
    g = connectivity_graph(region, hemi, wi, wc, top_k=1, per_region=2, seed=0)
    out_deg = np.bincount(g.src, minlength=200)
    # region 0 keeps only its strongest target (region 1, same side), 2 cells each
    src0 = g.src[(region[g.src] == 0) & (region[g.dst] == 1)]
    assert src0.size > 0
    tgt = g.dst[(region[g.src] == 1) & (region[g.dst] == 0)]
    assert np.all(hemi[g.src[(region[g.src] == 1) & (region[g.dst] == 0)]] == hemi[tgt])
    assert not np.any((region[g.src] == 2) & (region[g.dst] == 0))  # 0->2 not in top-1
    assert out_deg.max() < 60


# --------------------------------------------------------------------------- GAT
def _dense_gat(layer: GATLayer, x, src, dst, n_dst):
    """Reference: loops over destinations, softmax over their incoming edges."""
    H, C = layer.heads, layer.out_dim
    h = layer.lin(x).view(-1, H, C)
    out = torch.zeros(n_dst, H, C)
    for i in range(n_dst):
        js = src[dst == i]
        if js.numel() == 0:
            continue
        e = torch.nn.functional.leaky_relu(
            (h[js] * layer.att_src).sum(-1) + (h[i] * layer.att_dst).sum(-1), 0.2
        )
        a = torch.softmax(e, dim=0)
        out[i] = (a.unsqueeze(-1) * h[js]).sum(0)
    return out.reshape(n_dst, H * C) + layer.bias


def test_gat_layer_shapes_softmax_gradients():
    torch.manual_seed(0)
    n, n_dst = 40, 25
    src = torch.randint(0, n, (200,))
    dst = torch.randint(0, n_dst - 3, (200,))  # the last 3 destinations get no edge
    layer = GATLayer(7, 5, heads=3)
    x = torch.randn(n, 7, requires_grad=True)
    out, att = layer(x, torch.stack([src, dst]), n_dst, return_attention=True)
    assert out.shape == (n_dst, 15) and att.shape == (200, 3)
    sums = torch.zeros(n_dst, 3).index_add_(0, dst, att)
    assert torch.allclose(sums[: n_dst - 3], torch.ones(n_dst - 3, 3), atol=1e-5)
    assert torch.allclose(out[n_dst - 3 :], layer.bias.expand(3, -1))
    ref = _dense_gat(layer, x, src, dst, n_dst)
    assert torch.allclose(out, ref, atol=1e-5)
    out.pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    # concat=False averages the heads
    mean_layer = GATLayer(7, 5, heads=3, concat=False)
    assert mean_layer(x, torch.stack([src, dst]), n_dst).shape == (n_dst, 5)


def test_mix_weight_curve():
    assert mix_weight(0) == 0.0 and abs(mix_weight(1) - 1.0) < 1e-12
    f = [mix_weight(a) for a in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in itertools.pairwise(f))
    assert abs(mix_weight(0.5) - (np.exp(-2) - 1) / (np.exp(-4) - 1)) < 1e-12
    with pytest.raises(ValueError):
        mix_weight(1.5)


# --------------------------------------------------------------------------- training
def test_sampled_embedding_equals_full_graph(data, model):
    """Neighbour-sampled chunks give exactly the full-graph embedding (1-hop encoders)."""
    zs_small, zc_small = embed(model.net, data, chunk=1000)
    zs_big, zc_big = embed(model.net, data, chunk=10**7)
    assert np.allclose(zs_small, zs_big, atol=1e-5) and np.allclose(zc_small, zc_big, atol=1e-5)
    assert np.allclose(zs_big, model.z_spatial, atol=1e-5)


def test_training_reduces_loss_and_stores_embeddings(data, model):
    assert len(model.history) == 4 and model.history[-1]["loss"] < model.history[0]["loss"]
    n = data.n_cells
    assert model.z_spatial.shape == model.z_connect.shape == (n, 16)
    assert np.isfinite(model.z_spatial).all() and np.isfinite(model.z_connect).all()
    assert not np.allclose(model.z_spatial, model.z_connect)


def test_alpha_changes_domains_without_retraining(data, model):
    from sklearn.metrics import adjusted_rand_score

    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    zs, zc = model.z_spatial.copy(), model.z_connect.copy()
    f = mix_weight(0.3)
    assert np.allclose(model.mix(0.3), (1 - f) * zs + f * zc, atol=1e-6)
    assert np.allclose(model.mix(0.0), zs) and np.allclose(model.mix(1.0), zc)
    d0 = model.domains(0.0, resolution=0.5)
    d1 = model.domains(1.0, resolution=0.5)
    assert d0.shape == d1.shape == (data.n_cells,)
    assert d0.max() >= 1 and d1.max() >= 1
    assert adjusted_rand_score(d0, d1) < 0.95
    assert np.array_equal(model.domains(0.0, resolution=0.5), d0)  # deterministic
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.array_equal(zs, model.z_spatial) and np.array_equal(zc, model.z_connect)


def test_training_can_be_cancelled(data):
    from napari_brainatlas.domains import TrainingCancelled

    seen = []
    with pytest.raises(TrainingCancelled):
        train(
            data,
            epochs=50,
            batch_size=256,
            num_threads=1,
            progress=lambda e, n, loss: seen.append(e),
            cancel=lambda: len(seen) >= 1,
        )
    assert seen == [1]


def test_write_results(sections, data, model):
    from napari_brainatlas.domains import write_results

    secs = [s.copy() for s in sections]
    labels = model.domains(0.5, n_domains=6)
    write_results(secs, data, model, 0.5, labels)
    for s in secs:
        assert s.obs["spacon_domain"].dtype.name == "category"
        assert s.obsm["X_spacon"].shape == (s.n_obs, 16)
        assert s.uns["spacon"]["alpha"] == 0.5
        f = s.uns["spacon"]["f"]
        assert np.allclose(
            s.obsm["X_spacon"],
            (1 - f) * s.obsm["X_spacon_spatial"] + f * s.obsm["X_spacon_connect"],
            atol=1e-5,
        )


# --------------------------------------------------------------------------- prediction
def test_ridge_cv_r2_recovers_linear_and_rejects_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    Y = X @ rng.normal(size=(6, 10)) + 0.05 * rng.normal(size=(40, 10))
    assert ridge_cv_r2(X, Y, n_folds=5)["r2"] > 0.95
    noise = rng.normal(size=(40, 10))
    assert ridge_cv_r2(X, noise, n_folds=5)["r2"] < 0.1


def test_predict_connectivity_on_demo(data, model):
    emb = region_means(model.mix(1.0), data.region, data.connectome)
    res = predict_connectivity(data.region_expression, data.connectome, emb)
    present = list(data.region_expression.index)
    assert res["n_regions"] == len(present) >= 5 and res["regions"] == present
    for key in ("expression", "expression+embedding"):
        assert np.isfinite(res[key]["r2"]) and res[key]["r2"] <= 1.0
        assert res[key]["pred"].shape == (len(present), 16)
    held = connectome_without_rows(data.connectome, ["TH"])
    assert held.w_ipsi[held.index("TH")].sum() == 0
    assert held.w_ipsi[held.index("Isocortex")].sum() > 0


# --------------------------------------------------------------------------- real connectome
@pytest.fixture(scope="module")
def oh2014():
    return read_oh2014(_real(OH2014))


@pytest.fixture(scope="module")
def ccf_ontology():
    from napari_brainatlas.atlas import Ontology

    return Ontology.from_file(_real(CCF_ONTOLOGY))


def test_real_connectome_parses(oh2014):
    con = oh2014
    assert con.n_regions == 213
    assert con.w_ipsi.shape == con.w_contra.shape == (213, 213)
    assert con.p_ipsi.shape == con.p_contra.shape == (213, 213)
    assert con.regions[:3] == ["AAA", "ACAd", "ACAv"]
    assert (con.w_ipsi >= 0).all() and con.w_ipsi.max() > 1
    f = con.frame("ipsi")
    assert f.loc["ACAd", "ACAd"] > 1.0  # strong local projection
    masked = con.masked(0.05)
    assert 0 < (masked.w_ipsi > 0).sum() < (con.w_ipsi > 0).sum()
    assert np.all(masked.w_ipsi[masked.w_ipsi > 0] == con.w_ipsi[masked.w_ipsi > 0])
    assert read_oh2014(OH2014) is con  # cached


def test_real_connectome_maps_onto_ccf_ontology(oh2014, ccf_ontology):
    con, onto = oh2014, ccf_ontology
    for acr in con.regions:  # every matrix acronym is a CCF structure
        onto.id_of(acr)
    ids = [
        onto.id_of(a) for a in ("VISp2/3", "VISp", "SSp-bfd4", "CA1", "Isocortex", "fiber tracts")
    ]
    rows = map_structures(np.array(ids + [0, 123456789]), onto, con)
    assert rows[0] == rows[1] == con.index("VISp")  # layer-specific walks up
    assert rows[2] == con.index("SSp-bfd")
    assert rows[3] == con.index("CA1")
    assert rows[4] == -1 and rows[5] == -1  # coarser / outside: no row
    assert rows[6] == -1 and rows[7] == -1  # outside the brain / unknown
    # on cells: ids from the ontology, sides across the CCF midline
    ad = AnnData(np.ones((4, 2), np.float32))
    ad.obs["ccf_id"] = np.array([ids[0], ids[0], ids[3], 0])
    ad.obsm["ccf_coords"] = np.array(
        [[8000, 1000, 3000], [8000, 1000, 9000], [7000, 2000, 4000], [0, 0, 0]], float
    )
    region, hemi = map_cells(ad, onto, con)
    assert region.tolist() == [con.index("VISp")] * 2 + [con.index("CA1"), -1]
    assert hemi.tolist() == [0, 1, 0, 0]


def test_bad_connectome_files(tmp_path):
    with pytest.raises(BrainAtlasInputError, match="not found"):
        read_oh2014(tmp_path / "missing.xlsx")
    bad = tmp_path / "w.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(BrainAtlasInputError, match="xlsx"):
        read_oh2014(bad)
    wb = tmp_path / "nosheet.xlsx"
    pd.DataFrame({"a": [1]}).to_excel(wb, sheet_name="other", index=False)
    with pytest.raises(BrainAtlasInputError, match="W_ipsi"):
        read_oh2014(wb)


# --------------------------------------------------------------------------- registration
def test_registered_through_the_engine(ontology):
    """One section registered by the registration engine, then mapped and embedded."""
    reg = pytest.importorskip("napari_brainatlas.register")
    from napari_brainatlas.atlas import make_demo_atlas
    from napari_brainatlas.demo import make_demo_sections

    atlas = make_demo_atlas()
    s = make_demo_sections(seed=1, n_sections=1, cells_per_mm2=60)[0]
    t = s.uns["demo_truth"]
    res = reg.register_section(
        s, atlas, "coronal", t["position_um"], t["hemisphere"], midline=t["midline"]
    )
    out = reg.apply_registration(s, res, atlas)
    con = demo_connectome()
    region, _hemi = map_cells(out, ontology, con)
    truth, _ = map_cells(_truth_registered(s), ontology, con)
    assert (region >= 0).mean() > 0.7
    assert (region == truth).mean() > 0.75
    d = prepare([out], con, ontology)
    assert d.connect.n_edges > d.n_cells


# --------------------------------------------------------------------------- command line
def _parser():
    from napari_brainatlas.cli import domains as cli

    p = argparse.ArgumentParser(prog="napari-brainatlas")
    sub = p.add_subparsers(dest="command")
    cli.add_parser(sub)
    return p


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_domains_cli(tmp_path, sections, capsys):
    from napari_brainatlas.io import read_sections

    paths = []
    for i, s in enumerate(sections[:2]):
        p = tmp_path / f"in{i}.h5ad"
        s.write_h5ad(p)
        paths.append(str(p))
    out = tmp_path / "out"
    rc = _run(
        [
            "domains",
            *paths,
            "--connectome",
            "demo",
            "--alpha",
            "0.5",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--threads",
            "1",
            "--n-domains",
            "5",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch 2/2" in text and "domains" in text
    written = sorted(out.glob("*.h5ad"))
    assert len(written) == 2
    for p in written:
        ad = read_sections(p)[0]
        assert "spacon_domain" in ad.obs and ad.obsm["X_spacon"].shape[1] == 16
        assert ad.uns["spacon"]["alpha"] == 0.5
    assert (out / "spacon_model" / "weights.pt").exists()
    state = torch.load(out / "spacon_model" / "weights.pt", weights_only=True)
    assert "enc_connect.gat.att_src" in state
    # bad input: one-sentence input errors
    with pytest.raises(BrainAtlasInputError, match="alpha"):
        _run(["domains", paths[0], "--connectome", "demo", "--alpha", "2", "--out", str(out)])
    with pytest.raises(BrainAtlasInputError, match="not found"):
        _run(
            [
                "domains",
                paths[0],
                "--connectome",
                str(tmp_path / "no.xlsx"),
                "--alpha",
                "0",
                "--out",
                str(out),
            ]
        )
    raw = sections[0].copy()
    del raw.obs["ccf_id"], raw.obs["ccf_acronym"]
    raw.write_h5ad(tmp_path / "raw.h5ad")
    with pytest.raises(BrainAtlasInputError, match="register"):
        _run(
            [
                "domains",
                str(tmp_path / "raw.h5ad"),
                "--connectome",
                "demo",
                "--alpha",
                "0",
                "--out",
                str(out),
            ]
        )


def test_domains_cli_through_main(tmp_path, sections, capsys, monkeypatch):
    """Through the console script's main (the subcommand added if not registered yet):
    bad input is one line on stderr and exit code 2."""
    from napari_brainatlas import cli

    mod = "napari_brainatlas.cli.domains"
    assert mod in cli.SUBCOMMAND_MODULES
    p = tmp_path / "in.h5ad"
    sections[0].write_h5ad(p)
    rc = cli.main(
        ["domains", str(p), "--connectome", "demo", "--alpha", "3", "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alpha" in err[0]
    rc = cli.main(
        [
            "domains",
            str(p),
            "--connectome",
            str(tmp_path / "none.xlsx"),
            "--alpha",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not found" in err[0]


def test_clustering_a_subset_labels_every_cell(model):
    z = model.mix(0.5)
    lab = model.domains(0.5, resolution=0.5, max_cluster_cells=800)
    assert lab.shape == (len(z),) and lab.min() == 0
    counts = np.bincount(lab)
    assert np.all(counts > 0) and counts[0] == counts.max()  # 0 = largest domain
