"""``napari-brainatlas embed``: train FuseMap on sections and write the embeddings.

    napari-brainatlas embed INPUT... --out DIR [--epochs N] [--device auto|cpu|cuda]
                                     [--seed S] [--threads T]

Writes ``DIR/model/`` (the model folder, see :meth:`FuseMap.save`) and one
``DIR/<section>.h5ad`` per section holding ``obsm['X_fusemap_cell']`` and
``obsm['X_fusemap_tissue']``, and ends with a one-line quality summary on stderr (per
section: mixing and reconstruction R^2, :func:`~napari_brainatlas.workflows.embed.
quality_line`). Input files are only read. Cells FuseMap cannot embed (no counts at
the default ``min_cell_counts``) are kept with zero rows and
``obs['fusemap_low_counts']``; a ``note:`` line says how many per section. ``--out``
is checked before training (see :mod:`napari_brainatlas.workflows.outputs`). Under
torchrun (``WORLD_SIZE`` > 1) every rank trains its shard and rank 0 writes the results.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import Progress, add_genes_option, add_verbose, torch_threads

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="FuseMap: cell, tissue and gene embeddings of sections",
        description="Train FuseMap on the sections of the input files and write the model "
        "folder and an embedded .h5ad per section into --out.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".h5ad, .loom, .csv or a folder of csv files (one or more sections each)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum epochs per training phase (default: FuseMapSettings.epochs)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when available, else CPU",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--pixel-size", type=float, default=None, help="um per coordinate unit")
    p.add_argument("--section-key", default=None, help="obs column splitting sections")
    add_genes_option(p)
    add_verbose(p)
    p.set_defaults(func=run)


def bar_text(tag: str, width: int = 30):
    """``tag [#####.....] epoch/total phase recon val seconds`` for a Progress."""

    def text(done, total, info, elapsed_s):
        frac = min(done / max(total or 1, 1), 1.0)
        fill = round(frac * width)
        return (
            f"{tag} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} "
            f"{info.get('phase', '')} recon {info.get('recon', float('nan')):.4f} "
            f"val {info.get('val_loss', float('nan')):.4f} {elapsed_s:.0f}s"
        )

    return text


def run(args) -> int:
    from ..workflows import embed as wf
    from ..workflows.outputs import check_output_folder, check_run_folder
    from ..workflows.sections import read_paths, section_names

    out = check_output_folder(args.out, args.inputs)
    sections = read_paths(
        args.inputs,
        args.pixel_size,
        section_key=args.section_key,
        genes=args.genes_from_columns,
    )
    check_run_folder(out, section_names(sections), args.inputs)
    with torch_threads(args.threads), Progress(text=bar_text("embed"), verbose=args.verbose) as bar:
        result = wf.embed_sections(
            sections, epochs=args.epochs, device=args.device, seed=args.seed, progress=bar
        )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in wf.write_embedding(result, out, inputs=args.inputs):
        print(f"wrote {path}", file=sys.stderr)
    if result.is_main:
        print(f"model folder {out / 'model'}", file=sys.stderr)
        print(wf.quality_line(result), file=sys.stderr)
    return 0
