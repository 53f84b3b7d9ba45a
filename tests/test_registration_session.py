"""The Registration dock's state without Qt: RegistrationSession (accept, undo, reset,
batch rows, JSON state files) and RegisterOptions.

The atlas here is a small hand-made volume with the demo ontology's structure ids (the
session's bookkeeping does not depend on the atlas; ``accept`` runs the real
``apply_registration`` on it) and the fit a known affine, so the test runs in well under
a second and needs no display.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from anndata import AnnData

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import Atlas
from napari_brainatlas.atlas.demo_atlas import demo_ontology
from napari_brainatlas.register import RegistrationResult
from napari_brainatlas.widgets.registration.session import (
    BATCH_COLUMNS,
    Clicks,
    RegisterOptions,
    RegistrationSession,
    read_state,
)

RES = 100.0


@pytest.fixture(scope="module")
def atlas():
    onto = demo_ontology()
    ids = [int(i) for i in onto.ids[:3]]
    vol = np.zeros((20, 12, 16), np.int32)  # (AP, DV, ML) at 100 um
    vol[:, 2:10, 2:8] = ids[1]
    vol[:, 2:10, 8:14] = ids[2]
    return Atlas(vol, RES, onto, name="tiny", version="tiny-v1")


def _section(n=200, seed=0) -> AnnData:
    rng = np.random.default_rng(seed)
    xy = rng.uniform([300.0, 300.0], [1300.0, 900.0], (n, 2))
    ad = AnnData(obs={"region": np.where(xy[:, 0] < 800, "a", "b")})
    ad.obs_names = [f"c{i}" for i in range(n)]
    ad.obsm["spatial"] = xy
    return ad


def _result(section="s1", dx=0.0, dice=0.9, atlas_name="tiny", version="tiny-v1"):
    aff = np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return RegistrationResult(
        atlas=atlas_name,
        atlas_version=version,
        plane="coronal",
        position_um=1000.0,
        hemisphere="both",
        affine=aff.tolist(),
        anchors_section=[[300.0, 300.0], [1300.0, 300.0], [300.0, 900.0], [1300.0, 900.0]],
        anchors_atlas=[
            [300.0 + dx, 300.0],
            [1300.0 + dx, 300.0],
            [300.0 + dx, 900.0],
            [1300.0 + dx, 900.0],
        ],
        cost_history=[30.0, 12.0, 5.0],
        converged=True,
        iterations=3,
        confidence=0.8,
        metrics={"dice": dice, "boundary_median_um": 42.0},
        section=section,
    )


def test_fit_accept_undo_reset(atlas):
    ses = RegistrationSession()
    ses.set_atlas(atlas.name, atlas.version, "tiny", "")
    a0 = _section()
    assert ses.result("s1") is None and not ses.can_undo("s1")
    mid = np.array([[800.0, 300.0], [800.0, 900.0]])
    ses.set_clicks("s1", midline=mid, position_um=1000.0, hemisphere="both")
    r1 = _result()
    ses.fitted("s1", r1, adata=a0, kept={"features": "table 0"})
    assert ses.result("s1") is r1 and not ses.accepted("s1")
    assert np.allclose(ses.state("s1").clicks.midline, mid)
    # accept: the engine writes into a copy; the section's AnnData itself is untouched
    a1 = ses.accept("s1", a0, atlas, kept={"features": "table 1"})
    assert a1 is not a0 and "ccf_coords" not in a0.obsm
    assert a1.obsm["ccf_coords"].shape == (a0.n_obs, 3)
    assert set(np.unique(a1.obs["ccf_id"])) <= {0, *map(int, atlas.ontology.ids)}
    assert ses.accepted("s1") and ses.state("s1").status == "accepted"
    # a second fit on the accepted section, then undo twice
    r2 = _result(dx=50.0)
    ses.fitted("s1", r2, adata=a1, kept={"features": "table 2"})
    snap = ses.undo("s1")
    assert snap.adata is a1 and snap.kept == {"features": "table 2"}
    assert ses.result("s1") is r1 and ses.accepted("s1")
    snap = ses.undo("s1")
    assert snap.adata is a0 and snap.kept == {"features": "table 1"}
    assert ses.result("s1") is r1 and not ses.accepted("s1")
    assert ses.state("s1").adata is None  # the current state holds no AnnData
    # reset: back to before anything, whatever the stack holds
    ses.fitted("s1", r2, adata=a0)
    snap = ses.reset("s1")
    assert snap.adata is a0 and snap.kept == {"features": "table 0"}
    assert ses.result("s1") is None and not ses.can_undo("s1")
    assert ses.undo("s1") is None and ses.reset("s1") is None


def test_accept_without_fit_is_one_input_error(atlas):
    ses = RegistrationSession()
    with pytest.raises(BrainAtlasInputError, match="register the section first"):
        ses.accept("s1", _section(), atlas)
    assert not ses.can_undo("s1")


def test_batch_rows_and_rest():
    ses = RegistrationSession()
    names = ["s1", "s2", "s3"]
    ses.fitted("s1", _result("s1", dice=0.91234))
    assert ses.unregistered(names) == ["s2", "s3"]
    ses.queue(["s2", "s3"])
    ses.set_status("s3", "failed: the midline points are identical")
    rows = ses.batch_rows(names)
    assert all(len(r) == len(BATCH_COLUMNS) for r in rows)
    assert rows[0] == ("s1", "fitted", "", "0.912", "0.80")
    assert rows[1] == ("s2", "queued", "", "", "")
    assert rows[2][1].startswith("failed")
    assert set(ses.results()) == {"s1"}
    ses.set_agreement("s1", 0.834)
    assert ses.batch_row("s1")[2] == "83%"
    ses.fitted("s1", _result("s1"))  # a new fit: its agreement is not known yet
    assert ses.batch_row("s1")[2] == ""


def test_options_give_the_engine_keywords():
    opts = RegisterOptions(plane="sagittal", hemisphere="left", max_iter=50)
    kw = opts.kwargs()
    assert kw["hemisphere"] == "both"  # sagittal sections have no hemisphere choice
    assert kw["plane_search"] == "joint" and kw["max_iter"] == 50
    assert RegisterOptions(quick_search=True).plane_search == "joint"  # needs refine
    assert RegisterOptions(refine_position=True, quick_search=True).plane_search == "quick"


def test_state_file_round_trip(tmp_path, atlas):
    ses = RegistrationSession()
    ses.set_atlas(atlas.name, atlas.version, "path/to/tiny.nrrd", "onto.csv")
    clicks = dict(
        midline=np.array([[800.0, 300.0], [800.0, 900.0]]),
        landmarks=np.array([[1.0, 2.0, 3.0, 4.0]]),
        position_um=1000.0,
        hemisphere="both",
    )
    ses.set_clicks("s1", **clicks)
    r1 = _result()
    ses.fitted("s1", r1)
    ses.set_clicks("s1", **clicks)
    path = ses.save("s1", tmp_path / "s1.registration.json")
    doc = json.loads(path.read_text())
    assert doc["atlas"] == "tiny" and doc["atlas_version"] == "tiny-v1"
    assert doc["atlas_spec"] == "path/to/tiny.nrrd" and doc["ontology"] == "onto.csv"
    assert doc["clicks"]["landmarks"] == [[1.0, 2.0, 3.0, 4.0]]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left over

    other = RegistrationSession()
    other.set_atlas(atlas.name, atlas.version)
    back = other.load("s1", path)
    assert np.allclose(back.affine, r1.affine) and back.metrics == r1.metrics
    st = other.state("s1")
    assert st.status == "loaded" and not st.accepted
    assert np.allclose(st.clicks.midline, clicks["midline"])
    assert np.allclose(st.clicks.landmarks, clicks["landmarks"])
    assert other.undo("s1") is not None and other.result("s1") is None
    # Clicks survive JSON on their own too (flip and start pose included)
    c = Clicks(position_um="auto", angles_deg=(1.5, -2.0), flip="yes", pose=(30.0, 0.5))
    assert Clicks.from_dict(json.loads(json.dumps(c.to_dict()))).to_dict() == c.to_dict()
    assert c.mirrored is True and Clicks().mirrored is None and Clicks(flip="no").mirrored is False
    with pytest.raises(ValueError):
        Clicks.from_dict({"flip": "sideways"})


def test_state_files_default_to_a_user_folder(tmp_path, monkeypatch, atlas):
    """Never beside the (possibly read-only) input data: a folder of the user's, per
    atlas; NAPARI_BRAINATLAS_STATE_DIR moves it."""
    from napari_brainatlas.widgets.registration.session import default_state_dir

    monkeypatch.delenv("NAPARI_BRAINATLAS_STATE_DIR", raising=False)
    home = default_state_dir()
    assert home.name == "registrations" and "napari-brainatlas" in str(home)
    monkeypatch.setenv("NAPARI_BRAINATLAS_STATE_DIR", str(tmp_path / "states"))
    ses = RegistrationSession()
    ses.set_atlas(atlas.name, atlas.version)
    p = ses.state_path("my section/1")
    assert p == tmp_path / "states" / "tiny" / "my_section_1.registration.json"
    ses.fitted("my section/1", _result("my section/1"))
    out = ses.save("my section/1", p)
    assert out.exists() and json.loads(out.read_text())["atlas_version"] == "tiny-v1"


def test_files_of_the_register_state_module_load(tmp_path, atlas):
    from napari_brainatlas.register.state import save_state

    p = save_state(tmp_path / "old.json", _result(), atlas_spec="tiny", midline=[[1, 2], [3, 4]])
    ses = RegistrationSession()
    ses.set_atlas(atlas.name, atlas.version)
    ses.load("s1", p)
    assert np.allclose(ses.state("s1").clicks.midline, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "not found"),
        ("{ not json", "not a registration state file"),
        ("[1, 2, 3]", "not a registration state file"),
        ('{"result": {"atlas": "tiny"}}', "lacks"),
        (
            '{"result": {"atlas": "tiny", "atlas_version": "", "plane": "coronal", '
            '"position_um": 1, "hemisphere": "both", "affine": [1, 2]}}',
            "not a valid",
        ),
        (
            '{"result": {"atlas": "tiny", "atlas_version": "", "plane": "coronal", '
            '"position_um": 1, "hemisphere": "both", "affine": [1,0,0,0,1,0,0,0,1], '
            '"no_such_field": 3}, "clicks": {"angles_deg": [1]}}',
            "angles_deg",
        ),
        ("\x00\x01\xff binary", "not a registration state file"),
    ],
)
def test_bad_state_file_is_one_input_error(tmp_path, content, words):
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_bytes(content.encode("latin-1"))
    with pytest.raises(BrainAtlasInputError, match=words) as info:
        read_state(p)
    assert "\n" not in str(info.value)
    ses = RegistrationSession()
    ses.set_atlas("tiny", "")
    with pytest.raises(BrainAtlasInputError):
        ses.load("s1", p)
    assert ses.result("s1") is None and not ses.can_undo("s1")


def test_state_of_another_atlas_is_refused(tmp_path, atlas):
    ses = RegistrationSession()
    ses.set_atlas(atlas.name, atlas.version)
    ses.fitted("s1", _result())
    p = ses.save("s1", tmp_path / "s1.json")
    for name, version, words in (
        ("demo", "demo-v1-50um", "made on atlas 'tiny'"),
        ("tiny", "tiny-v2", "version"),
        ("", "", "load atlas"),
    ):
        other = RegistrationSession()
        if name:
            other.set_atlas(name, version)
        with pytest.raises(BrainAtlasInputError, match=words):
            other.load("s1", p)
        assert other.result("s1") is None


def test_nothing_to_save_is_one_input_error(tmp_path):
    with pytest.raises(BrainAtlasInputError, match="nothing to save"):
        RegistrationSession().save("s1", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_session_imports_no_qt_and_no_napari():
    code = (
        "import sys\n"
        "from napari_brainatlas.widgets.registration.session import RegistrationSession\n"
        "from napari_brainatlas.widgets import _jobs\n"
        "RegistrationSession().batch_rows(['a'])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'vispy')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
