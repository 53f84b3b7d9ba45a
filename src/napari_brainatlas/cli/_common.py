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
  printed as a line.
* :func:`torch_threads` - ``--threads``: torch's CPU threads for the duration of a run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from .._errors import BrainAtlasInputError, Cancelled

__all__ = [
    "PROG",
    "Parser",
    "Progress",
    "add_genes_option",
    "add_verbose",
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


def run(args) -> int:
    """Run ``args.func(args)``; one line on stderr and an exit code for what went wrong."""
    name = f"{PROG} {getattr(args, 'command', '')}".strip()
    try:
        return int(args.func(args) or 0)
    except BrainAtlasInputError as exc:
        print(f"{name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"{name}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _default_text(label: str, done: int, total, info: dict) -> str:
    count = f"{done}/{total}" if total else f"{done}"
    values = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in info.items()
        if k != "message" and isinstance(v, (int, float, str))
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
            self._line(str(info["message"]))
            return
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

    def close(self) -> None:
        """End the updating line; off a terminal, print the last unit of a run of known
        length that stopped early (not yet printed)."""
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

    def __exit__(self, *exc) -> None:
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
