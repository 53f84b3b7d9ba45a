"""The "Genes & neighbours" dock's Qt-free state and jobs (widgets/genes_session.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.analyses import gene_modules
from napari_brainatlas.widgets import genes_session as gs

from .test_analyses_modules import planted_embedding
from .test_analyses_proximity import _plant, _section


def test_label_columns_modules_and_colours():
    a = _section(300, 300.0, 3, seed=0)
    a.obs["score"] = np.linspace(0, 1, a.n_obs)
    b = a.copy()
    del b.obs["region"]
    assert gs.categorical_columns([a]) == ["celltype", "region", "section"]
    assert gs.categorical_columns([a, b]) == ["celltype", "section"]  # common ones only
    E, _, _ = planted_embedding()
    s = gs.GenesSession(modules=gene_modules(E, umap=False))
    rows = s.module_rows()
    assert [r[0] for r in rows] == list(range(1, s.modules.n_modules + 1))
    assert all(len(r[2].split(", ")) == 3 for r in rows)
    assert s.module_keys()[0] == "module_1_score"
    rgba = s.score_colors(a, "score")
    assert rgba.shape == (a.n_obs, 4) and not np.allclose(rgba[0], rgba[-1])
    with pytest.raises(BrainAtlasInputError, match="score it first"):
        s.score_colors(a, "module_9_score")


def test_proximity_heatmap_pairs_and_highlight():
    a = _plant(_section(3000, 1500.0, 4, seed=2), "left", "1", "3", frac=0.5)
    s = gs.GenesSession()
    with pytest.raises(BrainAtlasInputError, match="proximity"):
        s.heatmap("left")
    from napari_brainatlas.analyses import ProximitySettings

    s.proximity = gs.proximity_job([a], "celltype", "region", ProximitySettings(n_shifts=100))
    assert s.regions() == ["left", "right"]
    m = s.heatmap("left")
    i, j = list(m.index).index("3"), list(m.columns).index("1")
    assert s.pair_at("left", i, j) == ("1", "3")  # ordered as in the table
    assert s.pair_at("left", 99, 0) is None
    assert s.table("left")["region"].eq("left").all()
    [(ma, mb)] = gs.pair_cells_job([a], "celltype", "region", "left", "1", "3", 30.0)
    t = a.obs["celltype"].to_numpy()
    assert ma.any() and mb.any() and (t[ma] == "1").all() and (t[mb] == "3").all()
    rgba = s.pair_colors(a.n_obs, ma, mb)
    assert np.allclose(rgba[ma], gs.PAIR_COLORS[0]) and np.allclose(rgba[mb], gs.PAIR_COLORS[1])
    assert np.allclose(rgba[~(ma | mb)], gs.GREY)
    with pytest.raises(BrainAtlasInputError, match="tick"):
        gs.proximity_job([], "celltype", None, None)
    with pytest.raises(BrainAtlasInputError, match="model folder"):
        gs.find_modules_job("")
