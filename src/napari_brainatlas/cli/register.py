"""``napari-brainatlas register`` and ``register-series``.

    napari-brainatlas register SECTION --atlas NAME|PATH [--ontology FILE]
        --plane coronal|sagittal (--position-um P | --auto-position)
        [--hemisphere left|right|both] --midline X1,Y1,X2,Y2 --out OUT.h5ad

    napari-brainatlas register QUERY.h5ad [QUERY2 ...] --atlas NAME|PATH [--ontology FILE]
        --plane coronal|sagittal --from-reference MODEL_DIR [--reference REF.h5ad ...]
        [--label-depth division|fine|layer|N] [--hemisphere ...] [--midline ...]
        [--position-um P] --out OUT.h5ad|FOLDER

With ``--from-reference`` (issue 22) no clicks are needed: the queries are mapped onto
the FuseMap model trained on registered reference sections (``--reference``, default the
``<section>.h5ad`` files ``embed`` wrote beside MODEL_DIR), CCF labels are transferred
to every cell (``obs['ccf_division_transfer']`` and ``obs['ccf_division_transfer_uncertainty']``,
with ``--label-depth`` also ``obs['ccf_<depth>_transfer']`` and its uncertainty,
written beside the CCF keys) and drive the placement: the midline is estimated and the
position scanned, then position and cutting angles searched with the labels.
``--midline`` and ``--position-um`` are optional there and kept as constraints when
given. Several queries (or a multi-section file) need an output folder: one
``<section>.h5ad`` each and ``summary.csv`` (confidence, plane, candidate positions;
doubtful sections first). One line per section is printed, least confident first.

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
from pathlib import Path

from .._errors import BrainAtlasInputError
from ._common import Progress, add_verbose

__all__ = ["add_parser", "parse_midline", "run", "run_from_reference", "run_series"]


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
    p.add_argument(
        "section",
        nargs="+",
        help="section file (.h5ad, .loom, .csv or a folder); several with --from-reference",
    )
    p.add_argument(
        "--atlas", required=True, help="'demo', a BrainGlobe atlas name, or an annotation .nrrd"
    )
    p.add_argument(
        "--ontology",
        default=None,
        help="structure tree .csv or structure graph .json (with an .nrrd)",
    )
    p.add_argument("--plane", required=True, choices=("coronal", "sagittal"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--position-um", type=float, help="AP (coronal) or ML (sagittal) position, um")
    g.add_argument(
        "--auto-position", action="store_true", help="estimate the position from the atlas"
    )
    p.add_argument("--hemisphere", default="both", choices=("both", "left", "right"))
    p.add_argument(
        "--midline",
        default=None,
        help="x1,y1,x2,y2: a dorsal then a ventral point on the midline (section um); "
        "for a hemisection, on the cut edge (optional with --from-reference: estimated)",
    )
    p.add_argument("--out", required=True, help="output .h5ad (or a folder, several sections)")
    r = p.add_argument_group("from a registered reference (no clicks)")
    r.add_argument(
        "--from-reference",
        default=None,
        metavar="MODEL_DIR",
        help="FuseMap model folder trained on registered reference sections: CCF labels "
        "transferred from them place the sections; --midline and --position-um optional",
    )
    r.add_argument(
        "--reference",
        nargs="+",
        default=None,
        metavar="REF.h5ad",
        help="the registered, embedded reference sections (default: the .h5ad files beside "
        "MODEL_DIR, as embed writes them)",
    )
    r.add_argument(
        "--label-depth",
        default="division",
        help="also transfer labels at this level: division (default: divisions only), fine, "
        "layer, field, nucleus, subdivision or an ontology depth N",
    )
    r.add_argument("--map-epochs", type=int, default=15, help="query-mapping epochs")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda (the query mapping)")
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
    if args.from_reference:
        return run_from_reference(args)
    if len(args.section) != 1:
        raise BrainAtlasInputError("register one section at a time (or use --from-reference)")
    if args.midline is None:
        raise BrainAtlasInputError("--midline is needed (or --from-reference, which estimates it)")
    if args.position_um is None and not args.auto_position:
        raise BrainAtlasInputError(
            "give --position-um or --auto-position (or --from-reference, which estimates it)"
        )
    if args.reference:
        raise BrainAtlasInputError("--reference goes with --from-reference")
    args.section = args.section[0]
    return _run_one(args)


def _run_one(args) -> int:
    from ..workflows import register as wf
    from ..workflows.outputs import check_distinct, check_output_file
    from ..workflows.sections import read_paths, select_section

    midline = parse_midline(args.midline)
    inputs = _read_files(args.section, args.atlas, args.ontology)
    out = check_output_file(args.out, ".h5ad", inputs)
    qn = check_output_file(args.quicknii, ".json", inputs) if args.quicknii else None
    if args.json:
        check_output_file(args.json, None, inputs)
    check_distinct(out, qn, args.json)
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
    paths = wf.write_registered(reg, out, record=args.json, inputs=inputs)
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


def _stage_text(done, total, info, elapsed_s) -> str:
    stage = info.get("stage", "")
    what = info.get("section") or info.get("labels") or ""
    return f"register from reference: {stage} {done}/{total} {what}".rstrip()


def run_from_reference(args) -> int:
    """``register --from-reference``: no clicks (see the module docstring)."""
    from ..workflows import register as wf
    from ..workflows.outputs import check_output_file, check_output_folder
    from ..workflows.register_reference import register_from_reference, write_from_reference
    from ..workflows.sections import read_paths, select_section

    if args.quicknii or args.json:
        raise BrainAtlasInputError(
            "--quicknii and --json go with one section without --from-reference"
        )
    out = Path(args.out)
    inputs = _read_files(*args.section, *(args.reference or []), args.atlas, args.ontology)
    inputs.append(args.from_reference)  # the model folder and the reference beside it
    if out.suffix.lower() == ".h5ad":
        check_output_file(out, ".h5ad", inputs)
    else:
        check_output_folder(out, inputs)
    atlas = wf.load_atlas(args.atlas, args.ontology)
    sections = read_paths(args.section, args.pixel_size)
    if args.section_name:
        sections = [select_section(sections, args.section_name, source=", ".join(args.section))]
    if out.suffix.lower() == ".h5ad" and len(sections) != 1:
        raise BrainAtlasInputError(
            f"{len(sections)} sections need an output folder, not one .h5ad file"
        )
    opts = {
        "plane": args.plane,
        "hemisphere": args.hemisphere,
        "plane_search": args.plane_search or "joint",
        "nonlinear": bool(args.nonlinear),
        "mirrored": {"auto": None, "yes": True, "no": False}[args.mirrored or "auto"],
    }
    if args.midline is not None:
        opts["midline"] = parse_midline(args.midline)
    if args.position_um is not None:
        opts["position_um"] = args.position_um
    with Progress(text=_stage_text, verbose=args.verbose, quiet=args.quiet) as bar:
        res = register_from_reference(
            sections,
            atlas,
            args.from_reference,
            reference=args.reference,
            label_depth=args.label_depth,
            map_epochs=args.map_epochs,
            device=args.device,
            progress=bar,
            **opts,
        )
    paths = write_from_reference(res, out, inputs=inputs)
    for line in res.summary():
        print(line)
    print(f"wrote {len(paths)} file(s) to {out}")
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if res.doubtful():
        print(f"check: {', '.join(res.doubtful())}", file=sys.stderr)
    return 0 if res.registered else 2


def _read_files(*paths) -> list:
    """The paths a run reads (an atlas given by name is no file)."""
    from pathlib import Path

    return [p for p in paths if p is not None and Path(p).exists()]


def run_series(args) -> int:
    from ..workflows import register as wf
    from ..workflows.outputs import check_output_file
    from ..workflows.sections import read_paths

    inputs = _read_files(*args.sections, args.atlas, args.ontology)
    if args.out:
        check_output_file(args.out, None, inputs)
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
        print(f"wrote {wf.write_series(placement, args.out, inputs=inputs)}")
    return 0
