"""The shared dock base (widgets/_base.py): jobs in worker threads with one progress
protocol, Cancel, one notification per failure, a live event loop; and the rule that no
dock imports another dock or a CLI module.

Run under a display: ``xvfb-run -a python -m pytest tests/test_widget_base.py``.
"""

from __future__ import annotations

import ast
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.jobs import check_cancel, report

WIDGETS = Path(__file__).resolve().parents[1] / "src" / "napari_brainatlas" / "widgets"
#: the dock modules (a package for the registration dock)
DOCKS = ("sections", "registration", "embed", "annotate", "domains", "ahba", "genes")


# ---------------------------------------------------------------------- imports (no Qt)
def _imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (relative imports resolved; for
    ``from X import y`` both ``X`` and ``X.y``)."""
    parts = list(path.relative_to(WIDGETS.parent.parent).with_suffix("").parts)
    package = parts[:-1]  # a module's package; for __init__.py the package itself
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]
    return out


def _dock_of(module: str) -> str | None:
    """The dock a module belongs to (``napari_brainatlas.widgets.<dock>[...]``)."""
    parts = module.split(".")
    if parts[:2] == ["napari_brainatlas", "widgets"] and len(parts) > 2 and parts[2] in DOCKS:
        return parts[2]
    return None


def _is_cli(module: str) -> bool:
    """``napari_brainatlas.cli``, ``napari_brainatlas.annotate.cli``, ``...cli.x``."""
    parts = module.split(".")
    return parts[0] == "napari_brainatlas" and "cli" in parts[1:]


def test_no_dock_imports_another_dock_or_a_cli_module():
    files = sorted(WIDGETS.rglob("*.py"))
    assert len(files) >= 10
    # the package namespace re-exports SectionsWidget (lazily); shared modules (_base,
    # _common, _jobs, fastpoints ...) and docks may not import a dock
    namespace = WIDGETS / "__init__.py"
    bad = []
    for f in files:
        me = _dock_of(".".join(f.relative_to(WIDGETS.parent.parent).with_suffix("").parts))
        for target in _imports(f):
            other = _dock_of(target)
            if (other not in (None, me) and f != namespace) or _is_cli(target):
                bad.append(f"{f.relative_to(WIDGETS)} imports {target}")
    assert not bad, bad


def test_the_import_check_sees_what_it_looks_for(tmp_path):
    """The AST walk above resolves relative imports (a check that finds nothing would
    pass for the wrong reason)."""
    f = WIDGETS / "annotate.py"
    found = _imports(f)
    assert "napari_brainatlas.widgets._base" in found
    assert "napari_brainatlas.widgets._common.SectionChecklist" in found
    assert _dock_of("napari_brainatlas.widgets.registration._dock") == "registration"
    assert _dock_of("napari_brainatlas.widgets._common") is None
    assert _is_cli("napari_brainatlas.annotate.cli._read") and _is_cli("napari_brainatlas.cli")
    assert not _is_cli("napari_brainatlas.widgets.launch")
    init = _imports(WIDGETS / "registration" / "__init__.py")
    assert "napari_brainatlas.widgets.registration._dock" in init


def test_jobs_and_session_modules_import_no_qt():
    for rel in ("_jobs.py", "registration/session.py", "genes_session.py"):
        roots = {t.split(".")[0] for t in _imports(WIDGETS / rel)}
        assert not roots & {"qtpy", "PyQt5", "PyQt6", "napari"}, (rel, roots)


# ---------------------------------------------------------------------- the base
pytest.importorskip("napari")
pytest.importorskip("pytestqt")


def test_progress_text_and_format():
    from napari_brainatlas.widgets._base import format_duration

    assert format_duration(0.123) == "0.12 s"
    assert format_duration(45) == "45 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(3900) == "1 h 05 min"


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    from napari_brainatlas.widgets._base import DockBase

    viewer = make_napari_viewer()
    base = DockBase(viewer)
    base.progress.show()
    yield base
    base.cancel()
    base.wait_for_workers(30000)


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _steps(n, delay, *, progress=None, cancel=None):
    """A job: ``n`` units of ``delay`` seconds, reporting each, polling cancel."""
    where = threading.get_ident()
    for i in range(n):
        check_cancel(cancel)
        time.sleep(delay)
        report(progress, i + 1, n, loss=1.0 / (i + 1), message=f"step {i + 1}")
    return where, n


def test_job_reports_progress_in_the_gui_thread(dock, qtbot, notifications):
    got, done = [], []
    button = dock.action_button("Run", lambda: None)
    worker = dock.start_job(
        _steps,
        5,
        0.02,
        on_progress=lambda d, n, info: got.append((d, n, info["loss"], threading.get_ident())),
        on_done=done.append,
        what="stepping",
        unit="epochs",
    )
    assert worker is not None and dock.busy
    assert not button.isEnabled() and dock.cancel_button.isEnabled()
    assert dock.wait_for_workers(30000)
    assert not dock.busy and button.isEnabled() and not dock.cancel_button.isEnabled()
    main = threading.get_ident()
    ((where, n),) = done
    assert n == 5 and where != main  # the job ran in a worker thread
    assert [g[:2] for g in got] == [(i, 5) for i in range(1, 6)]  # in order, each one
    assert all(g[3] == main for g in got)  # delivered in the GUI thread
    assert dock.progress.value() == dock.progress.maximum() == 5
    assert dock.progress.text().startswith("5/5 epochs")
    assert dock.status.text() == "step 5"
    assert not notifications


def test_progress_bar_shows_time_per_unit_and_eta(dock, qtbot):
    seen = []
    dock.job_progress.connect(lambda d, n, info: seen.append(dock.progress.text()))
    dock.start_job(_steps, 4, 0.05, what="stepping", unit="epochs")
    assert dock.wait_for_workers(30000)
    assert seen[0].startswith("1/4 epochs · ") and "s/epoch" in seen[0] and "ETA" in seen[0]
    assert "ETA" not in seen[-1]
    assert dock.progress.describe(3, 10, 6.0) == "3/10 epochs · 2 s/epoch · ETA 14 s"
    seen.clear()
    dock.start_job(_steps, 4, 0.01, what="processing", unit="%")
    assert dock.wait_for_workers(30000)
    assert seen[0].startswith("25 % · ETA") and dock.progress.text().startswith("100 % · ")
    dock.start_job(_steps, 2, 0.0, what="clustering")  # no unit: what it was, and the time
    assert dock.wait_for_workers(30000)
    assert dock.progress.text().startswith("clustering done · ")


def test_event_loop_stays_responsive_and_cancel_is_quiet(dock, qtbot, notifications):
    from qtpy.QtCore import QTimer

    ticks, done = [], []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    dock.start_job(_steps, 10_000, 0.01, on_done=done.append, what="long job", unit="steps")
    qtbot.waitUntil(lambda: dock.progress.value() >= 3, timeout=30000)
    n = len(ticks)
    qtbot.wait(200)
    assert len(ticks) > n + 5  # the timer kept ticking while the worker ran
    qtbot.mouseClick(dock.cancel_button, _left())
    assert dock.wait_for_workers(30000)
    timer.stop()
    assert not done  # no result from a cancelled job
    assert dock.status.text() == "long job cancelled"
    assert dock.progress.text() == "cancelled"
    assert not notifications  # quiet
    assert not dock.cancel_button.isEnabled()


def _bad_input(*, progress=None, cancel=None):
    report(progress, 1, 2)
    raise BrainAtlasInputError("the midline points are identical")


def _crash(*, progress=None, cancel=None):
    return {}["missing"]


def test_input_error_is_one_notification(dock, qtbot, notifications):
    done = []
    dock.start_job(_bad_input, on_done=done.append, what="registration")
    assert dock.wait_for_workers(30000)
    qtbot.wait(50)
    assert not done
    assert [str(n.message) for n in notifications] == ["the midline points are identical"]
    assert dock.status.text() == "the midline points are identical"
    assert dock.progress.text() == "failed"


def test_other_error_is_one_line_and_the_traceback_is_logged(dock, qtbot, notifications, caplog):
    caplog.set_level(logging.ERROR, logger="napari_brainatlas.widgets")
    dock.start_job(_crash, what="clustering")
    assert dock.wait_for_workers(30000)
    qtbot.wait(50)
    assert len(notifications) == 1
    msg = str(notifications[0].message)
    assert msg == "clustering failed: KeyError: 'missing'" and "\n" not in msg
    logged = [r for r in caplog.records if r.name == "napari_brainatlas.widgets"]
    assert len(logged) == 1 and "Traceback" in logged[0].getMessage()
    assert "_crash" in logged[0].getMessage()


def test_error_in_on_done_is_one_notification(dock, qtbot, notifications):
    def on_done(_):
        raise BrainAtlasInputError("a query section was removed")

    dock.start_job(_steps, 1, 0.0, on_done=on_done, what="annotation")
    assert dock.wait_for_workers(30000)
    assert [str(n.message) for n in notifications] == ["a query section was removed"]


def test_snapshot_is_a_copy():
    from anndata import AnnData

    from napari_brainatlas.widgets._base import snapshot

    ad = AnnData(np.ones((4, 3), np.float32), obs={"region": list("abab")})
    ad.obsm["spatial"] = np.arange(8.0).reshape(4, 2)
    ad.uns["napari_brainatlas"] = {"section": "s1"}
    full, cells = snapshot(ad), snapshot(ad, with_x=False)
    full.X[0, 0] = 5
    full.obs["region"] = "z"
    cells.obsm["spatial"][0, 0] = -1
    cells.uns["napari_brainatlas"]["section"] = "other"
    assert ad.X[0, 0] == 1 and list(ad.obs["region"]) == list("abab")
    assert ad.obsm["spatial"][0, 0] == 0 and ad.uns["napari_brainatlas"]["section"] == "s1"
    assert cells.n_vars == 0 and cells.n_obs == 4 and list(cells.obs_names) == list(ad.obs_names)


def _left():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def test_every_dock_in_the_demo_viewer(make_napari_viewer, qtbot):
    """Every dock on the demo: shown as a tab, not clipped, idle, and its picture saved
    (tests/_shots.py) to compare with docs/screenshots."""
    from qtpy.QtWidgets import QApplication, QDockWidget

    from napari_brainatlas.widgets._base import DockBase
    from napari_brainatlas.widgets.launch import build_demo_viewer

    from ._shots import save_shot

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)
    docks = build_demo_viewer(viewer, seed=0)
    assert set(docks) >= {"Sections", "Registration", "Embed", "Annotate", "Domains"}
    for title, widget in docks.items():
        assert isinstance(widget, DockBase) and not widget.busy
        dock = widget
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        assert dock is not None, title
        dock.raise_()
        qtbot.wait(100)
        QApplication.processEvents()
        assert widget.isVisible(), title
        assert widget.width() >= min(widget.minimumSizeHint().width(), 420) - 2, title
        img = viewer.screenshot(canvas_only=False, flash=False)
        save_shot(img, f"dock_{title.split(' ')[0].lower()}")
        assert img.shape[0] > 300 and img.shape[1] > 600
