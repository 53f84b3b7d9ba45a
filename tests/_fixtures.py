"""Engine fixtures; import them into a test module (``from ._fixtures import ...``)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_sections():
    """Four small demo sections (seed 0); treat as read-only (copy before changing)."""
    from napari_brainatlas.demo import make_demo_sections

    return make_demo_sections(seed=0, n_sections=4, cells_per_mm2=150)


@pytest.fixture(scope="session")
def demo_atlas():
    from napari_brainatlas.atlas import make_demo_atlas

    return make_demo_atlas()


def register_demo(sections, atlas="demo"):
    """The demo sections registered to ``atlas`` (the demo atlas, or the same atlas read
    from files) the way the headless pipeline does: each with its true plane, position,
    hemisphere and midline clicks (``uns['demo_truth']``)."""
    from napari_brainatlas.workflows.register import register_many

    opts = [
        {
            "plane": s.uns["demo_truth"]["plane"],
            "position_um": s.uns["demo_truth"]["position_um"],
            "hemisphere": s.uns["demo_truth"]["hemisphere"],
            "midline": np.asarray(s.uns["demo_truth"]["midline"]),
        }
        for s in sections
    ]
    return [r.adata for r in register_many(sections, atlas, opts)]
