"""The one progress and cancel protocol every engine, workflow, CLI and dock shares.

* ``progress(done, total, info)``: called by an engine after each unit of work (an
  epoch, an ICP iteration, a section, a plane ...). ``done`` counts units finished
  (1-based), ``total`` is the number expected (None when unknown), ``info`` a dict of
  plain values about the unit (``{"phase": "pretrain", "loss": 0.41}``,
  ``{"cost_um": 12.5, "stage": "icp"}``; may carry ``"message"``: one line for a status
  bar, and ``"stopped"``: why training ended before its last epoch, a sentence from
  :func:`napari_brainatlas.models.early_stop_text` that docks and the CLI show). Engines
  call it from whatever thread they run in: a dock hands it a callable that only posts
  to the GUI thread.
* ``cancel()``: polled by the engine between units; when it returns True the engine
  raises :class:`~napari_brainatlas.Cancelled` (never returns half a result silently).

>>> report(progress, 3, 15, phase="final", loss=0.2)   # no-op when progress is None
>>> check_cancel(cancel)                                # raises Cancelled when asked
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import Cancelled

__all__ = ["CancelFn", "Cancelled", "ProgressFn", "check_cancel", "report"]

#: ``progress(done, total, info)``
ProgressFn = Callable[[int, "int | None", dict], Any]
#: ``cancel() -> bool``
CancelFn = Callable[[], bool]


def report(progress: ProgressFn | None, done: int, total: int | None, **info) -> None:
    """Call ``progress(done, total, info)`` when a callback was given."""
    if progress is not None:
        progress(int(done), None if total is None else int(total), info)


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise :class:`Cancelled` when ``cancel()`` says so (no-op without a callable)."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled")
