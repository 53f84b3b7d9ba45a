"""The Registration dock (``RegistrationWidget``, named in napari.yaml) and its
Qt-free state (:class:`~.session.RegistrationSession`).

``session`` imports no Qt and no napari, so ``import
napari_brainatlas.widgets.registration.session`` works without a display; the dock
itself (``_dock``, ``_overlays``) is imported on first use of ``RegistrationWidget``.
"""

__all__ = ["RegisterOptions", "RegistrationSession", "RegistrationWidget"]


def __getattr__(name):
    if name == "RegistrationWidget":
        from ._dock import RegistrationWidget

        return RegistrationWidget
    if name in ("RegistrationSession", "RegisterOptions"):
        from . import session

        return getattr(session, name)
    raise AttributeError(name)
