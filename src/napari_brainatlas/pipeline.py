"""Deprecated location of the headless main job: see :mod:`napari_brainatlas.workflows.demo`.

``run_demo_pipeline``, ``display_available`` and ``qc_figure`` stay importable from here.
"""

from .workflows.demo import display_available, qc_figure, run_demo_pipeline

__all__ = ["display_available", "qc_figure", "run_demo_pipeline"]
