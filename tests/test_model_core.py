"""FuseMap model: shapes, gradients, save/load, determinism, cancel, outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.fusemap import CELL_KEY, TISSUE_KEY, FuseMap, make_synthetic_sections
from napari_brainatlas.fusemap._training import forward_section, gather_subgraph

TINY = {"n_latent": 8, "n_hidden": 32, "disc_hidden": 16, "batch_size": 32}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sections():
    return make_synthetic_sections(
        n_sections=3, n_cells=[220, 160, 120], n_genes=24, n_shared=12, seed=0
    )


def test_shapes_and_module_structure(sections):
    m = FuseMap(sections, seed=0, **TINY)
    mod = m.module
    assert list(mod.encoders.keys()) == m.section_names == ["syn0", "syn1", "syn2"]
    n_genes = len(set().union(*[{g.upper() for g in a.var_names} for a in sections]))
    assert mod.gene_embedding.shape == (n_genes, 8)
    for name, a in zip(m.section_names, sections):
        rows = mod.gene_rows(name)
        assert [mod.genes[i] for i in rows.tolist()] == [g.upper() for g in a.var_names]
    zc = m.get_latent_representation("cell")
    zt = m.get_latent_representation("tissue", section="syn1")
    assert [z.shape for z in zc] == [(a.n_obs, 8) for a in sections]
    assert zt.shape == (160, 8)
    ge = m.gene_embedding()
    assert isinstance(ge, pd.DataFrame) and ge.shape == (n_genes, 8)


def test_subgraph_gives_exact_full_graph_result(sections):
    m = FuseMap(sections[:1], seed=0, **TINY)
    sd = m.data[0]
    seeds = np.array([0, 5, 17, 40])
    n2, A1, A0, _s1, s2 = gather_subgraph(sd.A, seeds)
    z = np.random.default_rng(0).normal(size=(sd.n, 3)).astype(np.float32)
    full = sd.A @ (sd.A @ z)
    np.testing.assert_allclose(A0 @ (A1 @ z[n2]), full[seeds], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(n2[s2], seeds)
    assert len(n2) < sd.n  # only the 2-hop neighbourhood is gathered
    m.module.eval()
    o = forward_section(m.module, sd, seeds, m.device, sample=False)
    assert o["zc"].shape == (4, 8) and o["zt"].shape == (4, 8)


def test_gradients_reach_every_part(sections):
    m = FuseMap(sections, seed=0, **TINY)
    m.module.train()
    outs = [
        forward_section(m.module, sd, sd.train_idx[:32], m.device, sample=True) for sd in m.data
    ]
    ae = sum(o["recon"] + o["kl"] for o in outs)
    zc = torch.cat([o["zc"] for o in outs])
    zt = torch.cat([o["zt"] for o in outs])
    y = torch.cat([torch.full((len(o["seeds"]),), i) for i, o in enumerate(outs)])
    ce = torch.nn.functional.cross_entropy(
        m.module.disc_cell(zc), y
    ) + torch.nn.functional.cross_entropy(m.module.disc_tissue(zt), y)
    (ae - 0.5 * ce).backward()
    for name, p in m.module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # the gene embedding rows of the sections' genes get gradient (a row can be silent
    # only when ReLU(h e_g) is 0 for every seed of the batch)
    used = torch.cat([m.module.gene_rows(n) for n in m.section_names]).unique()
    assert (m.module.gene_embedding.grad[used].abs().sum(1) > 0).float().mean() > 0.9


def test_train_save_load_round_trip_and_outputs(sections, tmp_path):
    copies = [a.copy() for a in sections]
    seen = []
    m = FuseMap(copies, seed=0, **TINY)
    hist = m.train(max_epochs=2, progress=lambda e, n, info: seen.append((e, n, info["phase"])))
    assert m.is_trained and hist and seen[0] == (1, 4, "pretrain")
    assert {"recon", "kl", "disc", "adv", "val_loss", "lambda"} <= set(hist[-1])
    assert any(ph == "final" for _, _, ph in seen)
    assert m.lambda_adv > 0
    z = m.get_latent_representation("cell")
    zt = m.get_latent_representation("tissue")
    m.save(tmp_path / "fm")
    for f in ("weights.pt", "config.json", "history.json", "genes.csv", "panels.csv"):
        assert (tmp_path / "fm" / f).exists()
    panels = pd.read_csv(tmp_path / "fm" / "panels.csv")
    assert list(pd.unique(panels["section"])) == m.section_names
    assert json.loads((tmp_path / "fm" / "config.json").read_text())["model"] == "FuseMap"
    state = torch.load(tmp_path / "fm" / "weights.pt", weights_only=True)
    assert "gene_embedding" in state
    m2 = FuseMap.load(tmp_path / "fm", sections=[a.copy() for a in sections])
    for a, b in zip(z, m2.get_latent_representation("cell")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(zt, m2.get_latent_representation("tissue")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(m.gene_embedding(), m2.gene_embedding())
    genes_csv = pd.read_csv(tmp_path / "fm" / "genes.csv", index_col=0)
    np.testing.assert_allclose(genes_csv.to_numpy(), m.gene_embedding().to_numpy(), rtol=1e-6)
    m3 = FuseMap.load(tmp_path / "fm")  # without data: gene embedding only
    assert m3.gene_embedding().shape == m.gene_embedding().shape
    with pytest.raises(BrainAtlasInputError):
        m3.get_latent_representation()
    # write back: by default (copy=True) the given objects are left alone; copy=False
    # writes into them (the default before the shared model protocol)
    fresh = [a.copy() for a in sections]
    m4 = FuseMap.load(tmp_path / "fm", sections=fresh)
    out = m4.write_embeddings()
    assert CELL_KEY not in fresh[0].obsm and out[0].obsm[CELL_KEY].shape == (220, 8)
    out = m4.write_embeddings(copy=False)
    assert out[1] is fresh[1] and fresh[1].obsm[TISSUE_KEY].shape == (160, 8)
    imp = m.impute("syn0")
    assert imp.shape == (220, len(m.module.genes)) and (imp.to_numpy() >= 0).all()


def test_dropped_cells_get_nan_rows(sections):
    a = sections[0].copy()
    a.X[0] = 0
    a.layers["counts"] = a.X.copy()
    m = FuseMap([a, sections[1]], seed=0, **TINY)
    z = m.get_latent_representation("cell", section=0)
    assert np.isnan(z[0]).all() and np.isfinite(z[1:]).all()


def test_deterministic_for_a_seed(sections):
    def run(seed):
        m = FuseMap(sections, seed=seed, **TINY)
        m.train(max_epochs=1)
        return m.get_latent_representation("cell")

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])


def test_cancel_stops_training(sections):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    m = FuseMap(sections, seed=0, **TINY)
    before = m.module.gene_embedding.detach().clone()
    m.train(max_epochs=50, cancel=cancel)
    assert m.cancelled and calls["n"] == 4
    assert not torch.equal(before, m.module.gene_embedding.detach())  # 3 steps were taken
    assert len(m.history) == 0  # no epoch finished
    assert np.isfinite(m.get_latent_representation("cell")[0]).all()


def test_bad_input(sections):
    a = sections[0].copy()
    del a.obsm["spatial"]
    with pytest.raises(BrainAtlasInputError):
        FuseMap([a])
    with pytest.raises(BrainAtlasInputError):
        FuseMap([])
    with pytest.raises(BrainAtlasInputError):
        FuseMap(sections, section_names=["a"])


def test_query_pieces_add_section_and_genes(sections):
    m = FuseMap(sections[:2], seed=0, **TINY)
    mod = m.module
    E0 = mod.gene_embedding.detach().clone()
    genes = list(mod.section_genes["syn0"][:5]) + ["NEWGENE1", "NEWGENE2"]
    enc = mod.add_section("query", genes)
    assert "query" in mod.encoders and enc.n_genes == 7
    assert mod.gene_embedding.shape[0] == E0.shape[0] + 2
    torch.testing.assert_close(mod.gene_embedding.detach()[: E0.shape[0]], E0)
    assert mod.gene_rows("query").tolist()[:5] == mod.gene_rows("syn0").tolist()[:5]
    mod.eval()
    mu, std = mod.encode("query", torch.rand(4, 7))
    assert mu.shape == (4, 8) and (std > 0).all()
    assert mod.decode("query", mu).shape == (4, 7)
    assert mod.impute(mu, ["NEWGENE1"]).shape == (4, 1)


def test_min_steps_floor_sets_steps_per_epoch(sections):
    # 220 cells, 15 % held out -> 187 training cells of the largest section -> 6 steps of 32
    m = FuseMap(sections, seed=0, min_steps=0, **TINY)
    n_pass = int(np.ceil(max(len(sd.train_idx) for sd in m.data) / 32))
    m.train(max_epochs=1)
    assert [h["steps"] for h in m.history] == [n_pass, n_pass]
    m2 = FuseMap(sections, seed=0, min_steps=n_pass + 5, **TINY)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return False

    m2.train(max_epochs=1, cancel=cancel)
    assert [h["steps"] for h in m2.history] == [n_pass + 5, n_pass + 5]
    assert calls["n"] == 2 * (n_pass + 5)  # cancel is polled once per step
    assert m2.config["min_steps"] == n_pass + 5


def test_block_adversarial_cells_are_training_cells_of_the_block(sections):
    m = FuseMap(sections[:2], seed=0, adv_cells="block", **TINY)
    sd = m.data[0]
    seeds = sd.train_idx[:5]
    m.module.eval()
    o = forward_section(m.module, sd, seeds, m.device, sample=False, block=True)
    n1 = np.unique(sd.A[np.sort(seeds)].indices)
    n2 = np.unique(sd.A[n1].indices)
    assert set(o["zc_idx"]) == set(n2) & set(sd.train_idx)
    assert set(o["zt_idx"]) == set(n1) & set(sd.train_idx)
    assert not set(o["zc_idx"]) & set(sd.val_idx)
    assert len(o["zc_idx"]) > len(seeds)
    zc, zt = m._latent_kept()["cell"][0], m._latent_kept()["tissue"][0]
    np.testing.assert_allclose(o["zc_all"].detach().numpy(), zc[o["zc_idx"]], atol=1e-5)
    np.testing.assert_allclose(o["zt_all"].detach().numpy(), zt[o["zt_idx"]], atol=1e-5)
    m.train(max_epochs=1)  # the block variant trains end to end
    assert np.isfinite(m.history[-1]["disc"])


def test_training_options_are_checked_and_saved(sections, tmp_path):
    with pytest.raises(ValueError):
        FuseMap(sections, adv_cells="all", **TINY)
    with pytest.raises(ValueError):
        FuseMap(sections, noise_schedule="sometimes", **TINY)
    m = FuseMap(
        sections,
        seed=0,
        min_steps=3,
        adv_cells="block",
        noise_schedule="constant",
        sample_latent=False,
        **TINY,
    )
    m.save(tmp_path / "fm")
    back = FuseMap.load(tmp_path / "fm", sections)
    for k in ("min_steps", "adv_cells", "noise_schedule", "sample_latent"):
        assert back.config[k] == m.config[k], k


def test_discriminator_learns_sections_when_encoders_are_frozen(sections):
    # audit of the adversarial step: with the encoders and gene embedding frozen (lr 0),
    # the discriminators' own update must learn to tell the sections apart (the encoders
    # are untrained and section specific, so the sections are separable)
    m = FuseMap(sections, seed=0, **TINY)
    m._anneal = 0.0
    m.module.train()
    opt_ae = torch.optim.RMSprop(m._ae_params(), lr=0.0)
    opt_d = torch.optim.RMSprop(m._disc_params(), lr=1e-3)
    E0 = m.module.gene_embedding.detach().clone()
    rng = np.random.default_rng(0)
    disc = []
    for _ in range(60):
        seeds = [np.unique(rng.choice(sd.train_idx, 32, replace=False)) for sd in m.data]
        disc.append(m._step(seeds, opt_ae, opt_d)["disc"])
    assert torch.equal(E0, m.module.gene_embedding.detach())  # encoders untouched
    chance = 2 * np.log(3)  # two discriminators, 3 sections, at chance
    assert disc[0] > chance - 0.1 and np.mean(disc[-10:]) < chance - 0.3
    z = m.get_latent_representation("cell")
    y = np.concatenate([np.full(len(a), i) for i, a in enumerate(z)])
    m.module.eval()
    with torch.no_grad():
        pred = m.module.disc_cell(torch.from_numpy(np.concatenate(z))).argmax(1).numpy()
    assert (pred == y).mean() > 0.7  # also on the eval-mode embedding (chance ~0.4)


def test_weight_average_is_an_ema_with_warm_up():
    from napari_brainatlas.fusemap.fusemap import _WeightAverage

    lin = torch.nn.Linear(1, 1, bias=False)
    bn = torch.nn.BatchNorm1d(1)
    mod = torch.nn.Sequential(lin, bn)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = _WeightAverage(mod, 0.5)
    expect = 0.0
    for t, w in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        with torch.no_grad():
            lin.weight.fill_(w)
        avg.update()
        d = min(0.5, (1 + t) / (10 + t))
        expect = d * expect + (1 - d) * w
    with avg.swapped():
        assert lin.weight.item() == pytest.approx(expect)
    assert lin.weight.item() == 4.0  # raw weights restored
    avg.apply()
    assert lin.weight.item() == pytest.approx(expect)
    off = _WeightAverage(mod, 0.0)
    off.update()
    off.apply()
    assert lin.weight.item() == pytest.approx(expect)  # decay 0: no-op


def test_training_ends_with_averaged_weights(sections, tmp_path):
    a = FuseMap(sections, seed=0, weight_average=0.0, **TINY)
    b = FuseMap(sections, seed=0, weight_average=0.99, **TINY)
    a.train(max_epochs=1)
    b.train(max_epochs=1)
    za, zb = a.get_latent_representation("cell"), b.get_latent_representation("cell")
    assert not np.allclose(za[0], zb[0])
    with pytest.raises(ValueError):
        FuseMap(sections, weight_average=1.0, **TINY)
    b.save(tmp_path / "fm")
    back = FuseMap.load(tmp_path / "fm", sections)
    assert back.config["weight_average"] == 0.99
    np.testing.assert_allclose(back.get_latent_representation("cell")[0], zb[0], atol=1e-6)


def test_recon_from_cell_and_both(sections):
    # recon_from: "tissue" (published code, from A z_T), "cell" (the paper's z_C E^T, the
    # form imputation uses), "both" (the mean of the two errors)
    m = FuseMap(sections[:2], seed=0, **TINY)
    m.module.eval()
    sd = m.data[0]
    seeds = np.sort(sd.train_idx[:7])
    with torch.no_grad():
        o_t = forward_section(m.module, sd, seeds, m.device, sample=False)
        o_c = forward_section(m.module, sd, seeds, m.device, sample=False, recon_from="cell")
        o_b = forward_section(m.module, sd, seeds, m.device, sample=False, recon_from="both")
        x = torch.from_numpy(np.asarray(sd.X[seeds], dtype=np.float32))
        mu, _ = m.module.encode(sd.name, x)
        direct = torch.nn.functional.mse_loss(m.module.decode(sd.name, mu), x)
    assert float(o_c["recon"]) == pytest.approx(float(direct), rel=1e-5)
    assert float(o_c["recon"]) != pytest.approx(float(o_t["recon"]), rel=1e-3)
    assert float(o_b["recon"]) == pytest.approx(
        0.5 * (float(o_t["recon"]) + float(o_c["recon"])), rel=1e-5
    )
    for k in ("kl", "zc", "zt"):  # only the reconstruction term changes
        np.testing.assert_allclose(np.asarray(o_c[k]), np.asarray(o_t[k]), atol=1e-6)


def test_recon_from_is_checked_saved_and_trains(sections, tmp_path):
    with pytest.raises(BrainAtlasInputError):
        FuseMap(sections, recon_from="gene", **TINY)
    cfg = FuseMap(sections, **TINY).config
    assert (cfg["recon_from"], cfg["adv_cells"]) == ("both", "block")  # the defaults
    m = FuseMap(sections, seed=0, recon_from="cell", min_steps=2, **TINY)
    m.train(max_epochs=1)
    assert np.isfinite(m.history[-1]["recon"])
    m.save(tmp_path / "fm")
    back = FuseMap.load(tmp_path / "fm", sections)
    assert back.config["recon_from"] == "cell"
    cfg = json.loads((tmp_path / "fm" / "config.json").read_text())
    cfg["settings"]["recon_from"] = "gene"
    (tmp_path / "fm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BrainAtlasInputError):
        FuseMap.load(tmp_path / "fm", sections)


def test_low_count_cells_embedded_by_default_and_panel_anchor_logged(sections):
    a = sections[0].copy()
    a.X[0] = 0
    a.X[0, :3] = 1  # 3 counts: embedded by default, dropped with the paper's <= 5 rule
    a.layers["counts"] = a.X.copy()
    m = FuseMap([a, sections[1]], seed=0, **TINY)
    assert np.isfinite(m.get_latent_representation("cell", section=0)[0]).all()
    paper = FuseMap([a, sections[1]], seed=0, min_cell_counts=5, min_steps=3, **TINY)
    assert np.isnan(paper.get_latent_representation("cell", section=0)[0]).all()
    anchored = FuseMap([a, sections[1]], seed=0, min_steps=3, panel_anchor=1.0, **TINY)
    hist = anchored.train(epochs=1)
    assert all(np.isfinite(h["panel"]) for h in hist)  # the cross-panel anchor term
    # off by default (the paper): no anchor term in the history
    assert "panel" not in paper.train(epochs=1, pretrain_epochs=1, final_epochs=0)[0]


def test_issue26_defaults_agree_and_older_folders_keep_their_options(sections, tmp_path):
    """One epochs default (FuseMapSettings) for the API, `embed` and the Embed dock; a
    folder written before panel_anchor / min_cell_counts existed loads with what it was
    trained with (0, 5)."""
    import argparse

    from napari_brainatlas.annotate.settings import QueryMappingSettings
    from napari_brainatlas.cli.embed import add_parser
    from napari_brainatlas.fusemap import FuseMapSettings

    s = FuseMapSettings()
    assert (s.epochs, s.panel_anchor, s.min_cell_counts) == (3, 0.0, 0.0)
    q = QueryMappingSettings()
    assert (q.min_steps, q.validate_anchor) == (60, False)
    with pytest.raises(BrainAtlasInputError, match="panel_anchor"):
        FuseMapSettings(panel_anchor=-1)
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    assert p.parse_args(["embed", "x.h5ad", "--out", "o"]).epochs is None  # -> settings
    # the docks read the same default (workflows.embed.default_epochs: FuseMapSettings)
    from napari_brainatlas.workflows.embed import default_epochs

    assert default_epochs() == s.epochs
    m = FuseMap(sections, seed=0, **TINY)
    m.save(tmp_path / "fm")
    cfg = json.loads((tmp_path / "fm" / "config.json").read_text())
    for k in ("panel_anchor", "min_cell_counts"):
        del cfg["settings"][k]
    (tmp_path / "fm" / "config.json").write_text(json.dumps(cfg))
    old = FuseMap.load(tmp_path / "fm", sections)
    assert (old.settings.panel_anchor, old.settings.min_cell_counts) == (0.0, 5.0)
