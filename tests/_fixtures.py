"""Engine fixtures; import them into a test module (``from ._fixtures import ...``)."""

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
