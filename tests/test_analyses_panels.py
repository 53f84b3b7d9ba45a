"""Panel selection (analyses/panels.py): even spread over modules, most variable first
within a module, must-have / excluded genes honoured, the baselines, the variability
score, one clear error per bad input, and the file-to-file task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.analyses import (
    gene_modules,
    gene_variability,
    hvg_panel,
    random_panel,
    select_panel,
)

from .test_analyses_modules import planted_embedding


@pytest.fixture(scope="module")
def planted():
    E, lab, _ = planted_embedding()
    gm = gene_modules(E, umap=False)
    r = np.random.default_rng(0)
    var = pd.Series(r.random(len(E)), index=E.index)
    # module 1 holds the most variable genes: a top-HVG panel would come mostly from it
    var[gm.table.index[gm.table["module"] == 1]] += 1.0
    return E, gm, var


def _counts(panel, gm):
    c = panel["module"].value_counts()
    return c.reindex(range(1, gm.n_modules + 1), fill_value=0)


@pytest.mark.parametrize("size", [6, 20, 50])
def test_panel_is_spread_evenly_and_takes_the_most_variable_of_each_module(planted, size):
    E, gm, var = planted
    panel = select_panel(gm, size, variability=var)
    assert len(panel) == size and panel["gene"].is_unique
    c = _counts(panel, gm)
    assert c.max() - c.min() <= 1
    for k, n in c.items():
        members = gm.table.index[gm.table["module"] == k]
        top = var[members].sort_values(ascending=False).index[:n]
        assert set(panel.loc[panel["module"] == k, "gene"]) == set(top)
    # top HVG would take almost everything from module 1
    hvg = hvg_panel(var, size)
    assert (gm.table.loc[hvg["gene"], "module"] == 1).mean() > 0.7


def test_more_modules_than_genes_one_gene_from_each_of_the_best_modules(planted):
    E, gm, var = planted
    panel = select_panel(gm, 4, variability=var)
    assert panel["module"].is_unique and len(panel) == 4
    best = [var[gm.table.index[gm.table["module"] == k]].max() for k in panel["module"]]
    others = [
        var[gm.table.index[gm.table["module"] == k]].max()
        for k in range(1, gm.n_modules + 1)
        if k not in set(panel["module"])
    ]
    assert min(best) >= max(others)


def test_include_and_exclude_are_honoured(planted):
    E, gm, var = planted
    m1 = list(gm.table.index[gm.table["module"] == 1])
    inc = m1[:5]  # five must-have genes from module 1
    exc = var.sort_values(ascending=False).index[:10].tolist()
    exc = [g for g in exc if g not in inc]
    panel = select_panel(gm, 24, variability=var, include=inc, exclude=",".join(exc))
    assert list(panel["gene"][:5]) == inc and (panel["pick"][:5] == "include").all()
    assert not set(exc) & set(panel["gene"])
    c = _counts(panel, gm)
    assert c[1] == 5  # the must-haves fill module 1's share ...
    others = c.drop(1)
    assert others.max() - others.min() <= 1 and others.min() >= 3  # ... the rest is even
    h = hvg_panel(var, 10, include=inc[:2], exclude=exc)
    assert list(h["gene"][:2]) == inc[:2] and not set(exc) & set(h["gene"])
    r = random_panel(E.index, 10, include=inc[:2], exclude=exc, seed=3)
    assert list(r["gene"][:2]) == inc[:2] and not set(exc) & set(r["gene"])
    assert r["gene"].is_unique


def test_random_panels_differ_by_seed_and_repeat_for_a_seed(planted):
    E, _, _ = planted
    a = random_panel(E.index, 20, seed=1)["gene"].tolist()
    b = random_panel(E.index, 20, seed=1)["gene"].tolist()
    c = random_panel(E.index, 20, seed=2)["gene"].tolist()
    assert a == b and a != c


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda gm, v: select_panel(None, 5, variability=v), "model"),
        (lambda gm, v: select_panel(gm, 5, variability=v, include=["NOPE"]), "NOPE"),
        (lambda gm, v: select_panel(gm, 5, variability=v, exclude="G1,NOPE2"), "NOPE2"),
        (lambda gm, v: select_panel(gm, 10_000, variability=v), "larger than"),
        (lambda gm, v: select_panel(gm, 0, variability=v), "positive"),
        (lambda gm, v: select_panel(gm, 2.5, variability=v), "whole"),
        (lambda gm, v: select_panel(gm, 5, variability=v, include="G1", exclude="G1"), "both"),
        (lambda gm, v: select_panel(gm, 2, variability=v, include="G1,G2,G3"), "do not fit"),
        (lambda gm, v: select_panel(gm, 5), "expression"),
        (lambda gm, v: hvg_panel(v, 5, include=["NOPE"]), "NOPE"),
        (lambda gm, v: random_panel([], 5), "genes"),
    ],
)
def test_bad_input_one_clear_error(planted, call, match):
    _, gm, var = planted
    with pytest.raises(BrainAtlasInputError, match=match):
        call(gm, var)


def test_variability_ranks_overdispersed_genes_above_poisson_genes_of_equal_mean():
    r = np.random.default_rng(0)
    n = 800
    means = np.linspace(0.2, 20, 40)
    pois = r.poisson(means, size=(n, 40))
    nb = r.negative_binomial(1.0, 1.0 / (1.0 + means[20:30]), size=(n, 10))  # means 10-15
    X = np.hstack([pois, nb]).astype(np.float32)
    genes = [f"p{i}" for i in range(40)] + [f"nb{i}" for i in range(10)]
    a = AnnData(X=X, var=pd.DataFrame(index=genes))
    v = gene_variability(a)
    assert set(v.index[:10]) == {g.upper() for g in genes[40:]}
    assert v.between(0, 1).all()
    # two sections: a gene's score is the mean of its two percentiles
    b = a[:, ::-1].copy()
    assert gene_variability([a, b]).index[0].startswith("NB")
