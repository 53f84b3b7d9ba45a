"""The ``napari-brainatlas`` console script.

One module per subcommand group; each adds its subcommands with ``add_parser(sub)``
(``set_defaults(func=run)``, ``run(args) -> int``) and only parses, calls one workflow
(:mod:`napari_brainatlas.workflows`) and prints. Every subcommand takes ``--help``;
usage errors and bad input end with one line on stderr and exit code 2 (see
:mod:`._common`). Workflows are imported when a subcommand runs, so ``--help`` is quick.
"""

from __future__ import annotations

import importlib
import sys

from ._common import PROG, Parser
from ._common import run as _run

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]

#: modules that add subcommands, in the order ``--help`` lists them
SUBCOMMAND_MODULES = (
    "napari_brainatlas.cli.info",
    "napari_brainatlas.cli.demo",
    "napari_brainatlas.cli.register",
    "napari_brainatlas.cli.ccf_export",
    "napari_brainatlas.cli.embed",
    "napari_brainatlas.cli.annotate",
    "napari_brainatlas.cli.ahba",
    "napari_brainatlas.cli.cellformer",
    "napari_brainatlas.cli.domains",
    "napari_brainatlas.cli.analyses",
)


def build_parser() -> Parser:
    """The console script's parser with every subcommand."""
    from .. import __version__

    p = Parser(
        prog=PROG,
        description="Spatial annotation of brain sections: read, embed, transfer, register.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in SUBCOMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (one line printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return _run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
