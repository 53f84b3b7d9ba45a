"""The Registration dock's "From a reference" mode under Xvfb (issue 22): a user opens
the demo sections, picks the reference model (two demo sections registered, FuseMap
trained on them), presses Register all, and every section gets its CCF keys and the
transferred labels; the least confident section is listed first. Screenshots are saved
(tests/_shots.py) to be looked at."""

import numpy as np
import pytest
import torch

from ._regdock import add_sections, left, load_atlas, open_reg_dock, shot

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    yield from open_reg_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch)


def test_register_all_from_reference(reg_dock, qtbot, tmp_path):
    from napari_brainatlas.atlas import make_demo_atlas
    from napari_brainatlas.demo import make_demo_sections
    from napari_brainatlas.workflows.demo import make_demo_reference

    viewer, w = reg_dock
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    sections = make_demo_sections(0, 4, cells_per_mm2=60)
    # the reference: two demo sections with their true CCF keys (as if registered by
    # clicks: `napari-brainatlas demo --from-reference` does that), FuseMap on them
    ref = make_demo_reference(
        sections, make_demo_atlas(), tmp_path / "ref", epochs=2, by_truth=True
    )
    layers = add_sections(viewer, sections)
    load_atlas(qtbot, w)
    # the user states each hemisection's hemisphere (typed, no clicks)
    for ly, s in zip(layers, sections):
        w.section_combo.setCurrentText(ly.name)
        w.hemi_combo.setCurrentText(s.uns["demo_truth"]["hemisphere"])
    w.model_edit.setText(str(ref["model"]))
    w.map_epochs_spin.setValue(2)
    w.depth_combo.setCurrentText("fine")
    qtbot.mouseClick(w.register_all_button, left())
    qtbot.waitUntil(lambda: not w.busy, timeout=600000)
    torch.set_num_threads(n)
    assert "4 placed, 0 failed" in w.status.text(), w.status.text()
    for ly in layers:
        a = ly.metadata["adata"]
        assert {"ccf_id", "ccf_acronym", "ccf_division_transfer"} <= set(a.obs), ly.name
        assert {"ccf_fine_transfer", "ccf_division_transfer_uncertainty"} <= set(a.obs)
        assert np.isfinite(a.obsm["ccf_coords"]).all()
        assert "ccf_division_transfer" in ly.features
        assert w.session.accepted(ly.name)
    rows = w.reference_rows()
    assert len(rows) == 4
    conf = [float(r[1].split()[0]) for r in rows]
    assert conf == sorted(conf)  # doubtful first
    assert w.candidate_combo.count() >= 1  # the shown section's scan candidates
    assert w.compare_column == "ccf_division_transfer"
    print(shot(viewer, w, "registration_from_reference"))
    # picking a row shows that section; Go fits it again at a candidate
    w.reference_table.selectRow(3)
    assert w.section_name == rows[3][0]
    assert w.candidate_combo.count() >= 1
    qtbot.mouseClick(w.candidate_button, left())
    qtbot.waitUntil(lambda: not w.busy, timeout=120000)
    print(shot(viewer, w, "registration_from_reference_candidate"))
