"""``napari-brainatlas register`` and ``register-series``.

    napari-brainatlas register SECTION --atlas NAME|PATH [--ontology FILE]
        --plane coronal|sagittal (--position-um P | --auto-position)
        [--hemisphere left|right|both] --midline X1,Y1,X2,Y2 --out OUT.h5ad

Prints the plane found, the fit (iterations, final cost, scale, confidence) and the
metrics; writes the section with obsm['ccf_coords'], obs['ccf_id'], obs['ccf_acronym'] and
uns['ccf_registration'] to OUT.h5ad (atomically; the input is never touched), and with
``--quicknii SERIES.json`` the registration as a QuickNII / VisuAlign series.

    napari-brainatlas register-series SECTIONS... --first-um A --last-um B
        [--region-key region] [--order S1,S2,...] [--out POSITIONS.csv]

AP (or ML) placement of an ordered series of sections with region labels: the first and
last sections sit at the two given positions, the ones between follow the cumulative
cosine distance of the region composition of neighbouring sections. Prints one line per
section and writes section,position_um rows to a .csv.
"""

from __future__ import annotations

import sys

from .._errors import BrainAtlasInputError
from ._common import Progress, add_verbose

__all__ = ["add_parser", "parse_midline", "run", "run_series"]


def parse_midline(text: str):
    """ "x1,y1,x2,y2" -> [[x1, y1], [x2, y2]] (um)."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p != ""]
    bad = BrainAtlasInputError(f"--midline needs four numbers x1,y1,x2,y2, not {text!r}")
    if len(parts) != 4:
        raise bad
    try:
        v = [float(p) for p in parts]
    except ValueError:
        raise bad from None
    return [[v[0], v[1]], [v[2], v[3]]]


def _add_register(sub) -> None:
    p = sub.add_parser(
        "register",
        help="register a section to the Allen CCFv3 (or demo) atlas: CCF coordinates per cell",
        description="Register a section to the Allen CCFv3 (or the demo atlas).",
    )
    p.add_argument("section", help="section file (.h5ad, .loom, .csv or a folder)")
    p.add_argument(
        "--atlas", required=True, help="'demo', a BrainGlobe atlas name, or an annotation .nrrd"
    )
    p.add_argument(
        "--ontology",
        default=None,
        help="structure tree .csv or structure graph .json (with an .nrrd)",
    )
    p.add_argument("--plane", required=True, choices=("coronal", "sagittal"))
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--position-um", type=float, help="AP (coronal) or ML (sagittal) position, um")
    g.add_argument(
        "--auto-position", action="store_true", help="estimate the position from the atlas"
    )
    p.add_argument("--hemisphere", default="both", choices=("both", "left", "right"))
    p.add_argument(
        "--midline",
        required=True,
        help="x1,y1,x2,y2: a dorsal then a ventral point on the midline (section um); "
        "for a hemisection, on the cut edge",
    )
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--section-name", default=None, help="which section of a multi-section file")
    p.add_argument(
        "--pixel-size", type=float, default=None, help="um per coordinate unit of the input"
    )
    p.add_argument(
        "--refine-position",
        action="store_true",
        help="search the position (+-300 um) and, with region labels, the cutting angles",
    )
    p.add_argument(
        "--plane-search",
        default="joint",
        choices=("joint", "quick"),
        help="with --refine-position (or --auto-position) and region labels: 'joint' (default) "
        "searches the plane and the in-plane fit jointly; 'quick' alternates label "
        "proposals of the plane with label fits, several times faster and less accurate",
    )
    p.add_argument("--nonlinear", action="store_true", help="add a thin-plate spline refinement")
    p.add_argument("--mirrored", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--region-key", default="region", help="obs column with region labels (if any)")
    p.add_argument("--json", default=None, help="also save the registration record as JSON here")
    p.add_argument(
        "--quicknii",
        default=None,
        metavar="SERIES.json",
        help="also write the registration as a QuickNII / VisuAlign series file (and a PNG "
        "of the cells beside it) for QuickNII, VisuAlign or PyNutil",
    )
    p.add_argument("--quiet", action="store_true", help="print no progress")
    add_verbose(p)
    p.set_defaults(func=run)


def _add_series(sub) -> None:
    q = sub.add_parser(
        "register-series",
        help="place an ordered series of labelled sections between two known positions",
        description="AP (or ML) positions of an ordered series of sections from the cumulative "
        "cosine distance of the region composition of neighbouring sections, between "
        "a first and a last section at known positions.",
    )
    q.add_argument(
        "sections",
        nargs="+",
        help="section files in cutting order (or one multi-section file; see --order)",
    )
    q.add_argument(
        "--first-um", type=float, required=True, help="position of the first section, um"
    )
    q.add_argument("--last-um", type=float, required=True, help="position of the last section, um")
    q.add_argument("--region-key", default="region", help="obs column with the region labels")
    q.add_argument(
        "--order",
        default=None,
        help="comma-separated section names in cutting order (default: file order)",
    )
    q.add_argument(
        "--atlas",
        default=None,
        help="optional atlas ('demo', BrainGlobe name or .nrrd) to check the ends against",
    )
    q.add_argument(
        "--ontology", default=None, help="structure tree .csv or graph .json (with an .nrrd)"
    )
    q.add_argument(
        "--plane",
        default="coronal",
        choices=("coronal", "sagittal"),
        help="axis of the positions (with --atlas: checked against its extent)",
    )
    q.add_argument("--out", default=None, help="write section,position_um rows to this .csv")
    q.set_defaults(func=run_series)


def add_parser(sub) -> None:
    _add_register(sub)
    _add_series(sub)


def _iteration(done, total, info, elapsed_s) -> str:
    cost = info.get("cost_um")
    text = f"register: iteration {done:4d}"
    text += f"  cost {cost:10.3f} um" if isinstance(cost, (int, float)) else ""
    # the stage explains a jump in the cost: a new start, or the affine after the
    # similarity stage
    return text + (f"  ({info['fit_stage']})" if info.get("fit_stage") else "")


def run(args) -> int:
    from ..workflows import register as wf
    from ..workflows.outputs import check_output_file
    from ..workflows.sections import read_paths, select_section

    midline = parse_midline(args.midline)
    out = check_output_file(args.out, ".h5ad", [args.section])
    qn = check_output_file(args.quicknii, ".json", [args.section]) if args.quicknii else None
    atlas = wf.load_atlas(args.atlas, args.ontology)
    sections = read_paths([args.section], args.pixel_size)
    adata = select_section(sections, args.section_name, source=args.section)
    mirrored = {"auto": None, "yes": True, "no": False}[args.mirrored or "auto"]
    with Progress(text=_iteration, verbose=args.verbose, quiet=args.quiet) as bar:
        reg = wf.register_one(
            adata,
            atlas,
            region_key=args.region_key,
            progress=bar,
            plane=args.plane,
            position_um="auto" if args.auto_position else args.position_um,
            hemisphere=args.hemisphere,
            midline=midline,
            refine_position=bool(args.refine_position),
            plane_search=args.plane_search or "joint",
            nonlinear=bool(args.nonlinear),
            mirrored=mirrored,
        )
    paths = wf.write_registered(reg, out, record=args.json, inputs=[args.section])
    for line in reg.summary():
        print(line)
    print("wrote " + " and the record ".join(str(p) for p in paths))
    if qn is not None:
        from ..io.quicknii import write_quicknii

        xy = adata.obsm["spatial"][:, :2]
        print(f"wrote {write_quicknii(qn, [(reg.result, xy)], atlas)[0]} (QuickNII series)")
    if reg.warning():
        print(f"warning: {reg.warning()}", file=sys.stderr)
    return 0


def run_series(args) -> int:
    from ..workflows import register as wf
    from ..workflows.sections import read_paths

    placement = wf.place_series(
        read_paths(args.sections),
        first_um=args.first_um,
        last_um=args.last_um,
        region_key=args.region_key,
        order=args.order,
        atlas=args.atlas,
        ontology=args.ontology,
        plane=args.plane,
    )
    for line in placement.lines():
        print(line)
    if args.out:
        print(f"wrote {wf.write_series(placement, args.out)}")
    return 0
