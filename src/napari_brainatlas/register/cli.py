"""``napari-brainatlas register``: register a section to the Allen CCFv3 (or the demo atlas).

    napari-brainatlas register SECTION --atlas NAME|PATH [--ontology FILE]
        --plane coronal|sagittal (--position-um P | --auto-position)
        [--hemisphere left|right|both] --midline X1,Y1,X2,Y2 --out OUT.h5ad

Prints the cost per ICP iteration, the final metrics and the confidence; writes the
section with obsm['ccf_coords'], obs['ccf_id'], obs['ccf_acronym'] and
uns['ccf_registration'] to OUT.h5ad (atomically; the input is never touched).

    napari-brainatlas register-series SECTIONS... --first-um A --last-um B
        [--region-key region] [--order S1,S2,...] [--out POSITIONS.csv]

AP (or ML) placement of an ordered series of sections with region labels (method step
1): the first and last sections sit at the two given positions, the ones between
follow the cumulative cosine distance of the region composition of neighbouring
sections. Prints one line per section and writes section,position_um to a .csv.
"""

from __future__ import annotations

import sys

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "parse_midline", "run", "run_series"]


def parse_midline(text: str):
    """ "x1,y1,x2,y2" -> [[x1, y1], [x2, y2]] (um)."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p != ""]
    if len(parts) != 4:
        raise BrainAtlasInputError(f"--midline needs four numbers x1,y1,x2,y2, not {text!r}")
    try:
        v = [float(p) for p in parts]
    except ValueError:
        raise BrainAtlasInputError(
            f"--midline needs four numbers x1,y1,x2,y2, not {text!r}"
        ) from None
    return [[v[0], v[1]], [v[2], v[3]]]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "register",
        help="register a section to the Allen CCFv3 (or demo) atlas: CCF coordinates per cell",
        description=__doc__.split("\n\n")[0],
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
    p.add_argument("--quiet", action="store_true", help="do not print the per-iteration cost")
    p.set_defaults(func=run)

    q = subparsers.add_parser(
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


def run(args) -> int:
    from ..atlas import Atlas
    from ..io import read_sections, write_h5ad
    from .api import apply_registration, register_section

    midline = parse_midline(args.midline)
    if args.ontology is not None and str(args.atlas) == "demo":
        raise BrainAtlasInputError("--ontology goes with an .nrrd atlas, not with 'demo'")
    atlas = (
        Atlas.load(args.atlas, ontology=args.ontology) if args.ontology else Atlas.load(args.atlas)
    )
    sections = read_sections(args.section, pixel_size_um=getattr(args, "pixel_size", None))
    if not sections:
        raise BrainAtlasInputError(f"no sections in {args.section}")
    names = [
        str(s.uns.get("napari_brainatlas", {}).get("section", s.uns.get("section", i)))
        for i, s in enumerate(sections)
    ]
    want = getattr(args, "section_name", None)
    if want is not None:
        if want not in names:
            raise BrainAtlasInputError(
                f"no section {want!r} in {args.section} (it has {', '.join(names)})"
            )
        idx = names.index(want)
    elif len(sections) > 1:
        raise BrainAtlasInputError(
            f"{args.section} holds {len(sections)} sections; choose one with --section-name ({', '.join(names)})"
        )
    else:
        idx = 0
    adata, name = sections[idx], names[idx]
    quiet = getattr(args, "quiet", False)

    def progress(i, cost):
        if not quiet:
            print(f"iteration {i:4d}  cost {cost:10.3f} um", flush=True)

    mirrored = {"auto": None, "yes": True, "no": False}[getattr(args, "mirrored", "auto") or "auto"]
    region_key = getattr(args, "region_key", "region")
    res = register_section(
        adata,
        atlas,
        plane=args.plane,
        position_um="auto" if args.auto_position else args.position_um,
        hemisphere=args.hemisphere,
        midline=midline,
        refine_position=bool(getattr(args, "refine_position", False)),
        plane_search=getattr(args, "plane_search", "joint") or "joint",
        nonlinear=bool(getattr(args, "nonlinear", False)),
        mirrored=mirrored,
        region_key=region_key if region_key in adata.obs else None,
        section_name=name,
        progress=progress,
    )
    out = apply_registration(adata, res, atlas)
    path = write_h5ad(out, args.out)
    m = res.metrics
    print(
        f"section {name}: {res.plane} {res.position_um:.0f} um, hemisphere {res.hemisphere}, "
        f"angles {res.angles_deg[0]:.1f}/{res.angles_deg[1]:.1f} deg, mirrored {res.mirrored}"
    )
    print(
        f"converged {res.converged} after {res.iterations} iterations; final cost "
        f"{res.cost_history[-1]:.2f} um"
    )
    keys = [
        "boundary_median_um",
        "boundary_p95_um",
        "dice",
        "boundary_inlier_fraction",
        "label_agreement",
        "dice_divisions_mean",
        "anisotropy",
        "midline_angle_deg",
    ]
    print("metrics: " + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
    print(f"confidence {res.confidence:.3f}")
    if getattr(args, "json", None):
        from ..io import atomic_write_text

        atomic_write_text(res.to_json(), args.json)
        print(f"record  {args.json}")
    print(f"wrote {path}")
    if res.confidence < 0.5:
        print(
            "warning: low confidence; check the midline clicks, the hemisphere and the position",
            file=sys.stderr,
        )
    return 0


def _section_name(adata, default) -> str:
    return str(
        adata.uns.get("napari_brainatlas", {}).get("section", adata.uns.get("section", default))
    )


def run_series(args) -> int:
    """``napari-brainatlas register-series``: positions of an ordered labelled series."""
    import numpy as np

    from ..io import read_sections
    from .position import series_positions

    first, last = float(args.first_um), float(args.last_um)
    if not (np.isfinite(first) and np.isfinite(last)):
        raise BrainAtlasInputError("--first-um and --last-um must be finite numbers")
    if first == last:
        raise BrainAtlasInputError(
            "--first-um and --last-um must differ (the series spans a distance)"
        )
    if args.atlas is not None:
        from ..atlas import Atlas

        if args.ontology is not None and str(args.atlas) == "demo":
            raise BrainAtlasInputError("--ontology goes with an .nrrd atlas, not with 'demo'")
        atlas = (
            Atlas.load(args.atlas, ontology=args.ontology)
            if args.ontology
            else Atlas.load(args.atlas)
        )
        lo, hi = atlas.position_range_um(args.plane)
        for v in (first, last):
            if not (lo <= v < hi):
                raise BrainAtlasInputError(
                    f"{args.plane} position {v:.0f} um is outside the atlas ({lo:.0f} to {hi:.0f} um)"
                )
    sections, names = [], []
    for path in args.sections:
        got = read_sections(path)
        for i, a in enumerate(got):
            sections.append(a)
            from pathlib import Path

            stem = Path(path).stem
            names.append(_section_name(a, stem if len(got) == 1 else f"{stem}_{i}"))
    if len(set(names)) != len(names):
        raise BrainAtlasInputError(
            f"section names repeat ({', '.join(names)}); give distinct sections"
        )
    if args.order:
        want = [w.strip() for w in str(args.order).split(",") if w.strip()]
        missing = [w for w in want if w not in names]
        if missing:
            raise BrainAtlasInputError(
                f"--order names unknown sections: {', '.join(missing)} "
                f"(there are {', '.join(names)})"
            )
        if len(set(want)) != len(want):
            raise BrainAtlasInputError("--order names a section twice")
        idx = [names.index(w) for w in want]
        sections = [sections[i] for i in idx]
        names = want
    if len(sections) < 2:
        raise BrainAtlasInputError("an ordered series needs at least two sections")
    labels = []
    for a, nm in zip(sections, names):
        if args.region_key not in a.obs:
            raise BrainAtlasInputError(
                f"section {nm} has no obs[{args.region_key!r}] region labels"
            )
        lab = a.obs[args.region_key].astype(str).to_numpy()
        lab = lab[(lab != "") & (lab != "nan")]
        if len(lab) == 0:
            raise BrainAtlasInputError(
                f"section {nm} has no region labels in obs[{args.region_key!r}]"
            )
        labels.append(lab)
    pos = series_positions(labels, first, last)
    for nm, p in zip(names, pos):
        print(f"{nm}\t{p:.1f} um")
    if args.out:
        from ..io import atomic_write_text

        text = "section,position_um\n" + "".join(f"{nm},{p:.3f}\n" for nm, p in zip(names, pos))
        atomic_write_text(text, args.out)
        print(f"wrote {args.out}")
    return 0
