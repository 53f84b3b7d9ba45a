"""Tiny deterministic inputs shared by tests/test_models_protocol.py and the script that
wrote the model folders of the old layouts (tests/data/legacy_models/make_legacy_models.py,
run with the source tree of commit 8393fe7). Only APIs that both trees have."""

from __future__ import annotations

import numpy as np

#: FuseMap / query mapping network sizes of the tiny models
TINY_FUSEMAP = {"n_latent": 8, "n_hidden": 32, "disc_hidden": 16, "batch_size": 32}
#: CellFormer sizes of the tiny model
TINY_CELLFORMER = {"d_model": 16, "n_heads": 2, "max_genes": 12, "dim_feedforward": 32}
#: SpaCon sizes of the tiny model
TINY_SPACON = {"hidden": 16, "latent": 4, "heads": 1, "batch_size": 64}


def sections():
    """Three small synthetic sections: the first two are the reference, the third the
    query (counts, obsm['spatial'], obs celltype / region / section)."""
    from napari_brainatlas.fusemap import make_synthetic_sections

    return make_synthetic_sections(
        n_sections=3, n_cells=[150, 120, 100], n_genes=20, n_shared=12, seed=0
    )


def spacon_data():
    """SpaCon input over 200 cells: random expression, CCF coordinates and connectome
    regions of the demo connectome."""
    from napari_brainatlas.domains import demo_connectome, prepare_arrays

    rng = np.random.default_rng(0)
    con = demo_connectome()
    n = 200
    expr = np.log1p(rng.poisson(2.0, (n, 12))).astype(np.float32)
    coords = rng.uniform(0, 2000, (n, 3))
    region = rng.integers(0, con.n_regions, n)
    hemi = (coords[:, 2] > 1000).astype(np.int64)
    return prepare_arrays(expr, coords, region, hemi, con, n_pcs=6, seed=0)
