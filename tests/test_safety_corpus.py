"""The bad-input corpus of issue 28 as part of the suite (cases in ``safety_cases.py``).

Each case runs one command line in-process (``napari_brainatlas.cli.main``) on files
built once per module from the demo (a FuseMap run of 1 epoch, degenerate sections,
broken model folders, links to inputs) and asserts: the exit code (2 for bad input, 0 for
the low-count runs), ONE stderr line naming the problem, no traceback, every input
byte-identical, no NaN / inf in any written file, no partial output or temporary file.
"""

import pytest
import torch

from . import safety_cases as sc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = sc.build(tmp_path_factory.mktemp("corpus"))
        yield {c.id: c for c in sc.cases(paths)}
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("case_id", sc.case_ids())
def test_cli_case(corpus, case_id):
    case = corpus[case_id]
    outcome = sc.run_case(case)
    assert not sc.problems(case, outcome), (sc.problems(case, outcome), outcome.lines)


def test_low_count_cells_flagged_and_finite(corpus):
    """The corpus's FuseMap run embedded a section with zero- and low-count cells: they
    are kept, flagged in obs['fusemap_low_counts'], with finite (zero) embeddings; a
    transfer onto the model labels such query cells 'unassigned' with uncertainty 1."""
    import anndata as ad
    import numpy as np

    case = corpus["transfer-low-counts"]
    root = case.inputs[0].parents[2]
    low = ad.read_h5ad(root / "run" / "S3_full_AP4800.h5ad")
    flag = low.obs["fusemap_low_counts"].to_numpy(bool)
    assert flag.sum() >= low.n_obs // 9
    for key in ("X_fusemap_cell", "X_fusemap_tissue"):
        z = np.asarray(low.obsm[key])
        assert np.isfinite(z).all() and not z[flag].any()
    out = root / "out" / "low_t.h5ad"
    if not out.exists():
        assert not sc.problems(case, sc.run_case(case))
    t = ad.read_h5ad(out)
    assert np.isfinite(t.obs["celltype_transfer_uncertainty"]).all()
    if "fusemap_low_counts" in t.obs:
        f = t.obs["fusemap_low_counts"].to_numpy(bool)
        assert (t.obs["celltype_transfer"][f] == "unassigned").all()
        assert (t.obs["celltype_transfer_uncertainty"][f] == 1.0).all()
