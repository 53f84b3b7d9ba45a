"""``napari-brainatlas transfer`` and ``napari-brainatlas impute``.

    napari-brainatlas transfer --model DIR --query Q.h5ad [--reference REF.h5ad ...]
                               [--labels celltype,region] [--method mlp|knn]
                               [--epochs N] [--no-smooth] --out OUT.h5ad
    napari-brainatlas impute   --model DIR --data X.h5ad --genes A,B [--method auto|knn|decoder]
                               [--reference REF.h5ad ...] --out OUT.h5ad

A model folder (``FuseMap.save``) holds weights, genes and panels but no cells, so the
annotated reference comes from the embedded reference sections: ``--reference`` files
holding ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']`` and the label columns, one
section per model section in model order; by default the ``<section>.h5ad`` files that
``napari-brainatlas embed --out RUN`` wrote beside ``RUN/model``.

``transfer`` writes the query with ``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``,
``obs['<label>_transfer']`` and ``obs['<label>_transfer_uncertainty']`` (several query
sections are concatenated, with ``obs['section']``); ``impute`` writes one obs column
per gene, ``obs['imputed_<Gene>']``, spelled as the data spells the gene (see :mod:`napari_brainatlas.workflows.transfer`
and :mod:`napari_brainatlas.workflows.impute`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .._errors import BrainAtlasInputError
from ._common import Progress, add_genes_option, add_verbose, torch_threads

__all__ = ["add_parser", "parse_hierarchy", "run_impute", "run_transfer"]


def _common_options(p, epochs_help: str) -> None:
    p.add_argument("--epochs", type=int, default=15, help=epochs_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--pixel-size", type=float, default=None, help="um per coordinate unit")
    add_genes_option(p)
    p.add_argument("--out", type=Path, required=True, help="output .h5ad")
    add_verbose(p)


def _add_transfer(sub) -> None:
    p = sub.add_parser(
        "transfer",
        help="map query sections onto a FuseMap model and transfer labels",
        description="Map the query sections onto a trained FuseMap reference (frozen) and "
        "transfer label columns from the annotated reference sections.",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (embed --out/model)")
    p.add_argument(
        "--query",
        type=Path,
        nargs="+",
        required=True,
        help="query file(s): .h5ad, .loom, .csv or folder",
    )
    p.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        default=None,
        help="embedded, labelled reference .h5ad files, one per model section "
        "(default: <section>.h5ad beside the model folder)",
    )
    p.add_argument(
        "--labels",
        default="celltype,region",
        help="comma-separated label columns (default celltype,region)",
    )
    p.add_argument("--method", choices=["mlp", "knn"], default="mlp")
    p.add_argument(
        "--hierarchy",
        default="celltype:celltype_main",
        help="label:main pairs, comma-separated ('' for none)",
    )
    p.add_argument("--no-smooth", action="store_true", help="no spatial smoothing of region labels")
    _common_options(p, "query mapping epochs (default 15)")
    p.set_defaults(func=run_transfer)


def _add_impute(sub) -> None:
    q = sub.add_parser(
        "impute",
        help="impute genes from the FuseMap embedding",
        description="Impute genes (any gene of the model's gene embedding) for every cell, "
        "written as obs['imputed_<Gene>'] (the data's spelling): the mean of the 50 nearest reference "
        "cells in the shared embedding that measured the gene (when the embedded "
        "reference files are at hand), else max(z_C E^T, 0).",
    )
    q.add_argument("--model", type=Path, required=True, help="model folder")
    q.add_argument("--data", type=Path, required=True, help="section file (.h5ad ...)")
    q.add_argument("--genes", required=True, help="comma-separated gene symbols")
    q.add_argument(
        "--method",
        choices=["auto", "knn", "decoder"],
        default="auto",
        help="knn: mean of the 50 nearest reference cells; decoder: "
        "max(z_C E^T, 0); auto (default): knn when reference files are at "
        "hand, else decoder",
    )
    q.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        default=None,
        help="embedded reference .h5ad files, one per model section (default: "
        "<section>.h5ad beside the model folder, when present)",
    )
    _common_options(q, "query mapping epochs when the file has no cell embedding")
    q.set_defaults(func=run_impute)


def add_parser(sub) -> None:
    _add_transfer(sub)
    _add_impute(sub)


def parse_hierarchy(text: str) -> dict[str, str]:
    """ "celltype:celltype_main,..." -> {"celltype": "celltype_main", ...}."""
    out = {}
    for pair in filter(None, (x.strip() for x in str(text).split(","))):
        if ":" not in pair:
            raise BrainAtlasInputError(f"--hierarchy entries are label:main, not {pair!r}")
        a, b = pair.split(":", 1)
        out[a.strip()] = b.strip()
    return out


def _map_text(done, total, info, elapsed_s) -> str:
    stage = info.get("stage", "map query")
    return f"{stage} {done}/{total} val {info.get('val_loss', float('nan')):.4f} {elapsed_s:.0f}s"


def run_transfer(args) -> int:
    from ..workflows import transfer as wf
    from ..workflows.outputs import check_output_file
    from ..workflows.sections import read_paths

    inputs = list(args.query) + list(args.reference or [])
    out = check_output_file(args.out, ".h5ad", inputs)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if not labels:
        raise BrainAtlasInputError("--labels needs at least one label column")
    hierarchy = parse_hierarchy(args.hierarchy)
    if args.epochs < 0:
        raise BrainAtlasInputError("--epochs must be 0 or more")
    queries = read_paths(args.query, args.pixel_size, genes=args.genes_from_columns)
    with torch_threads(args.threads), Progress(text=_map_text, verbose=args.verbose) as bar:
        result = wf.label_transfer(
            queries,
            model=args.model,
            reference=args.reference,
            labels=labels,
            method=args.method,
            hierarchy=hierarchy,
            smooth_regions=not args.no_smooth,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            progress=bar,
        )
    wf.write_transfer(result, out, inputs=inputs)
    for line in result.summary() + [f"warning: {w}" for w in result.warnings]:
        print(line, file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_impute(args) -> int:
    from ..workflows import impute as wf
    from ..workflows.outputs import check_output_file
    from ..workflows.sections import read_paths

    out = check_output_file(args.out, ".h5ad", [args.data])
    sections = read_paths([args.data], args.pixel_size, genes=args.genes_from_columns)
    with torch_threads(args.threads), Progress(text=_map_text, verbose=args.verbose) as bar:
        result = wf.impute_sections(
            sections,
            model=args.model,
            genes=args.genes,
            method=args.method,
            reference=args.reference,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            progress=bar,
        )
    wf.write_imputed(result, out, inputs=[args.data])
    print(result.summary(where=str(out)), file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
