"""The ``napari-brainatlas`` console script: one subcommand per dock widget.

Every subcommand takes ``--help``; bad input ends with one line on stderr and exit code 2.
Engine packages contribute subcommands through a module-level ``add_parser(subparsers)``
that calls ``set_defaults(func=run)`` with ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ._errors import BrainAtlasInputError

#: modules that add subcommands (skipped quietly if their optional engine is absent)
SUBCOMMAND_MODULES = (
    "napari_brainatlas.register.cli",
    "napari_brainatlas.fusemap.cli",
    "napari_brainatlas.annotate.cli",
    "napari_brainatlas.ahba.cli",
    "napari_brainatlas.cellformer.cli",
    "napari_brainatlas.domains.cli",
)


def _cmd_info(args) -> int:
    from .io import read_sections

    total = 0
    for path in args.files:
        secs = read_sections(path, pixel_size_um=args.pixel_size, section_key=args.section_key)
        meta = secs[0].uns["napari_brainatlas"]
        print(
            f"{path}: {len(secs)} section(s), format {meta['format']}, coordinates from "
            f"{meta['coords_from']} x {meta['pixel_size_um']:g} um"
        )
        for s in secs:
            m = s.uns["napari_brainatlas"]
            xy = s.obsm["spatial"]
            ext = xy.max(0) - xy.min(0)
            labels = [
                c for c in s.obs.columns if str(s.obs[c].dtype) == "category" and c != "section"
            ]
            print(
                f"  {m['section']}: {s.n_obs} cells x {s.n_vars} genes, extent "
                f"{ext[0]:.0f} x {ext[1]:.0f} um, counts={'counts' in s.layers}, "
                f"labels: {', '.join(labels) or '-'}"
            )
            total += s.n_obs
    return 0


def _cmd_demo_data(args) -> int:
    from .demo import write_demo_data

    files = write_demo_data(
        args.out, seed=args.seed, n_sections=args.n_sections, cells_per_mm2=args.cells_per_mm2
    )
    for p in files["sections"]:
        print(f"section  {p}")
    print(f"atlas    {files['annotation']}")
    print(f"ontology {files['ontology']}")
    return 0


def _cmd_demo(args) -> int:
    from .pipeline import display_available, run_demo_pipeline

    if args.headless or not display_available():
        if not args.headless:
            print("no display found: running the demo headless", file=sys.stderr)
        out = run_demo_pipeline(args.out, seed=args.seed, log=print)
        print(f"results in {out}")
        return 0
    from .widgets.launch import launch_demo_viewer

    launch_demo_viewer(seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-brainatlas",
        description="Spatial annotation of brain sections: read, embed, transfer, register.",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"napari-brainatlas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    q = sub.add_parser("info", help="what a file holds: sections, cells, genes, coordinates")
    q.add_argument(
        "files", nargs="+", help=".h5ad, .loom, .csv, a folder of csv files or a SpatialData .zarr"
    )
    q.add_argument("--pixel-size", type=float, default=None, help="um per coordinate unit")
    q.add_argument("--section-key", default=None, help="obs column splitting sections")
    q.set_defaults(func=_cmd_info)

    q = sub.add_parser("demo", help="run the main job on the built-in demo")
    q.add_argument(
        "--headless",
        action="store_true",
        help="no window: run the pipeline and write results + QC picture",
    )
    q.add_argument("--out", type=Path, default=Path("demo_out"), help="results folder")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_demo)

    q = sub.add_parser("demo-data", help="write the demo atlas and demo sections as files")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n-sections", type=int, default=4)
    q.add_argument("--cells-per-mm2", type=float, default=400.0)
    q.set_defaults(func=_cmd_demo_data)

    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue  # that engine is not part of this build
            raise
        m.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrainAtlasInputError as exc:
        print(f"napari-brainatlas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-brainatlas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
