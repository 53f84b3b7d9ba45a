"""``napari-brainatlas modules``, ``panel`` and ``proximity``: the FuseMap paper's atlas
analyses (see :mod:`napari_brainatlas.workflows.analyses`).

    napari-brainatlas modules --model DIR --out DIR [--resolution auto|R | --n-modules K]
                              [--score SECTION ...]
    napari-brainatlas panel --model DIR --size N [--include A,B] [--exclude C]
                            [--method modules|hvg|random] [--data SECTION ...] --out panel.csv
    napari-brainatlas proximity SECTION ... --celltype KEY [--region KEY] [--radius-um 30]
                                [--shift-um 100] [--n-shifts 1000] [--min-cells 10]
                                [--pvalue empirical|normal] [--raw-counts]
                                [--heatmaps DIR] --out table.csv

``modules`` writes ``modules.csv`` (gene, module, hub_score, centrality, is_hub, umap_x,
umap_y) and ``modules.json`` into the model folder and into --out, with
``gene_umap.png``; with --score, the sections with ``obs['module_<k>_score']`` go to
``OUT/<section>.h5ad``. ``panel`` ranks genes by the expression of --data (default: the
``<section>.h5ad`` files ``embed`` wrote beside the model folder). ``proximity`` writes the
ranked table (region, type_a, type_b, n_a, n_b, observed, expected, null_sd, z,
log2_ratio, p_value, q_value, significant).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .._errors import BrainAtlasInputError
from ._common import Progress, add_verbose

__all__ = ["add_parser", "run_modules", "run_panel", "run_proximity"]


def _resolution(text: str):
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise BrainAtlasInputError(
            f"--resolution must be 'auto' or a number, not {text!r}"
        ) from None


def _add_modules(sub) -> None:
    p = sub.add_parser(
        "modules",
        help="gene modules, hub genes and a gene UMAP from a model's gene embedding",
        description="Group the genes of a FuseMap model's gene embedding into modules "
        "(cosine kNN graph + Leiden), flag hub genes, draw the gene UMAP; optionally score "
        "sections per module (obs['module_<k>_score']).",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (embed --out/model)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resolution", default="auto", help="Leiden resolution or 'auto' (default)")
    g.add_argument("--n-modules", type=int, default=None, help="search for this many modules")
    p.add_argument(
        "--score",
        type=Path,
        nargs="+",
        default=None,
        metavar="SECTION",
        help="sections to score per module (genes they did not measure are decoded from "
        "their obsm['X_fusemap_cell'] when present)",
    )
    p.add_argument("--no-umap", action="store_true", help="skip the gene UMAP")
    add_verbose(p)
    p.set_defaults(func=run_modules)


def _add_panel(sub) -> None:
    p = sub.add_parser(
        "panel",
        help="design a targeted gene panel spread evenly over gene modules",
        description="Choose N genes spread evenly over the model's gene modules, the most "
        "variable first within each (or the top-N variable genes, or N random genes).",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--size", type=int, required=True, help="panel size N")
    p.add_argument("--include", default="", help="must-have genes, comma-separated")
    p.add_argument("--exclude", default="", help="genes never to pick, comma-separated")
    p.add_argument("--method", choices=["modules", "hvg", "random"], default="modules")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=None,
        metavar="SECTION",
        help="sections whose expression ranks the genes (default: the <section>.h5ad files "
        "beside the model folder)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --method random")
    p.add_argument("--out", type=Path, required=True, help="output .csv")
    p.set_defaults(func=run_panel)


def _add_proximity(sub) -> None:
    p = sub.add_parser(
        "proximity",
        help="cell-type pairs closer than chance, per region",
        description="Count cell pairs within --radius-um per region and cell-type pair and "
        "compare with --n-shifts random shifts of every cell within --shift-um (labels "
        "kept): z-scores, empirical p, Benjamini-Hochberg q.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="SECTION", help="section files")
    p.add_argument("--celltype", required=True, help="obs column of cell types")
    p.add_argument("--region", default=None, help="obs column of regions (default: none)")
    p.add_argument("--radius-um", type=float, default=30.0)
    p.add_argument("--shift-um", type=float, default=100.0)
    p.add_argument("--n-shifts", type=int, default=1000)
    p.add_argument("--min-cells", type=int, default=10, help="cells of a type in a region")
    p.add_argument("--alternative", choices=["greater", "less", "two-sided"], default="greater")
    p.add_argument(
        "--pvalue",
        choices=["empirical", "normal"],
        default="empirical",
        help="empirical (>= 1/(n_shifts+1)) or the normal tail at z",
    )
    p.add_argument(
        "--raw-counts",
        action="store_true",
        help="compare raw close-pair counts (not rescaled to the observed total; not "
        "calibrated, see the docs)",
    )
    p.add_argument("--threads", type=int, default=None, help="threads for the null draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heatmaps", type=Path, default=None, help="folder for one PNG per region")
    p.add_argument("--out", type=Path, required=True, help="output .csv")
    add_verbose(p)
    p.set_defaults(func=run_proximity)


def add_parser(sub) -> None:
    _add_modules(sub)
    _add_panel(sub)
    _add_proximity(sub)


def run_modules(args) -> int:
    from ..workflows import analyses as wf
    from ..workflows.outputs import check_output_folder

    out = check_output_folder(args.out)
    text = lambda d, t, i, s: f"gene modules: {i.get('phase', '')} {d}/{t}, {s:.0f} s"  # noqa: E731
    with Progress("modules", text=text, verbose=args.verbose) as bar:
        result = wf.find_modules(
            args.model,
            resolution=_resolution(args.resolution),
            n_modules=args.n_modules,
            umap=not args.no_umap,
            progress=bar,
        )
    for path in wf.write_modules(result, out):
        print(f"wrote {path}", file=sys.stderr)
    if args.score:
        scored = wf.score_sections(args.score, model=args.model, modules=result.modules)
        for path in wf.write_scored(scored, out, inputs=args.score):
            print(f"wrote {path}", file=sys.stderr)
    for line in result.lines():
        print(line)
    return 0


def run_panel(args) -> int:
    from ..workflows import analyses as wf
    from ..workflows.outputs import check_output_file

    out = check_output_file(args.out, ".csv", args.data or [])
    panel = wf.design_panel(
        args.model,
        args.size,
        include=args.include,
        exclude=args.exclude,
        data=args.data,
        method=args.method,
        seed=args.seed,
    )
    wf.write_panel(panel, out, inputs=args.data or [])
    for line in panel.lines():
        print(line)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_proximity(args) -> int:
    from ..analyses import ProximitySettings
    from ..workflows import analyses as wf
    from ..workflows.outputs import check_output_file

    out = check_output_file(args.out, ".csv", args.inputs)
    settings = ProximitySettings(
        radius_um=args.radius_um,
        shift_um=args.shift_um,
        n_shifts=args.n_shifts,
        min_cells=args.min_cells,
        alternative=args.alternative,
        adjust_total=not args.raw_counts,
        pvalue=args.pvalue,
        seed=args.seed,
    )
    settings.check()
    text = lambda d, t, i, s: f"proximity: {d}/{t} random shifts, {s:.0f} s"  # noqa: E731
    with Progress("proximity", text=text, verbose=args.verbose) as bar:
        result = wf.cell_proximity(
            args.inputs,
            celltype_key=args.celltype,
            region_key=args.region,
            settings=settings,
            n_jobs=args.threads,
            progress=bar,
        )
    for path in wf.write_proximity(result, out, heatmaps=args.heatmaps, inputs=args.inputs):
        print(f"wrote {path}", file=sys.stderr)
    for line in result.lines():
        print(line)
    return 0
