"""The shared base of every dock: a status line, a progress bar, Run / Cancel and jobs.

A *job* is a plain function ``fn(*args, progress=, cancel=, **kwargs)`` run in a napari
``thread_worker``, with the one protocol of :mod:`napari_brainatlas.jobs`:

* ``progress(done, total, info)`` is called by the job in the worker thread; it only
  emits a Qt signal, so the bar, the status line and the dock's ``on_progress`` run in
  the GUI thread (in the order the job reported, before ``on_done``);
* ``cancel()`` is the ``is_set`` of a :class:`threading.Event` that Cancel sets; the
  engine polls it and raises :class:`~napari_brainatlas.Cancelled`.

How a job ends, shown once:

* it returns: ``on_done(value)`` runs in the GUI thread (the only place a dock changes
  layers with what the job computed);
* :class:`~napari_brainatlas.Cancelled`: a quiet status "<what> cancelled" (no
  notification);
* :class:`~napari_brainatlas.BrainAtlasInputError`: its sentence as one napari
  notification (and in the status line);
* any other exception: one notification of one line, the traceback to the
  ``napari_brainatlas.widgets`` logger.

Workers never touch layers, and read no AnnData a layer holds: a dock passes
:func:`snapshot` copies.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QObject, QThread, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from .._errors import BrainAtlasInputError, Cancelled
from ._notify import one_line, show_error

__all__ = ["DockBase", "JobProgressBar", "format_duration", "snapshot"]

log = logging.getLogger("napari_brainatlas.widgets")


# ---------------------------------------------------------------------- snapshots
def snapshot(adata, *, with_x: bool = True):
    """A copy of ``adata`` for a worker to read (the layer keeps its own object).

    ``with_x=False``: cells only (obs, obsm, uns; no genes) - cheap, for jobs that read
    positions and labels (registration). A backed section is read into memory for
    ``with_x=True``.
    """
    from anndata import AnnData

    if not with_x:
        return AnnData(
            obs=adata.obs.copy(),
            obsm={k: np.array(v, copy=True) for k, v in adata.obsm.items()},
            uns=copy.deepcopy(dict(adata.uns)),
        )
    if getattr(adata, "isbacked", False):
        return adata.to_memory()
    return adata.copy()


# ---------------------------------------------------------------------- progress bar
def format_duration(seconds: float) -> str:
    """``0.12 s``, ``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    s = max(float(seconds), 0.0)
    if s < 10:
        return f"{s:.2g} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60:02d} min"


class JobProgressBar(QProgressBar):
    """A progress bar whose text is ``done/total unit · time per unit · ETA``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._t0 = time.monotonic()
        self._unit = ""
        self._what = ""
        self.setRange(0, 1)
        self.setValue(0)
        self.setFormat("")
        self.setTextVisible(True)

    def begin(self, total: int | None = None, unit: str = "", what: str = "") -> None:
        """A new job: the clock starts; unknown ``total`` shows a busy bar."""
        self._t0 = time.monotonic()
        self._unit = unit
        self._what = what
        if total:
            self.setRange(0, int(total))
        else:
            self.setRange(0, 0)  # busy indicator until the first report
        self.setValue(0)
        self.setFormat("starting ...")

    def report(self, done: int, total: int | None) -> str:
        """Show ``done`` of ``total`` units; returns the text shown."""
        done = max(int(done), 0)
        if total is None or total <= 0:
            total = max(self.maximum(), done, 1)
        total = max(int(total), done)
        if self.maximum() != total or self.minimum() != 0:
            self.setRange(0, total)
        self.setValue(done)
        text = self.describe(done, total, time.monotonic() - self._t0)
        self.setFormat(text)
        self.setToolTip(text)
        return text

    def describe(self, done: int, total: int, elapsed: float) -> str:
        """``3/15 epochs · 1.2 s/epoch · ETA 14 s`` (percent: ``45 % · ETA 6.6 s``)."""
        if self._unit == "%":
            text = f"{round(100 * done / max(total, 1))} %"
            if 0 < done < total:
                text += f" · ETA {format_duration(elapsed / done * (total - done))}"
            return text
        unit = f" {self._unit}" if self._unit else ""
        text = f"{done}/{total}{unit}"
        if done > 0:
            per = elapsed / done
            name = self._unit.rstrip("s") if self._unit else "unit"
            text += f" · {format_duration(per)}/{name}"
            if total > done:
                text += f" · ETA {format_duration(per * (total - done))}"
            else:
                text += f" · {format_duration(elapsed)}"
        return text

    def finish(self) -> None:
        """The job returned: the bar full."""
        top = max(self.maximum(), 1)
        if self.minimum() != 0 or self.maximum() != top:
            self.setRange(0, top)
        self.setValue(top)
        elapsed = time.monotonic() - self._t0
        unit = f" {self._unit}" if self._unit else ""
        if self._unit == "%":
            text = f"100 % · {format_duration(elapsed)}"
        elif self._unit:
            text = f"{top}/{top}{unit} · {format_duration(elapsed)}"
        else:
            text = f"{self._what or 'job'} done · {format_duration(elapsed)}"
        self.setFormat(text)

    def halt(self, text: str) -> None:
        """The job ended early (cancelled, failed): the bar stays where it was."""
        if self.maximum() == 0:
            self.setRange(0, 1)
        self.setFormat(text)


# ---------------------------------------------------------------------- jobs
@dataclass
class _Outcome:
    kind: str  # "done" | "cancelled" | "input" | "error"
    value: object = None
    message: str = ""
    trace: str = ""


def _call(fn, args, kwargs, progress, cancel, input_prefix, error_prefix):
    """Worker thread: run the job; every ending comes back as a value (never raised
    into Qt, which would add a second, traceback-laden notification)."""
    try:
        return _Outcome("done", fn(*args, progress=progress, cancel=cancel, **kwargs))
    except Cancelled:
        return _Outcome("cancelled")
    except Exception as exc:  # noqa: BLE001 - one notification, the traceback logged
        return _failure(exc, input_prefix, error_prefix)


def _failure(exc: BaseException, input_prefix: str, error_prefix: str) -> _Outcome:
    if isinstance(exc, BrainAtlasInputError):
        return _Outcome("input", message=f"{input_prefix}{one_line(exc)}")
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _Outcome("error", message=one_line(exc, error_prefix), trace=trace)


@dataclass(eq=False)
class Job:
    """One running job of a dock (what the GUI thread knows of it)."""

    what: str
    on_done: Callable | None = None
    on_progress: Callable | None = None
    total: int | None = None
    show_progress: bool = True
    event: threading.Event = field(default_factory=threading.Event)
    on_end: Callable | None = None
    worker: object = None
    ended: bool = False
    prefixes: tuple = ("", "")

    def cancelled(self) -> bool:
        return self.event.is_set()


class _Bridge(QObject):
    """Carries ``progress`` calls from worker threads to the GUI thread."""

    progressed = Signal(object, object, object, object)  # job, done, total, info


class DockBase(QWidget):
    """Base of the napari-brainatlas docks.

    Gives ``self.viewer``, ``self.status`` (a word-wrapped QLabel), ``self.progress``
    (:class:`JobProgressBar`), ``self.cancel_button``, :meth:`action_button` (buttons that
    are disabled while a job runs), :meth:`start_job`, :meth:`cancel`, :attr:`busy` and
    :meth:`wait_for_workers`. A subclass builds its own layout and places these in it.
    """

    #: ``(done, total, info)`` in the GUI thread after the bar was updated
    job_progress = Signal(int, object, object)
    #: ``(what, how)`` when a job ended: how is "done", "cancelled" or "failed"
    job_ended = Signal(str, str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._jobs: list[Job] = []
        self._run_buttons: list[QPushButton] = []
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._dock_progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progress = JobProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job after its current step")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)

    # ------------------------------------------------------------------ widgets
    def action_button(self, text: str, slot: Callable, tooltip: str = "") -> QPushButton:
        """A button that starts work: disabled while a job runs."""
        button = QPushButton(text)
        if tooltip:
            button.setToolTip(tooltip)
        button.clicked.connect(lambda *_: slot())
        self._run_buttons.append(button)
        return button

    def idle_only(self, *widgets) -> None:
        """Disable ``widgets`` too while a job runs."""
        self._run_buttons.extend(widgets)

    def run_row(self, *buttons, cancel: bool = True) -> QHBoxLayout:
        """A row with ``buttons`` and (by default) Cancel."""
        row = QHBoxLayout()
        for b in buttons:
            row.addWidget(b)
        if cancel:
            row.addWidget(self.cancel_button)
        return row

    def set_status(self, text: str) -> None:
        self.status.setText(str(text))

    def fail(self, message: str) -> None:
        """Bad input found in the GUI thread: the status line and one notification."""
        self.set_status(message)
        show_error(message)

    # ------------------------------------------------------------------ jobs
    @property
    def busy(self) -> bool:
        """True while a job of this dock runs."""
        return bool(self._jobs)

    def start_job(
        self,
        fn: Callable,
        *args,
        on_done: Callable | None = None,
        on_progress: Callable | None = None,
        on_end: Callable | None = None,
        what: str = "job",
        total: int | None = None,
        unit: str = "",
        error_prefix: str | None = None,
        show_progress: bool = True,
        **kwargs,
    ):
        """Run ``fn(*args, progress=, cancel=, **kwargs)`` in a worker thread.

        ``on_done(value)`` and ``on_progress(done, total, info)`` run in the GUI thread;
        so does ``on_end()``, once the worker ended whatever the outcome.
        ``what`` names the job in the status line; ``total`` / ``unit`` describe the
        progress before the job's first report (``total`` is used while the job reports
        ``None``); ``error_prefix`` starts the message of an unexpected error (default
        ``"<what> failed: "``; an input error is shown as its own sentence);
        ``show_progress=False`` leaves the bar to other jobs (quick jobs). Returns the
        worker (already started).
        """
        from napari.qt.threading import thread_worker

        job = Job(what, on_done, on_progress, total, show_progress, on_end=on_end)
        job.prefixes = ("", f"{what} failed: " if error_prefix is None else error_prefix)
        bridge = self._bridge

        def progress(done, total=None, info=None):
            if not isinstance(info, dict):
                info = {} if info is None else {"value": info}
            try:
                bridge.progressed.emit(job, done, total, info)
            except RuntimeError:  # the dock was closed: nobody to tell
                pass

        worker = thread_worker(_call, start_thread=False, ignore_errors=True)(
            fn, args, kwargs, progress, job.event.is_set, *job.prefixes
        )
        worker.returned.connect(lambda out, j=job: self._dock_returned(j, out))
        worker.errored.connect(
            lambda exc, j=job: self._dock_returned(j, _failure(exc, *j.prefixes))
        )
        worker.finished.connect(lambda j=job: self._dock_finished(j))
        job.worker = worker
        self._jobs.append(job)
        if show_progress:
            self.progress.begin(total, unit, what)
        self._dock_sync_buttons()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask every running job to stop at its next step."""
        running = [j for j in self._jobs if not j.ended]
        for job in running:
            job.event.set()
        if running:
            self.set_status("cancelling ...")

    def wait_for_workers(self, msecs: int = 60000) -> bool:
        """Process Qt events until every job ended (``on_done`` ran) or ``msecs`` passed
        (scripts and tests). Returns True when none is left running."""
        timer = QElapsedTimer()
        timer.start()
        while self._jobs and timer.elapsed() < msecs:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            if self._jobs:
                QThread.msleep(5)
        return not self._jobs

    # ------------------------------------------------------------------ GUI-thread ends
    def _dock_progress(self, job: Job, done, total, info) -> None:
        if job.ended or job not in self._jobs:
            return
        total = job.total if total is None else total
        if job.show_progress:
            self.progress.report(done, total)
        message = info.get("message") if isinstance(info, dict) else None
        if message:
            self.set_status(str(message))
        if job.on_progress is not None:
            job.on_progress(done, total, info)
        self.job_progress.emit(int(done), total, info)

    def _dock_returned(self, job: Job, out: _Outcome) -> None:
        if job.ended:
            return
        job.ended = True
        if out.kind == "done":
            if job.show_progress:
                if job.cancelled():  # an engine that stops early and returns
                    self.progress.halt("cancelled")
                else:
                    self.progress.finish()
            try:
                if job.on_done is not None:
                    job.on_done(out.value)
            except Exception as exc:  # noqa: BLE001 - same handling as in the worker
                out = _failure(exc, *job.prefixes)
            else:
                self.job_ended.emit(job.what, "done")
                return
        if out.kind == "cancelled":
            self.set_status(f"{job.what} cancelled")
            if job.show_progress:
                self.progress.halt("cancelled")
            self.job_ended.emit(job.what, "cancelled")
            return
        if out.trace:
            log.error("%s\n%s", out.message, out.trace)
        if job.show_progress:
            self.progress.halt("failed")
        self.fail(out.message)
        self.job_ended.emit(job.what, "failed")

    def _dock_finished(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        self._dock_sync_buttons()
        if job.on_end is not None:
            job.on_end()

    def _dock_sync_buttons(self) -> None:
        idle = not self._jobs
        for w in self._run_buttons:
            w.setEnabled(idle)
        self.cancel_button.setEnabled(not idle)
