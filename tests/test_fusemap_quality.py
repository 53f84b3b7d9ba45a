"""FuseMap's one-line quality summary (fusemap.quality; printed by `embed`)."""

import numpy as np
import torch

from napari_brainatlas.fusemap import FuseMap, make_synthetic_sections
from napari_brainatlas.fusemap.quality import quality_summary, section_quality

TINY = {"n_latent": 8, "n_hidden": 32, "disc_hidden": 16, "batch_size": 32, "min_steps": 5}


def test_quality_summary_per_section_values_and_line():
    torch.set_num_threads(1)
    secs = make_synthetic_sections(n_sections=2, n_cells=[150, 120], n_genes=20, n_shared=10)
    m = FuseMap(secs, seed=0, **TINY)
    m.train(epochs=1)
    rows = section_quality(m, max_cells=100)
    assert [r["section"] for r in rows] == m.section_names
    for r in rows:
        assert 0.0 <= r["mixing"] <= 1.0
        assert np.isfinite(r["reconstruction"]) and r["reconstruction"] <= 1.0
    line = quality_summary(m)
    assert line.startswith("quality: ") and "\n" not in line
    assert all(n in line for n in m.section_names)
    one = FuseMap(secs[:1], seed=0, **TINY)  # untrained, one section: no mixing figure
    assert "mixing -" in quality_summary(one)
