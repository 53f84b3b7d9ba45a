"""``napari-brainatlas demo`` with a display: a napari viewer with the plugin's dock
widgets and the demo sections loaded."""

from __future__ import annotations

import importlib

#: (module, class, dock title) of the dock widgets; those not (yet) present are skipped
DOCK_WIDGETS = (
    ("napari_brainatlas.widgets.sections", "SectionsWidget", "Sections"),
    ("napari_brainatlas.widgets.registration", "RegistrationWidget", "Registration"),
    ("napari_brainatlas.widgets.embed", "EmbedWidget", "Embed"),
    ("napari_brainatlas.widgets.annotate", "AnnotateWidget", "Annotate"),
    ("napari_brainatlas.widgets.domains", "DomainsWidget", "Domains"),
    ("napari_brainatlas.widgets.ahba", "AHBAWidget", "Human brain (AHBA)"),
)


def build_demo_viewer(viewer, seed: int = 0, color_by: str = "region") -> dict:
    """Dock every available widget in ``viewer``, add the demo sections (side by side)
    and colour them by ``color_by``. Returns ``{title: widget}``.

    The docks are tabs on the right edge with vertical tab names (readable however many
    docks there are; tabs along the bottom of a 400 px dock area cut them to 'Sect...'),
    and the Sections tab is the one shown."""
    from .._napari import make_demo_sample

    docks, first = {}, None
    for mod, cls, title in DOCK_WIDGETS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue  # that widget is not part of this build
            raise
        widget = getattr(m, cls)(viewer)
        # the first dock stands alone, the others are tabs beside it (not a crowded column)
        dock = viewer.window.add_dock_widget(widget, name=title, area="right", tabify=bool(docks))
        docks[title] = widget
        if first is None:
            first = dock
            _vertical_tabs(dock)
        _narrow(viewer, dock)
    from napari.layers import Layer

    for data, kwargs, ltype in make_demo_sample(seed=seed):
        viewer.add_layer(Layer.create(data, kwargs, ltype))
    if first is not None:
        show_tab(first)
    sections = docks.get("Sections")
    if sections is not None and color_by:
        sections.color_by_annotation(color_by)
    viewer.reset_view()
    return docks


def _vertical_tabs(dock) -> None:
    """Tabified docks of the right area (of the main window holding ``dock``) get their
    tabs on the right edge, names vertical."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QMainWindow, QTabWidget

    main = dock.window() if dock is not None else None
    if isinstance(main, QMainWindow):
        main.setTabPosition(Qt.RightDockWidgetArea, QTabWidget.East)


def dock_tab_bars(dock) -> list:
    """The QTabBars of the tabified docks in the main window holding ``dock``, set
    never to elide a name."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    main = dock.window()
    bars = [b for b in main.findChildren(QTabBar) if b.count()]
    for b in bars:
        b.setElideMode(Qt.ElideNone)
    return bars


def show_tab(dock) -> None:
    """Bring ``dock`` (a QDockWidget among tabs) to the front, now and once the event
    loop has laid the tabs out (napari raises each dock as it is added, and the main
    window applies the last raise when it lays its tab bars out)."""
    from qtpy.QtCore import QTimer

    def front():
        dock_tab_bars(dock)
        dock.raise_()

    front()
    QTimer.singleShot(0, front)


def _narrow(viewer, dock, width: int = 400) -> None:
    """Give a right-hand dock (the QDockWidget ``add_dock_widget`` returned) a sensible
    width, leaving the canvas the rest (Qt's QMainWindow.resizeDocks)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QMainWindow

    main = dock.window() if dock is not None else None
    if isinstance(main, QMainWindow):
        main.resizeDocks([dock], [width], Qt.Horizontal)


def launch_demo_viewer(seed: int = 0) -> None:
    """Open napari with the demo sections and the plugin's widgets, then run it."""
    import napari

    viewer = napari.Viewer(title="napari-brainatlas demo")
    build_demo_viewer(viewer, seed=seed)
    napari.run()
