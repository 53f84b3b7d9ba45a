"""Shared GUI fixtures: a napari viewer with the Sections dock, and captured errors."""

from __future__ import annotations

import pytest

from ._fixtures import demo_atlas, demo_sections  # noqa: F401  (engine fixtures for every module)


@pytest.fixture
def sections_dock(make_napari_viewer):
    """(viewer, SectionsWidget) with the widget docked (closed with the viewer)."""
    pytest.importorskip("napari")
    from napari_brainatlas.widgets.sections import SectionsWidget

    viewer = make_napari_viewer(show=True)
    widget = SectionsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sections", area="right")
    viewer.window._qt_window.resize(1400, 900)
    yield viewer, widget
    widget.wait_for_workers()


@pytest.fixture
def error_notifications():
    """List that collects every napari notification of error severity while the test runs."""
    pytest.importorskip("napari")
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = []

    def grab(notification):
        if notification.severity >= NotificationSeverity.ERROR:
            seen.append(notification)

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def pytest_collection_modifyitems(config, items):
    """Skip the tests that open a Qt window when there is no display (run them under
    ``xvfb-run -a``); without this Qt would abort the whole test run."""
    import os

    if os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal"):
        return
    from napari_brainatlas.pipeline import display_available

    if display_available():
        return
    skip = pytest.mark.skip(reason="no display: run under xvfb-run -a")
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("gui") or names & {
            "qtbot",
            "qapp",
            "make_napari_viewer",
            "sections_dock",
        }:
            item.add_marker(skip)
