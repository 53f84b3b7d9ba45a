"""Region-specific proximity (analyses/proximity.py): exact pair counts, a planted
attraction found where it was planted and nowhere else, a calibrated null, the
progress / cancel protocol, and one clear error per bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy.spatial import cKDTree
from scipy.stats import kstest

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.analyses import (
    ProximitySettings,
    proximal_pair_cells,
    region_proximity,
)

FAST = ProximitySettings(n_shifts=200, seed=1)


def _section(n=4000, side=2000.0, n_types=5, seed=0, name="s0") -> AnnData:
    """Poisson positions in a square, random types, regions = left / right half."""
    r = np.random.default_rng(seed)
    xy = r.uniform(0, side, (n, 2))
    obs = pd.DataFrame(
        {
            "celltype": r.integers(0, n_types, n).astype(str),
            "region": np.where(xy[:, 0] < side / 2, "left", "right"),
            "section": name,
        },
        index=[f"{name}_{i}" for i in range(n)],
    )
    a = AnnData(obs=obs)
    a.obsm["spatial"] = xy
    return a


def _plant(a: AnnData, region: str, ta: str, tb: str, frac=0.6, seed=0) -> AnnData:
    """Move a fraction of the type-b cells of ``region`` next to a type-a cell there."""
    a = a.copy()
    r = np.random.default_rng(seed)
    xy = a.obsm["spatial"].copy()
    reg = a.obs["region"].to_numpy()
    t = a.obs["celltype"].to_numpy()
    ia = np.flatnonzero((reg == region) & (t == ta))
    ib = np.flatnonzero((reg == region) & (t == tb))
    move = r.choice(ib, int(frac * len(ib)), replace=False)
    anchor = r.choice(ia, len(move))
    ang = r.uniform(0, 2 * np.pi, len(move))
    xy[move] = xy[anchor] + 12.0 * np.c_[np.cos(ang), np.sin(ang)]
    # keep the moved cells inside their region (the anchor is; 12 um is tiny)
    a.obsm["spatial"] = xy
    return a


def _brute(secs, radius):
    """Close same-region pairs per (region, a, b) by KD-tree, as a dict."""
    out = {}
    for a in secs:
        xy = a.obsm["spatial"]
        t = a.obs["celltype"].to_numpy()
        g = a.obs["region"].to_numpy()
        for i, j in cKDTree(xy).query_pairs(radius):
            if g[i] != g[j]:
                continue
            key = (g[i], *sorted((t[i], t[j])))
            out[key] = out.get(key, 0) + 1
    return out


def test_observed_counts_match_a_kdtree_over_sections_and_regions():
    secs = [_section(1500, 800.0, 4, seed=0, name="a"), _section(900, 500.0, 4, seed=1, name="b")]
    res = region_proximity(
        secs,
        celltype_key="celltype",
        region_key="region",
        settings=ProximitySettings(n_shifts=2, min_cells=1),
    )
    want = _brute(secs, 30.0)
    got = {
        (r, a, b): o for r, a, b, o in res.table[["region", "type_a", "type_b", "observed"]].values
    }
    for key, n in want.items():
        assert got.get(key, 0) == n
    assert sum(got.values()) == sum(want.values())
    # one AnnData with two sections in obs['section'] gives the same counts
    import anndata as ad

    joined = ad.concat(secs)
    res2 = region_proximity(
        joined,
        celltype_key="celltype",
        region_key="region",
        settings=ProximitySettings(n_shifts=2, min_cells=1),
    )
    m = res2.table.set_index(["region", "type_a", "type_b"])["observed"]
    assert all(m.loc[k] == n for k, n in want.items())


def test_planted_attraction_found_in_its_region_only():
    a = _plant(_section(6000, 2400.0, 5, seed=2), "left", "1", "3", frac=0.5)
    s = ProximitySettings(n_shifts=1000)  # 30 tests: the smallest q is 30 / 1001
    res = region_proximity(a, celltype_key="celltype", region_key="region", settings=s)
    t = res.table.set_index(["region", "type_a", "type_b"])
    assert t.loc[("left", "1", "3"), "significant"]
    assert t.loc[("left", "1", "3"), "p_value"] == pytest.approx(1 / 1001)
    assert t.loc[("left", "1", "3"), "z"] > 5
    assert not t.loc[("right", "1", "3"), "significant"]
    # the planted pair leads the ranking
    top = res.table.iloc[0]
    assert (top["region"], top["type_a"], top["type_b"]) == ("left", "1", "3")
    # stored in uns, heatmap matrix symmetric
    assert "proximity" in a.uns and len(a.uns["proximity"]["table"]) == len(res.table)
    m = res.matrix("left")
    assert np.allclose(m.to_numpy(), m.to_numpy().T)
    assert m.loc["3", "1"] == pytest.approx(t.loc[("left", "1", "3"), "z"])
    assert np.isfinite(res.table.select_dtypes("number").to_numpy()).all()
    # the cells behind the pair: the moved type-3 cells all sit next to a type-1 cell
    mask = proximal_pair_cells(
        a, celltype_key="celltype", type_a="1", type_b="3", region_key="region", region="left"
    )
    t3 = (a.obs["celltype"] == "3") & (a.obs["region"] == "left")
    assert mask[t3.to_numpy()].mean() > 0.5
    assert not mask[(a.obs["region"] == "right").to_numpy()].any()


@pytest.mark.parametrize("pvalue", ["empirical", "normal"])
def test_null_is_calibrated_on_labels_without_spatial_structure(pvalue):
    ps = []
    for rep in range(3):
        a = _section(4000, 2000.0, 4, seed=10 + rep)
        s = ProximitySettings(n_shifts=200, seed=rep, alternative="two-sided", pvalue=pvalue)
        res = region_proximity(a, celltype_key="celltype", region_key="region", settings=s)
        ps.append(res.table["p_value"].to_numpy())
    p = np.concatenate(ps)
    assert len(p) == 3 * 2 * 10
    assert kstest(p, "uniform").pvalue > 0.01
    assert (p < 0.05).mean() < 0.15


def test_raw_counts_are_not_calibrated_which_is_why_they_are_not_the_default():
    """The paper's statistic read literally (no rescaling to the observed number of close
    pairs): edges push cells out of the tissue, so every pair looks enriched."""
    a = _section(4000, 2000.0, 4, seed=20)
    res = region_proximity(
        a,
        celltype_key="celltype",
        region_key="region",
        settings=ProximitySettings(n_shifts=200, adjust_total=False),
    )
    assert kstest(res.table["p_value"], "uniform").pvalue < 0.01


def test_same_seed_same_result_on_any_number_of_threads():
    a = _section(2000, 1000.0, 3, seed=3)
    kw = dict(celltype_key="celltype", region_key="region", settings=FAST, key_added=None)
    r1 = region_proximity(a, n_jobs=1, **kw)
    r2 = region_proximity(a, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(r1.table, r2.table)
    r3 = region_proximity(a, n_jobs=2, **dict(kw, settings=ProximitySettings(n_shifts=200, seed=2)))
    assert not np.allclose(r1.table["expected"], r3.table.set_index(r1.table.index)["expected"])


def test_progress_and_cancel():
    a = _section(1000, 600.0, 3, seed=4)
    seen = []
    region_proximity(
        a,
        celltype_key="celltype",
        settings=ProximitySettings(n_shifts=40),
        n_jobs=1,
        progress=lambda d, t, info: seen.append((d, t, info)),
    )
    assert seen[-1][0] == seen[-1][1] == 40
    assert all(isinstance(i, dict) and "message" in i for _, _, i in seen)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        region_proximity(
            a,
            celltype_key="celltype",
            settings=ProximitySettings(n_shifts=400),
            cancel=cancel,
            key_added="prox",
        )
    assert "prox" not in a.uns


def test_min_cells_leaves_rare_types_out():
    a = _section(1500, 800.0, 3, seed=5)
    a.obs.loc[a.obs_names[:4], "celltype"] = "rare"
    res = region_proximity(
        a, celltype_key="celltype", settings=ProximitySettings(n_shifts=5, min_cells=10)
    )
    assert "rare" not in set(res.table["type_a"]) | set(res.table["type_b"])
    assert set(res.table["region"]) == {"all"}


@pytest.mark.parametrize(
    "change, kw, match",
    [
        (None, {"celltype_key": "nope"}, "nope"),
        (None, {"celltype_key": "celltype", "region_key": "nope"}, "nope"),
        ("nospatial", {"celltype_key": "celltype"}, "spatial"),
        (None, {"celltype_key": "celltype", "settings": ProximitySettings(radius_um=0)}, "radius"),
        (None, {"celltype_key": "celltype", "settings": ProximitySettings(n_shifts=0)}, "shift"),
        (
            None,
            {"celltype_key": "celltype", "settings": ProximitySettings(alternative="up")},
            "alternative",
        ),
        (None, {"celltype_key": "celltype", "settings": ProximitySettings(pvalue="t")}, "pvalue"),
    ],
)
def test_bad_input_one_clear_error(change, kw, match):
    a = _section(300, 300.0, 3, seed=6)
    if change == "nospatial":
        del a.obsm["spatial"]
    with pytest.raises(BrainAtlasInputError, match=match):
        region_proximity(a, **kw)
