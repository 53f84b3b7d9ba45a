"""``napari-brainatlas ahba``: AHBA donors -> parcel x gene csv (abagen's defaults)."""

from __future__ import annotations

from pathlib import Path

from .._errors import BrainAtlasInputError
from ._common import Progress, add_verbose

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    q = sub.add_parser(
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
    add_verbose(q)
    q.set_defaults(func=run)


def _download_text(done, total, info, elapsed_s) -> str:
    size = f"{done / 2**20:.0f} / {total / 2**20:.0f} MB" if total else f"{done / 2**20:.0f} MB"
    return f"donor {info.get('donor', '')}: {size}"


def _step_text(done, total, info, elapsed_s) -> str:
    return f"[{done:3d}%] {info.get('message', '')}"


def run(args) -> int:
    from ..workflows import ahba as wf
    from ..workflows.outputs import check_output_file

    donors = list(args.donors)
    if not donors and not args.fetch:
        raise BrainAtlasInputError("give AHBA donor folders or --fetch DONOR")
    out = check_output_file(args.out, ".csv")
    if args.fetch:
        with Progress(text=_download_text, verbose=args.verbose) as bar:
            donors += wf.fetch_donors(args.fetch, args.data_dir, timeout=args.timeout, progress=bar)
    with Progress(text=_step_text, verbose=args.verbose) as bar:
        result = wf.ahba_expression(
            donors,
            atlas=args.atlas,
            probes_reannotated=args.probes_reannotated,
            atlas_info=args.atlas_info,
            corrected_mni=args.corrected_mni,
            ibf_threshold=args.ibf_threshold,
            tolerance=args.tolerance,
            progress=bar,
        )
    wf.write_ahba(result, out, report_path=args.report)
    for line in result.lines():
        print(line)
    print(result.summary(where=str(out)))
    return 0
