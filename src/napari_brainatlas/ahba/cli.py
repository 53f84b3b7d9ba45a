"""``napari-brainatlas ahba``: AHBA donors -> parcel x gene csv (abagen's defaults)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    q = subparsers.add_parser(
        "ahba",
        help="Allen Human Brain Atlas donors -> parcel x gene expression csv",
        description="Process AHBA microarray donors with abagen's defaults (probe "
        "re-annotation, intensity-based filtering 0.5, differential stability, matching "
        "within 2 mm, scaled robust sigmoid normalisation, mean over samples then donors).",
    )
    q.add_argument(
        "donors",
        nargs="*",
        type=Path,
        metavar="DONOR_DIR",
        help="AHBA donor folders (or folders holding them)",
    )
    q.add_argument(
        "--probes-reannotated",
        type=Path,
        required=True,
        metavar="FILE",
        help="abagen's probe re-annotation table (reannotated.csv.gz)",
    )
    q.add_argument(
        "--atlas",
        type=Path,
        required=True,
        metavar="NIFTI",
        help="parcellation label image in MNI space",
    )
    q.add_argument(
        "--atlas-info",
        type=Path,
        default=None,
        metavar="CSV",
        help="label table: id, label, hemisphere, structure",
    )
    q.add_argument(
        "--corrected-mni",
        type=Path,
        default=None,
        metavar="FILE",
        help="abagen's corrected_mni_coordinates.csv.gz (recommended)",
    )
    q.add_argument(
        "--out", type=Path, required=True, metavar="OUT.csv", help="parcel x gene table to write"
    )
    q.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="REPORT.json",
        help="also write what each step kept and dropped",
    )
    q.add_argument("--ibf-threshold", type=float, default=0.5)
    q.add_argument("--tolerance", type=float, default=2.0, help="mm (default 2)")
    q.add_argument(
        "--fetch",
        nargs="+",
        default=None,
        metavar="DONOR",
        help="download these donors first (ids, names or 'all')",
    )
    q.add_argument(
        "--data-dir",
        type=Path,
        default=Path("ahba-data"),
        help="where --fetch puts the donors (default ./ahba-data)",
    )
    q.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the Allen server (--fetch)"
    )
    q.set_defaults(func=run)


def run(args) -> int:
    from ..io.writers import atomic_write_text
    from .pipeline import process_ahba

    donors = list(args.donors)
    if args.fetch:
        from .fetch import fetch_ahba

        def show(donor, done, total):
            if total:
                print(
                    f"\rdonor {donor}: {done / 2**20:.0f} / {total / 2**20:.0f} MB",
                    end="",
                    file=sys.stderr,
                )

        donors += fetch_ahba(args.fetch, args.data_dir, timeout=args.timeout, progress=show)
        print(file=sys.stderr)
    if not donors:
        raise BrainAtlasInputError("give AHBA donor folders or --fetch DONOR")
    if args.out.suffix.lower() != ".csv":
        raise BrainAtlasInputError(f"--out must be a .csv file, not {args.out.name}")
    res = process_ahba(
        donors,
        args.atlas,
        args.probes_reannotated,
        atlas_info=args.atlas_info,
        corrected_mni=args.corrected_mni,
        ibf_threshold=args.ibf_threshold,
        tolerance=args.tolerance,
        progress=lambda m, f: print(f"[{f:4.0%}] {m}", file=sys.stderr),
    )
    table = res.expression.copy()
    names = res.parcellation.names() if res.parcellation is not None else {}
    table.insert(0, "region", [names.get(int(i), "") for i in table.index])
    atomic_write_text(table.to_csv(float_format="%.6g"), args.out)
    for r in res.report:
        print(r["text"])
    if args.report is not None:
        atomic_write_text(json.dumps(res.report, indent=1, default=str), args.report)
    print(f"{table.shape[0]} parcels x {table.shape[1] - 1} genes -> {args.out}")
    return 0
