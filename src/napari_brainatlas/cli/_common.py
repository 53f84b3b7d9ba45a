"""What every subcommand shares: the parser class, error handling, progress printing.

* :class:`Parser` - an ``argparse.ArgumentParser`` whose usage errors are ONE line on
  stderr (``napari-brainatlas register: error: ... (see --help)``) and exit code 2.
* :func:`run` - calls a subcommand's ``run(args)``: a
  :class:`~napari_brainatlas.BrainAtlasInputError` becomes one line on stderr and exit
  code 2; a cancel or Ctrl-C one line and exit code 130.
* :class:`Progress` - a ``progress(done, total, info)`` callable for the workflows: one
  updating line on a terminal; elsewhere (a log, a pipe) a line at the end of a run of
  known length and at most one line every ``every_s`` seconds; every unit on a line with
  ``--verbose``. A report with ``done == 0`` and ``info['message']`` (a header) is always
  printed as a line, once the first unit is done or the run ends well (a run that fails
  before its first unit prints its one error line only), and so is ``info['stopped']``
  (why early stopping ended a training).
* :func:`torch_threads` - ``--threads``: torch's CPU threads for the duration of a run.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager

from .._errors import BrainAtlasInputError, Cancelled

__all__ = [
    "PROG",
    "Parser",
    "Progress",
    "add_genes_option",
    "add_verbose",
    "check_common_options",
    "run",
    "torch_threads",
]

PROG = "napari-brainatlas"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2 (subparsers inherit the class)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def add_verbose(parser) -> None:
    parser.add_argument("--verbose", action="store_true", help="print a line per iteration / epoch")


def add_genes_option(parser) -> None:
    """``--genes-from-columns [COLS]``: which numeric columns of a csv / tsv cell table are
    genes (no value: all of them but per-cell measures such as Z or area)."""
    parser.add_argument(
        "--genes-from-columns",
        nargs="?",
        const="all",
        default=None,
        metavar="COLS",
        help="csv / tsv cell tables: read numeric columns as genes (all; A,B,C; or a block "
        "FIRST:LAST). Default: they stay cell values (obs) and genes come only from a "
        "counts table in the same folder",
    )


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_common_options(args) -> None:
    """The options several subcommands share, checked before anything is read:
    ``--threads`` at least 1, ``--epochs`` not negative, ``--device`` a known device."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise BrainAtlasInputError(f"--threads must be at least 1, not {threads}")
    epochs = getattr(args, "epochs", None)
    if isinstance(epochs, int) and epochs < 0:
        raise BrainAtlasInputError(f"--epochs must be 0 or more, not {epochs}")
    device = getattr(args, "device", None)
    if device is not None and not _DEVICE.match(str(device)):
        raise BrainAtlasInputError(f"unknown --device {device!r} (use auto, cpu or cuda)")


def _terminate(signum, frame):  # SIGTERM ends a run as Ctrl-C does: temporary files go
    raise KeyboardInterrupt


def run(args) -> int:
    """Run ``args.func(args)``; one line on stderr and an exit code for what went wrong.

    Warnings of the libraries (anndata's name warnings, ...) are held back: a run that
    fails prints its one error line only; a run that succeeds prints each distinct
    warning as one ``warning:`` line at the end. SIGTERM is handled like Ctrl-C, so the
    atomic writers remove their temporary files.
    """
    name = f"{PROG} {getattr(args, 'command', '')}".strip()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings(record=True) as caught:
            check_common_options(args)
            code = int(args.func(args) or 0)
        shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
        for text in dict.fromkeys(" ".join(str(w.message).split())[:300] for w in shown):
            print(f"{name}: warning: {text}", file=sys.stderr)
        return code
    except BrainAtlasInputError as exc:
        print(f"{name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"{name}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _default_text(label: str, done: int, total, info: dict) -> str:
    count = f"{done}/{total}" if total else f"{done}"
    values = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in info.items()
        if k not in ("message", "stopped") and isinstance(v, (int, float, str))
    )
    msg = info.get("message", "")
    return " ".join(x for x in (label, count, values, msg) if x)


class Progress:
    """``progress(done, total, info)`` printed as a line (see the module docstring).

    ``text(done, total, info, elapsed_s) -> str`` formats a unit (default: label,
    count, values);
    ``stream``: a callable returning the stream (default stderr, looked up at each call
    so test captures see it).
    """

    def __init__(
        self,
        label: str = "",
        *,
        text: Callable | None = None,
        verbose: bool = False,
        quiet: bool = False,
        stream: Callable | None = None,
        every_s: float = 30.0,
    ):
        self.label = label
        self.text = text or (lambda d, t, i, _s: _default_text(label, d, t, i))
        self.verbose = verbose
        self.quiet = quiet
        self._stream = stream or (lambda: sys.stderr)
        self.every_s = float(every_s)
        self.t0 = self._last = time.monotonic()
        self._pending: str | None = None  # last unit not printed
        self._open = False  # an updating line is on the terminal
        self._headers: list[str] = []  # held until the first unit (or a good end)

    @property
    def stream(self):
        return self._stream()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _line(self, text: str) -> None:
        s = self.stream
        if self._open:
            s.write("\n")
            self._open = False
        s.write(text + "\n")
        s.flush()
        self._last = time.monotonic()
        self._pending = None

    def _draw(self, text: str) -> None:
        s = self.stream
        s.write("\r" + text + "\x1b[K")
        s.flush()
        self._open, self._last, self._pending = True, time.monotonic(), None

    def __call__(self, done: int, total, info: dict | None = None) -> None:
        info = dict(info or {})
        if done == 0 and info.get("message"):
            self._headers.append(str(info["message"]))
            return
        self._flush_headers()
        if self.quiet:
            return
        text = self.text(done, total, info, self.elapsed())
        now = time.monotonic()
        if self.verbose:
            self._line(text)
        elif self._tty():
            if now - self._last >= 0.1 or (total and done >= total):
                self._draw(text)
            else:
                self._pending = text
        elif (total and done >= total) or now - self._last >= self.every_s:
            self._line(text)
        else:
            self._pending = text if total else None
        if info.get("stopped"):  # early stopping ended a training phase: say why
            if self._pending:
                self._line(self._pending)
            self._line(str(info["stopped"]))

    def _flush_headers(self) -> None:
        headers, self._headers = self._headers, []
        for h in headers:
            self._line(h)

    def close(self) -> None:
        """End the updating line; off a terminal, print the last unit of a run of known
        length that stopped early (not yet printed)."""
        self._flush_headers()
        if self._pending and self._tty():
            self._draw(self._pending)
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
        elif self._pending:
            self._line(self._pending)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the error line is all the user sees
            self._headers.clear()
            self._pending = None
        self.close()


@contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch CPU threads inside the block (nothing changes for None / 0)."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
