"""Where the real public data lives (../shared/data beside the repository)."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(rel: str) -> Path:
    """Path of a real data file; skips the test when ../shared/data is absent."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


OSMFISH = "osmfish_codeluppi2018/osmFISH_SScortex_mouse_all_cells.loom"
MERFISH = "spacexr_merfish_hypothalamus/query_merfish"
SLIDESEQ = "spacexr_slideseq_cerebellum/query_slideseq"
VISIUM = "squidpy_visium_mini/test_data.h5ad"
CCF25 = "ccfv3_annotation/annotation_25.nrrd"
CCF50 = "ccfv3_annotation/annotation_50.nrrd"
ONTO_CSV = "ccfv3_ontology/structure_tree_safe_2017.csv"
ONTO_JSON = "ccfv3_ontology/AllenMouseBrainOntology_structure_graph_1.json"
