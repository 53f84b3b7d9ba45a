"""The registration's settings: one frozen object passed explicitly, no module-level
setting read at run time (two registrations with different settings at once in two
threads each get their own result), the keyword options, and the progress protocol."""

import ast
import threading
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.atlas import make_demo_atlas
from napari_brainatlas.register import (
    RegistrationCancelled,
    RegistrationSettings,
    register_section,
    sample_section,
)
from napari_brainatlas.register.settings import replace_field, settings_with_options

REGISTER = Path(__file__).resolve().parents[1] / "src" / "napari_brainatlas" / "register"


@pytest.fixture(scope="module")
def atlas():
    return make_demo_atlas()


@pytest.fixture(scope="module")
def section(atlas):
    return sample_section(
        atlas,
        "coronal",
        4400.0,
        "both",
        n_cells=3000,
        angles_deg=(1.5, -1.0),
        rotation_deg=-40.0,
        scale=1.2,
        warp_um=30.0,
        seed=5,
        name="tilted",
    )


def _args(a, **kw):
    tr = a.uns["demo_truth"]
    args = {
        "plane": tr["plane"],
        "position_um": tr["position_um"] + 100.0,
        "hemisphere": tr["hemisphere"],
        "midline": tr["midline"],
        "refine_position": True,
    }
    args.update(kw)
    return args


def _other_settings() -> RegistrationSettings:
    """Settings that change the joint search and the label fits (and so the result)."""
    s = RegistrationSettings()
    return replace(
        s,
        search=replace(s.search, steps=((50.0, 1.5), (25.0, 0.75)), quadratic_finish=False),
        labels=replace(s.labels, reverse_weight=0.3),
    )


def test_two_settings_in_two_threads_each_get_their_own_result(atlas, section):
    """Nothing in register/ reads a module-level setting: run concurrently, each
    registration gives exactly what it gives alone with its settings."""
    settings = [RegistrationSettings(), _other_settings()]
    alone = [register_section(section, atlas, settings=s, **_args(section)) for s in settings]
    assert alone[0].affine != alone[1].affine  # the settings matter for this section
    assert alone[0].metrics["plane_evals"] != alone[1].metrics["plane_evals"]
    out = [None, None]
    barrier = threading.Barrier(2)

    def run(k):
        barrier.wait()
        out[k] = register_section(section, atlas, settings=settings[k], **_args(section))

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        assert out[k].to_dict() == alone[k].to_dict()


def test_register_modules_hold_no_tuning_globals():
    """Module-level names in register/ are constants of the method's definition
    (no tuning settings: those are fields of RegistrationSettings)."""
    allowed = {
        "__all__",
        "MIN_CELLS",  # input validation: fewest cells of a section
        "CCF_MAJOR_DIVISIONS",  # the divisions of the Allen CCF
        "ANCHOR_NAMES",
        "STATE_VERSION",  # file format version
        "OPTION_FIELDS",  # register_section option names -> settings fields
        "RegistrationCancelled",  # the package's Cancelled, by its earlier name
        "_SIM",  # similarity -> affine parameter map
        "_LIFT",  # KD-tree lift between divisions (um)
        "_CACHE",  # atlas-slice cache
        "_CACHE_LOCK",
        "_DIV_CACHE",  # ontology -> division table cache
    }
    found = {}
    for f in sorted(REGISTER.glob("*.py")):
        for node in ast.parse(f.read_text()).body:
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            for name in targets:
                if name not in allowed:
                    found.setdefault(f.name, []).append(name)
    assert not found, found


def test_settings_are_frozen_and_vary_with_replace():
    s = RegistrationSettings()
    with pytest.raises(FrozenInstanceError):
        s.search_um = 100.0
    with pytest.raises(FrozenInstanceError):
        s.search.fit_iters = 3
    t = replace(s, search=replace(s.search, fit_iters=3))
    assert t.search.fit_iters == 3 and s.search.fit_iters == 15
    assert replace_field(s, "search.fit_iters", 3) == t
    assert hash(s) == hash(RegistrationSettings())
    # the options of register_section, nested ones included
    o = settings_with_options(s, max_iter=7, tol=1e-3, sweep="never", refine_position=True)
    assert (o.outline.icp.max_iter, o.outline.icp.tol, o.outline.sweep) == (7, 1e-3, "never")
    assert o.refine_position and not s.refine_position
    assert settings_with_options(None) == s
    # each stage's label fit derives from the shared label terms
    assert s.search_labels().n_iter == s.search.fit_iters
    assert s.search_labels(coarse=True).tol_um == 2 * s.search.fit_tol_um
    assert s.quick_labels().accelerate and not s.labels.accelerate
    assert s.starts_labels().reverse_weight == 0.0 < s.labels.reverse_weight
    assert s.spread_labels().reverse_trim_q == s.finish.spread_reverse_trim_q


def test_unknown_option_and_bad_settings_raise_one_clear_error(atlas, section):
    with pytest.raises(BrainAtlasInputError, match="unknown registration option 'serch_um'"):
        register_section(section, atlas, serch_um=200.0, **_args(section))
    with pytest.raises(BrainAtlasInputError, match="plane_search must be 'joint' or 'quick'"):
        register_section(section, atlas, **_args(section, plane_search="fast"))
    with pytest.raises(BrainAtlasInputError, match="sweep must be"):
        register_section(section, atlas, **_args(section, sweep="sometimes"))
    with pytest.raises(BrainAtlasInputError, match="settings must be a RegistrationSettings"):
        register_section(section, atlas, settings={"search_um": 1.0}, **_args(section))
    with pytest.raises(BrainAtlasInputError, match="unknown registration setting"):
        replace_field(RegistrationSettings(), "search.fit_iter", 3)


def test_progress_protocol_and_the_earlier_two_argument_callback(atlas, section):
    """``progress(done, total, info)`` gets the ICP iterations (stage "icp", cost_um) and
    the candidate planes ("plane_search"); a two-argument ``progress(i, cost)`` still gets
    exactly the ICP iterations, as before (with a DeprecationWarning)."""
    new, old = [], []
    args = _args(section)
    register_section(section, atlas, progress=lambda d, t, i: new.append((d, t, i)), **args)
    with pytest.warns(DeprecationWarning, match="progress"):
        register_section(section, atlas, progress=lambda i, c: old.append((i, c)), **args)
    icp = [(d, i["cost_um"]) for d, _, i in new if i["stage"] == "icp"]
    assert icp and icp == old
    assert all(isinstance(c, float) and c >= 0 for _, c in old)
    planes = [i for _, _, i in new if i["stage"] == "plane_search"]
    assert planes and {"position_um", "angles_deg", "score", "move"} <= set(planes[0])
    assert [d for d, _, i in new if i["stage"] == "plane_search"] == list(range(1, len(planes) + 1))
    assert all(isinstance(i, dict) for _, _, i in new)


def test_cancel_raises_the_package_cancelled(atlas, section):
    """``cancel()`` is polled in every stage; True raises napari_brainatlas.Cancelled
    (``RegistrationCancelled`` is the same type)."""
    stages = []
    calls = []

    def cancel():
        calls.append(stages[-1] if stages else None)
        return "plane_search" in stages

    def progress(done, total, info):
        stages.append(info["stage"])

    with pytest.raises(Cancelled):
        register_section(section, atlas, cancel=cancel, progress=progress, **_args(section))
    assert RegistrationCancelled is Cancelled
    assert calls[-1] == "plane_search" and "icp" in calls
