"""``napari-brainatlas export-ccf``: the per-cell CCF table of registered sections.

One row per registered cell (a finite ``obsm['ccf_coords']``) of every section of every
input, with the BrainGlobe ``asr`` axes (``ap/si/rl`` in um or atlas voxels) and/or the
Allen Brain Cell atlas columns ``x_ccf/y_ccf/z_ccf`` (mm), ``ccf_id``/``ccf_acronym``, and
``<stem>.json`` beside the table (orientation, units, atlas). The 3D atlas dock's Export
writes the same files (``workflows.export_ccf``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import Progress

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-ccf",
        help="per-cell CCF coordinates of registered sections (BrainGlobe / ABC atlas)",
        description="Write one row per registered cell of the sections: BrainGlobe asr "
        "axes (ap/si/rl, um or voxels) and/or the ABC atlas columns x_ccf/y_ccf/z_ccf (mm), "
        "with a .json beside it stating orientation, units and atlas.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="SECTION",
        help="registered sections (.h5ad with obsm['ccf_coords'])",
    )
    p.add_argument("--out", type=Path, required=True, help="the table: .csv, .csv.gz or .tsv")
    p.add_argument(
        "--format",
        choices=("both", "brainglobe", "abc"),
        default="both",
        help="brainglobe: ap/si/rl; abc: x_ccf/y_ccf/z_ccf (mm); both (default)",
    )
    p.add_argument(
        "--units",
        choices=("um", "voxel"),
        default="um",
        help="units of the BrainGlobe columns (voxel: of the atlas's resolution)",
    )
    p.add_argument(
        "--atlas",
        default=None,
        help="'demo', a BrainGlobe name or an annotation .nrrd (default: the atlas the "
        "sections were registered to; opened for --units voxel)",
    )
    p.add_argument(
        "--ontology", default=None, help="structure tree .csv / graph .json going with an .nrrd"
    )
    p.add_argument(
        "--obs",
        default="",
        help="more obs columns to copy, comma-separated (e.g. celltype,region_transfer)",
    )
    p.set_defaults(func=run)


def _text(done, total, info, elapsed_s) -> str:
    return f"export {done}/{total}: {info.get('message', '')} ({elapsed_s:.0f} s)"


def run(args) -> int:
    from .._errors import BrainAtlasInputError
    from ..workflows.ccf_export import check_export, export_ccf
    from ..workflows.register import load_atlas
    from ..workflows.sections import read_paths

    check_export(args.out, format=args.format, units=args.units, inputs=args.inputs)
    atlas = args.atlas
    if args.ontology and atlas is None:
        raise BrainAtlasInputError("--ontology goes with --atlas (an annotation .nrrd)")
    if atlas is not None and (args.ontology or args.units == "voxel"):
        atlas = load_atlas(atlas, args.ontology)
    sections = read_paths(args.inputs)
    extra = [c.strip() for c in args.obs.split(",") if c.strip()]
    with Progress(text=_text, stream=lambda: sys.stdout) as bar:
        cells = export_ccf(
            sections,
            args.out,
            format=args.format,
            units=args.units,
            atlas=atlas,
            extra_obs=extra,
            inputs=args.inputs,
            progress=bar,
        )
    for line in cells.lines():
        print(line)
    return 0
