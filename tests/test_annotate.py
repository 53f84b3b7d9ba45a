"""Query mapping onto a frozen reference, label transfer and imputation on the demo
sections (one section held out as the query), plus the transfer / impute CLI."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate import (
    impute_genes,
    map_query,
    measured_vs_imputed,
    transfer_labels,
)
from napari_brainatlas.fusemap import FuseMap


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained():
    """Reference FuseMap on 3 demo sections; section 4 is the query."""
    demo = pytest.importorskip("napari_brainatlas.demo")
    torch.set_num_threads(1)
    secs = demo.make_demo_sections(seed=0, n_sections=4, cells_per_mm2=50.0)
    ref, query = secs[:3], secs[3]
    model = FuseMap(ref, seed=0, n_latent=16, n_hidden=128, disc_hidden=64)
    model.train(max_epochs=3)
    before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    seen = []
    mapping = map_query(
        model, [query], epochs=6, seed=0, progress=lambda e, n, losses: seen.append((e, n, losses))
    )
    return {
        "model": model,
        "ref": ref,
        "query": query,
        "mapping": mapping,
        "before": before,
        "progress": seen,
        "ref_emb": model.write_embeddings(copy=True),
        "query_emb": mapping.write_embeddings()[0],
    }


def test_reference_frozen_and_unchanged(trained):
    m, mp = trained["model"], trained["mapping"]
    after = m.module.state_dict()
    for k, v in trained["before"].items():  # the reference model itself: untouched
        assert torch.equal(after[k], v), k
    # in the mapped module every reference tensor is frozen and byte-identical, with the
    # default (anchored) mapping and with the adversarial one (discriminator heads train)
    adv = map_query(m, [trained["query"]], epochs=2, seed=0, adversarial=True)
    assert adv.adversarial and not mp.adversarial  # the model held its reference sections
    n_ref = len(trained["before"]["gene_embedding"])
    ref_names = list(m.section_names)
    for mapping in (mp, adv):
        mod = mapping.module.state_dict()
        for k, v in trained["before"].items():
            cur = mod[k][:n_ref] if k == "gene_embedding" else mod[k]
            assert torch.equal(cur, v), k
        for name, p in mapping.module.named_parameters():
            if name.startswith("encoders.") and name.split(".")[1] in ref_names:
                assert not p.requires_grad
            if name.startswith(("disc_cell.", "disc_tissue.")):
                assert not p.requires_grad
        assert mapping.frozen_unchanged()
    assert trained["progress"] and trained["progress"][0][1] == 6


def test_new_genes_get_trained_rows(trained):
    m, mp, q = trained["model"], trained["mapping"], trained["query"]
    qgenes = {g.upper() for g in q.var_names}
    expect = sorted(qgenes - set(m.module.genes))
    assert expect, "the demo query should measure genes the reference never saw"
    assert sorted(mp.new_genes) == expect
    E = mp.gene_embedding()
    assert set(expect) <= set(E.index) and len(E) == len(m.module.genes) + len(expect)
    # the new rows moved away from their Xavier start (they were trained): a fresh
    # mapping with 0 epochs keeps them at the start
    mp0 = map_query(m, [q], epochs=0, seed=0)
    E0 = mp0.gene_embedding()
    assert not np.allclose(E.loc[expect].to_numpy(), E0.loc[expect].to_numpy())
    assert np.array_equal(E.iloc[: len(m.module.genes)].to_numpy(), m.gene_embedding().to_numpy())


def test_query_lands_near_same_type(trained):
    ref, q = trained["ref_emb"], trained["query_emb"]
    Zr = np.concatenate([a.obsm["X_fusemap_cell"] for a in ref])
    yr = np.concatenate([a.obs["celltype"].astype(str) for a in ref])
    ok = np.isfinite(Zr).all(1)
    knn = KNeighborsClassifier(15).fit(Zr[ok], yr[ok])
    zq = q.obsm["X_fusemap_cell"]
    okq = np.isfinite(zq).all(1)
    acc = (knn.predict(zq[okq]) == q.obs["celltype"].astype(str).to_numpy()[okq]).mean()
    majority = q.obs["celltype"].value_counts(normalize=True).max()
    assert acc > 2.5 * majority, (acc, majority)
    # without training the new encoder (random start, the paper's) the query does not
    # land there
    mp0 = map_query(trained["model"], [trained["query"]], epochs=0, seed=0, init="random", anchor=0)
    z0 = mp0.get_latent_representation("cell", 0)
    acc0 = (knn.predict(z0[okq]) == q.obs["celltype"].astype(str).to_numpy()[okq]).mean()
    assert acc > acc0 + 0.1, (acc, acc0)


@pytest.mark.parametrize("method", ["mlp", "knn"])
def test_transfer_labels(trained, method):
    ref, q = trained["ref_emb"], trained["query_emb"]
    out = transfer_labels(ref, [q], labels=["celltype", "region"], method=method, max_epochs=60)[0]
    assert out is not q and "celltype_transfer" not in q.obs  # a copy
    for lab, floor in (("celltype", 0.3), ("region", 0.6), ("celltype_main", 0.5)):
        pred = out.obs[f"{lab}_transfer"].astype(str).to_numpy()
        truth = out.obs[lab].astype(str).to_numpy()
        chance = out.obs[lab].value_counts(normalize=True).max()
        acc = (pred == truth).mean()
        assert acc > max(floor, chance + 0.1), (lab, acc, chance)
        u = out.obs[f"{lab}_transfer_uncertainty"].to_numpy()
        assert np.nanmin(u) >= 0 and np.nanmax(u) <= 1
    # hierarchy: every sub label lies inside its predicted main class (reference map)
    pairs = pd.concat([a.obs[["celltype", "celltype_main"]].astype(str) for a in ref])
    main_of = dict(zip(pairs["celltype"], pairs["celltype_main"]))
    sub = out.obs["celltype_transfer"].astype(str)
    main = out.obs["celltype_main_transfer"].astype(str)
    assert all(main_of[s] == m for s, m in zip(sub, main))
    assert (
        out.obs["celltype_transfer_uncertainty"]
        >= out.obs["celltype_main_transfer_uncertainty"] - 1e-6
    ).all()
    assert out.uns["label_transfer"]["region"]["smoothed"]
    assert out.uns["label_transfer"]["celltype"]["hierarchy_mode"] == "flat"
    if method == "mlp":  # cell types "sqrt", regions "balanced" (the defaults)
        assert out.uns["label_transfer"]["celltype"]["class_balance"] == "sqrt"
        assert out.uns["label_transfer"]["region"]["class_balance"] == "balanced"
    # flat (default): the sub labels are those of the classifier without a hierarchy
    flat = transfer_labels(
        ref, [q], labels=["celltype"], method=method, max_epochs=60, hierarchy={}
    )[0]
    assert (flat.obs["celltype_transfer"].astype(str) == sub).all()
    assert "celltype_main_transfer" not in flat.obs
    # nested (the paper): main first, then sub inside it; the same containment holds
    nest = transfer_labels(
        ref, [q], labels=["celltype"], method=method, max_epochs=60, hierarchy_mode="nested"
    )[0]
    sub_n = nest.obs["celltype_transfer"].astype(str)
    main_n = nest.obs["celltype_main_transfer"].astype(str)
    assert all(main_of[s] == m for s, m in zip(sub_n, main_n))
    assert nest.uns["label_transfer"]["celltype"]["hierarchy_mode"] == "nested"
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["celltype"], hierarchy_mode="tree")


def test_region_smoothing_is_spatially_coherent(trained):
    ref, q = trained["ref_emb"], trained["query_emb"]
    raw = transfer_labels(ref, [q], labels=["region"], smooth_regions=False, max_epochs=60)[0]
    smo = transfer_labels(ref, [q], labels=["region"], smooth_regions=True, max_epochs=60)[0]
    from scipy.spatial import cKDTree

    xy = q.obsm["spatial"]
    idx = cKDTree(xy).query(xy, k=6)[1][:, 1:]

    def agree(lab):
        v = lab.astype(str).to_numpy()
        return (v[idx] == v[:, None]).mean()

    assert agree(smo.obs["region_transfer"]) > agree(raw.obs["region_transfer"])


def test_transfer_bad_input(trained):
    ref, q = trained["ref_emb"], trained["query_emb"]
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["no_such_label"])
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [trained["query"]], labels=["celltype"])  # no embedding
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["celltype"], method="svm")
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["celltype"], class_balance="inverse")
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["celltype"], class_balance={"celltype": "x"})


def test_impute_any_gene(trained):
    mp, q = trained["mapping"], trained["query_emb"]
    new = mp.new_genes[0]
    ref_only = sorted(set(trained["model"].module.genes) - {g.upper() for g in q.var_names})
    assert ref_only
    df = impute_genes(mp, 0, [new, ref_only[0].lower(), "GAD1"])
    assert df.shape == (q.n_obs, 3) and list(df.columns) == [new, ref_only[0], "GAD1"]
    assert (df.to_numpy()[np.isfinite(df.to_numpy())] >= 0).all()
    # same values from the AnnData route and by hand: max(z_C E^T, 0)
    df2 = impute_genes(mp, q, [new], method="decoder")
    E = mp.gene_embedding().loc[[new]].to_numpy()
    by_hand = np.maximum(q.obsm["X_fusemap_cell"] @ E.T, 0)[:, 0]
    assert np.allclose(df2[new].to_numpy(), by_hand, atol=1e-5, equal_nan=True)
    # reference sections too (FuseMap)
    r = impute_genes(trained["model"], 0, ["GAD1"])
    assert r.shape == (trained["ref"][0].n_obs, 1)
    side = measured_vs_imputed(q, "Gad1", mp)
    assert list(side.columns) == ["measured", "imputed"]
    assert side.attrs["pearson_r"] > 0.2
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp, 0, ["NOT_A_GENE"])
    with pytest.raises(BrainAtlasInputError):
        measured_vs_imputed(q, ref_only[0], mp)  # not measured in this section


def test_warm_start_and_reference_anchor(trained):
    """init='reference' copies the best-overlapping reference encoder (shared-gene columns,
    other columns 0); the anchor loss teaches the query encoder to put reference cells
    (read through the query panel) at their frozen reference z_C."""
    from napari_brainatlas.annotate.query import _anchor_sets, reference_latents
    from napari_brainatlas.fusemap import preprocess_section

    m, q = trained["model"], trained["query"]
    mp0 = map_query(m, [q], epochs=0, seed=0)  # warm start, no training
    name = mp0.query_names[0]
    enc = mp0.module.encoders[name]
    qgenes = mp0.module.section_genes[name]
    overlap = {n: len(set(qgenes) & set(m.module.section_genes[n])) for n in m.section_names}
    src_name = max(overlap, key=overlap.get)
    src = m.module.encoders[src_name]
    col = {g: i for i, g in enumerate(m.module.section_genes[src_name])}
    W, Ws = enc.net[0].weight.detach(), src.net[0].weight.detach()
    for j, g in enumerate(qgenes):
        expect = Ws[:, col[g]] if g in col else torch.zeros_like(W[:, j])
        assert torch.equal(W[:, j], expect), g
    for k, v in src.state_dict().items():
        if k != "net.0.weight":
            assert torch.equal(enc.state_dict()[k], v), k
    rnd = map_query(m, [q], epochs=0, seed=0, init="random", anchor=0)
    assert not torch.equal(rnd.module.encoders[name].net[4].weight, src.net[4].weight)
    with pytest.raises(BrainAtlasInputError):
        map_query(m, [q], epochs=0, init="zeros")
    # the anchor: on by default where the model holds its sections, recorded per epoch
    mp = trained["mapping"]
    assert mp.anchored and all("anchor" in h for h in mp.history)
    free = map_query(m, [q], epochs=6, seed=0, anchor=0)
    assert not free.anchored and not any("anchor" in h for h in free.history)
    # adversarial="auto": the adversary only where no anchor can be used
    assert not mp.adversarial and not any("adv" in h for h in mp.history)
    assert free.adversarial and all("adv" in h for h in free.history)
    both = map_query(m, [q], epochs=1, seed=0, adversarial=True)
    assert both.adversarial and both.anchored
    with pytest.raises(BrainAtlasInputError):
        map_query(m, [q], epochs=0, adversarial="sometimes")
    prep = [preprocess_section(q, name)]
    Xa, Za = _anchor_sets(m, prep, reference_latents(m))[0]
    assert Xa.shape == (len(Za), len(qgenes)) and len(Za) > 0.9 * sum(
        a.n_obs for a in trained["ref"]
    )

    def anchor_mse(mapping):
        e = mapping.module.encoders[name].eval()
        with torch.no_grad():
            mu = e(torch.from_numpy(np.asarray(Xa, np.float32)))[0].numpy()
        return float(((mu - Za) ** 2).mean())

    assert anchor_mse(mp) < 0.7 * anchor_mse(free), (anchor_mse(mp), anchor_mse(free))
    # annotated reference sections with counts (model folder without cells) anchor too
    refs = trained["ref_emb"]
    ext = _anchor_sets(m, prep, reference_latents(m, refs), reference_sections=refs)[0]
    assert ext is not None and np.allclose(ext[1], Za, atol=1e-5)


def test_map_query_depends_on_seed_only(trained):
    """The same seed gives the same query embedding whatever ran before in the process
    (dropout and shuffles used torch's global generator); another seed differs."""
    m, q = trained["model"], trained["query"]
    torch.manual_seed(123)
    a = map_query(m, [q], epochs=2, seed=5).get_latent_representation("cell", 0)
    torch.rand(1000)
    torch.manual_seed(987)
    b = map_query(m, [q], epochs=2, seed=5).get_latent_representation("cell", 0)
    c = map_query(m, [q], epochs=2, seed=6).get_latent_representation("cell", 0)
    assert np.array_equal(a, b, equal_nan=True)
    assert not np.allclose(a, c, equal_nan=True)


def test_impute_knn_in_cell_embedding(trained):
    """kNN imputation: mean of the 50 nearest reference cells (z_C) that measured the gene,
    in model-input units; by hand with sklearn; auto picks it when the reference
    expression is there, the decoder otherwise."""
    from sklearn.neighbors import NearestNeighbors

    from napari_brainatlas.fusemap import preprocess_section

    m, mp, q = trained["model"], trained["mapping"], trained["query_emb"]
    ref_genes = [{g.upper() for g in a.var_names} for a in trained["ref"]]
    gene = next(
        g for g in sorted(set.union(*ref_genes)) if sum(g in rg for rg in ref_genes) == 2
    )  # measured in 2 of 3 sections
    ref_view = {"view": "reference", "weights": "uniform"}
    cell = impute_genes(mp, 0, [gene], method="knn", k=50, space="cell", **ref_view)
    df = impute_genes(mp, 0, [gene], method="knn", k=50, **ref_view)  # joint [z_C, z_T]
    assert df.attrs["method"] == "knn" and df.attrs["space"] == "joint"
    assert cell.attrs["space"] == "cell"
    Zr, Zj, V = [], [], []
    for a, z, t in zip(
        trained["ref"], m.get_latent_representation("cell"), m.get_latent_representation("tissue")
    ):
        p = preprocess_section(a, "r")
        if gene not in p.genes:
            continue
        Zr.append(z[p.kept])
        Zj.append(np.hstack([z, t])[p.kept])
        V.append(np.asarray(p.X[:, p.genes.index(gene)]).ravel())
    Zr, Zj, V = np.concatenate(Zr), np.concatenate(Zj), np.concatenate(V)
    zq = mp.get_latent_representation("cell", 0)
    zj = np.hstack([zq, mp.get_latent_representation("tissue", 0)])
    ok = np.isfinite(zq).all(1)
    idx = NearestNeighbors(n_neighbors=50).fit(Zr).kneighbors(zq[ok])[1]
    assert np.allclose(cell[gene].to_numpy()[ok], V[idx].mean(1), atol=1e-4)
    idx = NearestNeighbors(n_neighbors=50).fit(Zj).kneighbors(zj[ok])[1]
    assert np.allclose(df[gene].to_numpy()[ok], V[idx].mean(1), atol=1e-4)
    assert not np.allclose(df[gene].to_numpy()[ok], cell[gene].to_numpy()[ok])
    assert np.isnan(df[gene].to_numpy()[~ok]).all()
    # an AnnData with z_C only: kNN in z_C
    zc_only = q.copy()
    del zc_only.obsm["X_fusemap_tissue"]
    only = impute_genes(mp, zc_only, [gene], method="knn", weights="uniform")
    assert only.attrs["space"] == "cell" and only.attrs["view"] == "reference"
    np.testing.assert_allclose(only[gene].to_numpy(), cell[gene].to_numpy(), equal_nan=True)
    auto = impute_genes(mp, 0, [gene], **ref_view)
    assert auto.attrs["method"] == "knn"
    np.testing.assert_allclose(auto[gene].to_numpy(), df[gene].to_numpy(), equal_nan=True)
    assert impute_genes(mp, 0, [gene]).attrs["view"] == "query"  # the default
    dec = impute_genes(mp, 0, [gene], method="decoder")
    assert dec.attrs["method"] == "decoder" and not np.allclose(
        dec[gene].to_numpy()[ok], df[gene].to_numpy()[ok]
    )
    # a gene no reference section measured (new in the query): decoder, also under auto
    new = mp.new_genes[0]
    both = impute_genes(mp, 0, [gene, new])
    np.testing.assert_allclose(
        both[new].to_numpy(),
        impute_genes(mp, 0, [new], method="decoder")[new].to_numpy(),
        equal_nan=True,
    )
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp, 0, [new], method="knn")
    # a FuseMap section is imputed from the other sections only (its own cells left out)
    own = impute_genes(m, 0, [gene], method="knn")
    assert own.shape == (trained["ref"][0].n_obs, 1)
    # the gene embedding alone has no reference cells: kNN refused, auto -> decoder
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp.gene_embedding(), q, [gene], method="knn")
    assert impute_genes(mp.gene_embedding(), q, [gene]).attrs["method"] == "decoder"
    # the measured gene of the query: kNN follows the measurement
    measured = sorted({g.upper() for g in trained["query"].var_names} & set.union(*ref_genes))
    rs = [measured_vs_imputed(q, g, mp).attrs["pearson_r"] for g in measured]
    assert np.nanmean(rs) > 0.3, rs


def test_impute_knn_query_view(trained):
    """view="query" (the default for a query section): reference cells read through the
    query's panel and encoded by the query encoder, one-hop graph mean for z_T, Gaussian
    distance weights; by hand. The encoded reference cells lie near their reference z_C
    (the anchor taught that)."""
    from scipy.spatial import cKDTree

    from napari_brainatlas.annotate.panel import encode_through_panel
    from napari_brainatlas.fusemap import preprocess_section, spatial_graph

    m, mp = trained["model"], trained["mapping"]
    ref_genes = [{g.upper() for g in a.var_names} for a in trained["ref"]]
    gene = next(g for g in sorted(set.union(*ref_genes)) if sum(g in rg for rg in ref_genes) == 2)
    df = impute_genes(mp, 0, [gene], method="knn", k=20)
    assert df.attrs["view"] == "query" and df.attrs["weights"] == "distance"
    Zj, V, own, moved = [], [], [], []
    for a, zc in zip(trained["ref"], m.get_latent_representation("cell")):
        p = preprocess_section(a, "r")
        z = encode_through_panel(mp, 0, a, p.kept)
        assert z.shape == (p.n_cells, m.module.n_latent)
        ok = np.isfinite(z).all(1)
        own.append(np.linalg.norm(z[ok] - zc[p.kept][ok], axis=1).mean())
        moved.append(np.linalg.norm(z[ok] - zc[p.kept][ok][::-1], axis=1).mean())
        if gene not in p.genes:
            continue
        t = spatial_graph(p.coords) @ np.nan_to_num(z)
        Zj.append(np.hstack([z, t])[ok])
        V.append(np.asarray(p.X[:, p.genes.index(gene)]).ravel()[ok])
    # 0.39 at the defaults (no panel anchor, min_steps of the mapping 0 or 60 alike); 0.53
    # with the reference trained at panel_anchor 1.0, which draws the sections' cells
    # together, so a shuffled partner is nearer
    assert np.mean(own) < 0.6 * np.mean(moved), (own, moved)
    Zj, V = np.concatenate(Zj), np.concatenate(V)
    zq = np.hstack(
        [mp.get_latent_representation("cell", 0), mp.get_latent_representation("tissue", 0)]
    )
    ok = np.isfinite(zq).all(1)
    d, idx = cKDTree(Zj).query(zq[ok], k=20)
    w = np.exp(-((d / d[:, [10]]) ** 2))
    by_hand = (w * V[idx]).sum(1) / w.sum(1)
    np.testing.assert_allclose(df[gene].to_numpy()[ok], by_hand, atol=1e-4)
    uni = impute_genes(mp, 0, [gene], method="knn", k=20, weights="uniform")
    np.testing.assert_allclose(uni[gene].to_numpy()[ok], V[idx].mean(1), atol=1e-4)
    # an AnnData section has no query encoder to read through: refused when asked for
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp, trained["query_emb"], [gene], view="query")
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp, 0, [gene], view="sideways")
    with pytest.raises(BrainAtlasInputError):
        impute_genes(mp, 0, [gene], weights="heavy")


def test_query_mapping_save_load_round_trip(trained, tmp_path):
    from napari_brainatlas.annotate import QueryMapping

    mp, q = trained["mapping"], trained["query"]
    folder = mp.save(tmp_path / "mapping")
    assert {"config.json", "weights.pt", "history.json", "genes.csv", "panels.csv"} <= {
        f.name for f in folder.iterdir()
    }
    assert {"latent.npz", "obs_names.csv", "reference"} <= {f.name for f in folder.iterdir()}
    genes = [mp.new_genes[0], "GAD1"]
    # with the query sections: re-encoded from the loaded weights, same embeddings
    back = QueryMapping.load(folder, query_sections=[q], device="cpu")
    assert back.query_names == mp.query_names and back.new_genes == mp.new_genes
    assert back.adversarial == mp.adversarial and len(back.history) == len(mp.history)
    for kind in ("cell", "tissue"):
        a = mp.get_latent_representation(kind, 0)
        b = back.get_latent_representation(kind, 0)
        assert np.allclose(a, b, atol=1e-5, equal_nan=True), kind
    pd.testing.assert_frame_equal(back.gene_embedding(), mp.gene_embedding())
    pd.testing.assert_frame_equal(
        impute_genes(back, 0, genes, method="decoder"),
        impute_genes(mp, 0, genes, method="decoder"),
        atol=1e-5,
    )
    # the reference came back without its cells: no kNN imputation from it ...
    with pytest.raises(BrainAtlasInputError):
        impute_genes(back, 0, ["GAD1"], method="knn")
    # ... unless the reference sections are given too
    full = QueryMapping.load(
        folder, query_sections=[q], reference_sections=trained["ref"], device="cpu"
    )
    pd.testing.assert_frame_equal(
        impute_genes(full, 0, ["GAD1"], method="knn"),
        impute_genes(mp, 0, ["GAD1"], method="knn"),
        atol=1e-5,
    )
    assert back.frozen_unchanged()
    w = back.write_embeddings()[0]
    assert np.allclose(
        w.obsm["X_fusemap_cell"],
        trained["query_emb"].obsm["X_fusemap_cell"],
        atol=1e-5,
        equal_nan=True,
    )
    # every tensor of the extended module came back bit for bit
    s0, s1 = mp.module.state_dict(), back.module.state_dict()
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k].cpu(), s1[k].cpu()), k
    # without the query sections: the saved embeddings serve embeddings and imputation
    lite = QueryMapping.load(folder, device="cpu")
    assert np.allclose(
        lite.get_latent_representation("cell", 0),
        mp.get_latent_representation("cell", 0),
        equal_nan=True,
    )
    df = impute_genes(lite, mp.query_names[0], genes)
    assert list(df.index) == list(q.obs_names)
    pd.testing.assert_frame_equal(df, impute_genes(mp, 0, genes, method="decoder"), atol=1e-5)
    with pytest.raises(BrainAtlasInputError):
        lite.write_embeddings()
    # a query section with another panel is refused; a folder that is not a mapping too
    with pytest.raises(BrainAtlasInputError):
        QueryMapping.load(folder, query_sections=[q[:, 1:].copy()], device="cpu")
    with pytest.raises(BrainAtlasInputError):
        QueryMapping.load(tmp_path / "nowhere", device="cpu")
    with pytest.raises(BrainAtlasInputError):
        QueryMapping.load(folder / "reference", device="cpu")


def test_map_query_bad_input(trained):
    import anndata as ad

    bad = ad.AnnData(np.ones((20, 2), np.float32), var=pd.DataFrame(index=["NOPE1", "NOPE2"]))
    bad.obsm["spatial"] = np.random.default_rng(0).uniform(0, 100, (20, 2))
    with pytest.raises(BrainAtlasInputError):
        map_query(trained["model"], [bad], epochs=1)
    with pytest.raises(BrainAtlasInputError):
        map_query(trained["model"], [], epochs=1)


def _cli(capsys, *args):
    """Run the console script's main in-process; (exit code, stderr)."""
    from napari_brainatlas.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_cli_transfer_and_impute(trained, tmp_path, capsys):
    import anndata as ad

    from napari_brainatlas.io import write_h5ad

    m = trained["model"]
    m.save(tmp_path / "run" / "model")
    for a, name in zip(trained["ref_emb"], m.section_names):  # as `embed` writes them
        write_h5ad(a, tmp_path / "run" / f"{name}.h5ad")
    qpath = write_h5ad(trained["query"], tmp_path / "query.h5ad")
    out = tmp_path / "annotated.h5ad"
    rc, err = _cli(
        capsys,
        "transfer",
        "--model",
        tmp_path / "run" / "model",
        "--query",
        qpath,
        "--labels",
        "celltype,region",
        "--epochs",
        "4",
        "--out",
        out,
    )
    assert rc == 0, err
    a = ad.read_h5ad(out)
    for c in (
        "celltype_transfer",
        "celltype_transfer_uncertainty",
        "region_transfer",
        "region_transfer_uncertainty",
    ):
        assert c in a.obs
    assert (a.obs["region_transfer"].astype(str) == a.obs["region"].astype(str)).mean() > 0.5
    assert "X_fusemap_cell" in a.obsm
    imp = tmp_path / "imputed.h5ad"
    rc, err = _cli(
        capsys,
        "impute",
        "--model",
        tmp_path / "run" / "model",
        "--data",
        out,
        "--genes",
        "Gad1,Slc17a7",
        "--out",
        imp,
    )
    assert rc == 0, err
    b = ad.read_h5ad(imp)
    # gene symbols keep the data's spelling (the engine matches them upper-cased)
    assert {"imputed_Gad1", "imputed_Slc17a7"} <= set(b.obs.columns)
    assert "imputed_GAD1" not in b.obs
    side = measured_vs_imputed(b, "GAD1")
    assert np.isfinite(side.attrs["pearson_r"])
    # the default (auto) used the embedded reference files beside the model: kNN; by hand
    refs = [ad.read_h5ad(tmp_path / "run" / f"{n}.h5ad") for n in m.section_names]
    knn = impute_genes(m, a, ["GAD1"], method="knn", reference=refs)["GAD1"].to_numpy()
    np.testing.assert_allclose(
        b.obs["imputed_Gad1"].to_numpy(), knn, rtol=1e-5, atol=1e-6, equal_nan=True
    )
    rc, err = _cli(
        capsys,
        "impute",
        "--model",
        tmp_path / "run" / "model",
        "--data",
        out,
        "--genes",
        "GAD1",
        "--method",
        "decoder",
        "--out",
        tmp_path / "dec.h5ad",
    )
    assert rc == 0, err
    dec = ad.read_h5ad(tmp_path / "dec.h5ad").obs["imputed_Gad1"].to_numpy()
    np.testing.assert_allclose(
        dec,
        impute_genes(m, a, ["GAD1"], method="decoder")["GAD1"].to_numpy(),
        rtol=1e-5,
        atol=1e-6,
        equal_nan=True,
    )
    # a file without embedding is mapped first (--epochs 1)
    rc, err = _cli(
        capsys,
        "impute",
        "--model",
        tmp_path / "run" / "model",
        "--data",
        qpath,
        "--genes",
        "GAD1",
        "--epochs",
        "1",
        "--out",
        tmp_path / "imp2.h5ad",
    )
    assert rc == 0, err
    # bad input: one line, exit 2
    rc, err = _cli(
        capsys,
        "impute",
        "--model",
        tmp_path / "run" / "model",
        "--data",
        out,
        "--genes",
        "NOT_A_GENE",
        "--out",
        tmp_path / "x.h5ad",
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    rc, err = _cli(
        capsys,
        "transfer",
        "--model",
        tmp_path / "run" / "model",
        "--query",
        qpath,
        "--labels",
        "nolabel",
        "--out",
        tmp_path / "y.h5ad",
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    # the console script itself (one subprocess): a missing model folder
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_brainatlas",
            "transfer",
            "--model",
            str(tmp_path / "nowhere"),
            "--query",
            str(qpath),
            "--out",
            str(tmp_path / "z.h5ad"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"
OSMFISH = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"


@pytest.mark.skipif(not OSMFISH.is_file(), reason="osmFISH data not present")
def test_osmfish_query_with_hidden_genes():
    """Real osmFISH: reference = medial part, query = lateral part with 3 genes hidden;
    labels transfer well above the majority class and the hidden genes are imputed."""
    from napari_brainatlas.io import read_sections

    a = read_sections(OSMFISH)[0]
    x = a.obsm["spatial"][:, 0]
    cut = np.percentile(x, 65)
    ref, q_full = a[x <= cut].copy(), a[x > cut].copy()
    hidden = ("GAD2", "SOX10", "LAMP5")
    q = q_full[:, [g for g in q_full.var_names if g.upper() not in hidden]].copy()
    m = FuseMap([ref], seed=0, n_latent=16, n_hidden=128, disc_hidden=64)
    m.train(max_epochs=2)
    mp = map_query(m, [q], epochs=3, seed=0)
    assert mp.frozen_unchanged() and mp.new_genes == []
    out = transfer_labels(
        m.write_embeddings(copy=True),
        mp.write_embeddings(),
        labels=["ClusterName", "Region"],
        hierarchy={},
        embedding={"ClusterName": "X_fusemap_cell", "Region": "X_fusemap_tissue"},
        max_epochs=50,
    )[0]
    for lab in ("ClusterName", "Region"):
        acc = (out.obs[f"{lab}_transfer"].astype(str) == out.obs[lab].astype(str)).mean()
        majority = out.obs[lab].value_counts(normalize=True).max()
        assert acc > majority + 0.1, (lab, acc, majority)
    imp = impute_genes(mp, 0, list(hidden))
    assert imp.shape == (q.n_obs, 3)
    # SOX10 (oligodendrocytes) is imputed with a positive correlation to its measurement
    full = q_full.copy()
    full.obsm["X_fusemap_cell"] = out.obsm["X_fusemap_cell"]
    side = measured_vs_imputed(full, "SOX10", mp)
    assert side.attrs["pearson_r"] > 0.2


def test_validate_anchor_stops_on_the_trained_objective(trained):
    """validate_anchor=True: the validation loss includes the held-out anchor cells'
    anchor term (so it is above the query-only validation loss of the same epoch)."""
    m, q = trained["model"], trained["query"]
    kw = dict(epochs=1, seed=0, min_steps=2)
    plain = map_query(m, [q], **kw)
    held = map_query(m, [q], validate_anchor=True, **kw)
    assert held.settings.validate_anchor and held.anchored
    assert np.isfinite(held.history[0]["val_loss"])
    assert held.history[0]["val_loss"] > plain.history[0]["val_loss"] - 1e-9
