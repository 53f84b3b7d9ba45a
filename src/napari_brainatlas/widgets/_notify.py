"""One-line user messages from the widgets (napari notifications)."""

from __future__ import annotations

from .._errors import BrainAtlasInputError


def one_line(exc: BaseException, context: str = "") -> str:
    """A one-line message for ``exc``: the sentence itself for input errors, else the
    exception type and its first line, prefixed with ``context``."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, BrainAtlasInputError):
        return first or "bad input"
    msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"{context}{msg}"


def show_error(message: str) -> None:
    """Show ``message`` as one napari error notification."""
    from napari.utils.notifications import show_error as _show_error

    _show_error(str(message).replace("\n", " ")[:500])


def show_info(message: str) -> None:
    from napari.utils.notifications import show_info as _show_info

    _show_info(str(message).replace("\n", " ")[:500])


def show_warning(message: str) -> None:
    """Show ``message`` as one napari warning notification."""
    from napari.utils.notifications import show_warning as _show_warning

    _show_warning(str(message).replace("\n", " ")[:500])
