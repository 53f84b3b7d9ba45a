"""``napari-brainatlas info FILE...``: sections, cells, genes, where coordinates came from."""

from __future__ import annotations

from ._common import add_genes_option

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    q = sub.add_parser("info", help="what a file holds: sections, cells, genes, coordinates")
    q.add_argument(
        "files", nargs="+", help=".h5ad, .loom, .csv, a folder of csv files or a SpatialData .zarr"
    )
    q.add_argument("--pixel-size", type=float, default=None, help="um per coordinate unit")
    q.add_argument("--section-key", default=None, help="obs column splitting sections")
    add_genes_option(q)
    q.set_defaults(func=run)


def run(args) -> int:
    from ..workflows.sections import describe_file

    for path in args.files:
        info = describe_file(
            path, args.pixel_size, section_key=args.section_key, genes=args.genes_from_columns
        )
        for line in info.lines():
            print(line)
    return 0
