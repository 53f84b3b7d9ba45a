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
from napari_brainatlas.model import FuseMap


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
    mapping = map_query(model, [query], epochs=6, seed=0,
                        progress=lambda e, n, losses: seen.append((e, n, losses)))
    return {"model": model, "ref": ref, "query": query, "mapping": mapping,
            "before": before, "progress": seen,
            "ref_emb": model.write_embeddings(copy=True),
            "query_emb": mapping.write_embeddings()[0]}


def test_reference_frozen_and_unchanged(trained):
    m, mp = trained["model"], trained["mapping"]
    after = m.module.state_dict()
    for k, v in trained["before"].items():      # the reference model itself: untouched
        assert torch.equal(after[k], v), k
    # in the mapped module every reference tensor is frozen and byte-identical
    n_ref = len(trained["before"]["gene_embedding"])
    mod = mp.module.state_dict()
    for k, v in trained["before"].items():
        cur = mod[k][:n_ref] if k == "gene_embedding" else mod[k]
        assert torch.equal(cur, v), k
    ref_names = list(m.section_names)
    for name, p in mp.module.named_parameters():
        if name.startswith("encoders.") and name.split(".")[1] in ref_names:
            assert not p.requires_grad
        if name.startswith(("disc_cell.", "disc_tissue.")):
            assert not p.requires_grad
    assert mp.frozen_unchanged()
    assert mp.adversarial                        # the model held its reference sections
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
    assert np.array_equal(E.iloc[:len(m.module.genes)].to_numpy(),
                          m.gene_embedding().to_numpy())


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
    # without training the new encoder the query does not land there
    mp0 = map_query(trained["model"], [trained["query"]], epochs=0, seed=0)
    z0 = mp0.get_latent_representation("cell", 0)
    acc0 = (knn.predict(z0[okq]) == q.obs["celltype"].astype(str).to_numpy()[okq]).mean()
    assert acc > acc0 + 0.1, (acc, acc0)


@pytest.mark.parametrize("method", ["mlp", "knn"])
def test_transfer_labels(trained, method):
    ref, q = trained["ref_emb"], trained["query_emb"]
    out = transfer_labels(ref, [q], labels=["celltype", "region"], method=method,
                          max_epochs=60)[0]
    assert out is not q and "celltype_transfer" not in q.obs       # a copy
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
    assert (out.obs["celltype_transfer_uncertainty"]
            >= out.obs["celltype_main_transfer_uncertainty"] - 1e-6).all()
    assert out.uns["label_transfer"]["region"]["smoothed"]


def test_region_smoothing_is_spatially_coherent(trained):
    ref, q = trained["ref_emb"], trained["query_emb"]
    raw = transfer_labels(ref, [q], labels=["region"], smooth_regions=False,
                          max_epochs=60)[0]
    smo = transfer_labels(ref, [q], labels=["region"], smooth_regions=True,
                          max_epochs=60)[0]
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
        transfer_labels(ref, [trained["query"]], labels=["celltype"])   # no embedding
    with pytest.raises(BrainAtlasInputError):
        transfer_labels(ref, [q], labels=["celltype"], method="svm")


def test_impute_any_gene(trained):
    mp, q = trained["mapping"], trained["query_emb"]
    new = mp.new_genes[0]
    ref_only = sorted(set(trained["model"].module.genes) - {g.upper() for g in q.var_names})
    assert ref_only
    df = impute_genes(mp, 0, [new, ref_only[0].lower(), "GAD1"])
    assert df.shape == (q.n_obs, 3) and list(df.columns) == [new, ref_only[0], "GAD1"]
    assert (df.to_numpy()[np.isfinite(df.to_numpy())] >= 0).all()
    # same values from the AnnData route and by hand: max(z_C E^T, 0)
    df2 = impute_genes(mp, q, [new])
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
        measured_vs_imputed(q, ref_only[0], mp)       # not measured in this section


def test_map_query_bad_input(trained):
    import anndata as ad

    bad = ad.AnnData(np.ones((20, 2), np.float32),
                     var=pd.DataFrame(index=["NOPE1", "NOPE2"]))
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
    for a, name in zip(trained["ref_emb"], m.section_names):   # as `embed` writes them
        write_h5ad(a, tmp_path / "run" / f"{name}.h5ad")
    qpath = write_h5ad(trained["query"], tmp_path / "query.h5ad")
    out = tmp_path / "annotated.h5ad"
    rc, err = _cli(capsys, "transfer", "--model", tmp_path / "run" / "model", "--query", qpath,
                   "--labels", "celltype,region", "--epochs", "4", "--out", out)
    assert rc == 0, err
    a = ad.read_h5ad(out)
    for c in ("celltype_transfer", "celltype_transfer_uncertainty", "region_transfer",
              "region_transfer_uncertainty"):
        assert c in a.obs
    assert (a.obs["region_transfer"].astype(str) == a.obs["region"].astype(str)).mean() > 0.5
    assert "X_fusemap_cell" in a.obsm
    imp = tmp_path / "imputed.h5ad"
    rc, err = _cli(capsys, "impute", "--model", tmp_path / "run" / "model", "--data", out,
                   "--genes", "Gad1,Slc17a7", "--out", imp)
    assert rc == 0, err
    b = ad.read_h5ad(imp)
    assert {"imputed_GAD1", "imputed_SLC17A7"} <= set(b.obs.columns)
    side = measured_vs_imputed(b, "GAD1")
    assert np.isfinite(side.attrs["pearson_r"])
    # a file without embedding is mapped first (--epochs 1)
    rc, err = _cli(capsys, "impute", "--model", tmp_path / "run" / "model", "--data", qpath,
                   "--genes", "GAD1", "--epochs", "1", "--out", tmp_path / "imp2.h5ad")
    assert rc == 0, err
    # bad input: one line, exit 2
    rc, err = _cli(capsys, "impute", "--model", tmp_path / "run" / "model", "--data", out,
                   "--genes", "NOT_A_GENE", "--out", tmp_path / "x.h5ad")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    rc, err = _cli(capsys, "transfer", "--model", tmp_path / "run" / "model", "--query", qpath,
                   "--labels", "nolabel", "--out", tmp_path / "y.h5ad")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    # the console script itself (one subprocess): a missing model folder
    r = subprocess.run([sys.executable, "-m", "napari_brainatlas", "transfer", "--model",
                        str(tmp_path / "nowhere"), "--query", str(qpath), "--out",
                        str(tmp_path / "z.h5ad")], capture_output=True, text=True, timeout=120,
                       check=False)
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
    out = transfer_labels(m.write_embeddings(copy=True), mp.write_embeddings(),
                          labels=["ClusterName", "Region"], hierarchy={},
                          embedding={"ClusterName": "X_fusemap_cell",
                                     "Region": "X_fusemap_tissue"}, max_epochs=50)[0]
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
