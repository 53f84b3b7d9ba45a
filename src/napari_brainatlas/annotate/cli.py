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

``transfer`` maps the query onto the frozen reference (``map_query``: reference anchor
where the reference counts are at hand, else adversarial against the reference
embeddings), transfers the labels and writes the query with
``obsm['X_fusemap_cell' / 'X_fusemap_tissue']``, ``obs['<label>_transfer']`` and
``obs['<label>_transfer_uncertainty']`` (several query sections are concatenated, with
``obs['section']``).

``impute`` writes one obs column per gene, ``obs['imputed_<GENE>']`` (upper-case symbol;
layers cannot hold genes the file does not measure), from ``obsm['X_fusemap_cell']``
when the file has it, else after mapping the file onto the model as a query; by default
(``--method auto``) the mean of the 50 nearest cells of the embedded reference files (the
``<section>.h5ad`` files beside the model folder, or ``--reference``) that measured the
gene, else (no reference files) ``max(z_C E^T, 0)`` (see ``annotate.impute``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "run_impute", "run_transfer"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
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
    p.add_argument("--epochs", type=int, default=15, help="query mapping epochs (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--pixel-size", type=float, default=None, help="um per coordinate unit")
    p.add_argument("--out", type=Path, required=True, help="output .h5ad")
    p.set_defaults(func=run_transfer)

    q = subparsers.add_parser(
        "impute",
        help="impute genes from the FuseMap embedding",
        description="Impute genes (any gene of the model's gene embedding) for every cell, "
        "written as obs['imputed_<GENE>']: the mean of the 50 nearest reference "
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
    q.add_argument(
        "--epochs",
        type=int,
        default=15,
        help="query mapping epochs when the file has no cell embedding",
    )
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.add_argument("--pixel-size", type=float, default=None)
    q.add_argument("--out", type=Path, required=True, help="output .h5ad")
    q.set_defaults(func=run_impute)


def _load_model(path: Path, device: str):
    from ..fusemap import FuseMap

    if not Path(path).is_dir() or not (Path(path) / "config.json").is_file():
        raise BrainAtlasInputError(f"{path} is not a model folder (no config.json)")
    return FuseMap.load(path, device=device)


def _read(paths, pixel_size):
    from ..io import read_sections

    out = []
    for p in paths:
        if not Path(p).exists():
            raise BrainAtlasInputError(f"{p} does not exist")
        for a in read_sections(p, pixel_size_um=pixel_size):
            out.append(a.to_memory() if getattr(a, "isbacked", False) else a)
    return out


def _check_out(out: Path, inputs) -> None:
    if out.suffix.lower() != ".h5ad":
        raise BrainAtlasInputError(f"--out must be a .h5ad file, not {out.name}")
    if any(Path(i).resolve() == out.resolve() for i in inputs):
        raise BrainAtlasInputError(f"refusing to overwrite the input file {out.name}")


def _progress(tag: str):
    t0 = time.time()

    def bar(epoch, n, losses):
        sys.stderr.write(
            f"\r{tag} {epoch}/{n} val {losses.get('val_loss', float('nan')):.4f} "
            f"{time.time() - t0:.0f}s"
        )
        sys.stderr.flush()

    return bar


def _threads(n):
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    return old


def _combine(sections):
    import anndata as ad

    if len(sections) == 1:
        return sections[0]
    for i, a in enumerate(sections):
        if "section" not in a.obs:
            a.obs["section"] = str(i)
    return ad.concat(sections, join="outer", merge="first", uns_merge="first", index_unique="-")


def _reference_files(model, model_dir: Path, given) -> list[Path]:
    if given:
        return list(given)
    files = [model_dir.parent / f"{n}.h5ad" for n in model.section_names]
    if not all(f.is_file() for f in files):
        raise BrainAtlasInputError(
            "the model folder holds no labelled cells: give --reference with the embedded "
            "reference .h5ad files (as `napari-brainatlas embed` writes them)"
        )
    return files


def run_transfer(args) -> int:
    import torch

    from ..io import write_h5ad
    from .query import map_query
    from .transfer import transfer_labels

    _check_out(args.out, list(args.query) + list(args.reference or []))
    if args.epochs < 0:
        raise BrainAtlasInputError("--epochs must be 0 or more")
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if not labels:
        raise BrainAtlasInputError("--labels needs at least one label column")
    hierarchy = {}
    for pair in filter(None, (x.strip() for x in args.hierarchy.split(","))):
        if ":" not in pair:
            raise BrainAtlasInputError(f"--hierarchy entries are label:main, not {pair!r}")
        a, b = pair.split(":", 1)
        hierarchy[a.strip()] = b.strip()
    model = _load_model(args.model, args.device)
    refs = _read(_reference_files(model, Path(args.model), args.reference), None)
    if len(refs) != model.n_sections:
        raise BrainAtlasInputError(
            f"the model has {model.n_sections} sections but "
            f"{len(refs)} reference sections were given"
        )
    for lab in labels:
        if not all(lab in r.obs.columns for r in refs):
            raise BrainAtlasInputError(f"the reference sections have no obs['{lab}'] labels")
    queries = _read(args.query, args.pixel_size)
    if not queries:
        raise BrainAtlasInputError("no query sections found")
    old = _threads(args.threads)
    try:
        print(
            f"transfer: {len(queries)} query section(s) onto {model.n_sections} reference "
            f"section(s), labels {', '.join(labels)}",
            file=sys.stderr,
        )
        mapping = map_query(
            model,
            queries,
            reference_sections=refs,
            epochs=args.epochs,
            seed=args.seed,
            progress=_progress("map query"),
        )
        sys.stderr.write("\n")
        mapped = mapping.write_embeddings(copy=True)
        out = transfer_labels(
            refs,
            mapped,
            labels=labels,
            method=args.method,
            hierarchy=hierarchy,
            smooth_regions=not args.no_smooth,
            seed=args.seed,
        )
    finally:
        torch.set_num_threads(old)
    res = _combine(out)
    write_h5ad(res, args.out)
    for lab in labels:
        u = res.obs[f"{lab}_transfer_uncertainty"]
        print(
            f"{lab}: {res.obs[f'{lab}_transfer'].nunique()} classes, mean uncertainty "
            f"{float(u.mean()):.3f}",
            file=sys.stderr,
        )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def run_impute(args) -> int:
    import numpy as np

    from ..fusemap import CELL_KEY
    from ..io import write_h5ad
    from .impute import IMPUTED_PREFIX, impute_genes
    from .query import map_query

    _check_out(args.out, [args.data])
    genes = [g.strip().upper() for g in args.genes.split(",") if g.strip()]
    if not genes:
        raise BrainAtlasInputError("--genes needs at least one gene symbol")
    model = _load_model(args.model, args.device)
    missing = [g for g in genes if g not in model.module.gene_index]
    if missing:
        raise BrainAtlasInputError(
            f"gene(s) not in the model's gene embedding: {', '.join(missing[:5])}"
        )
    refs = None
    if args.method != "decoder":
        try:
            files = _reference_files(model, Path(args.model), args.reference)
        except BrainAtlasInputError:
            if args.method == "knn":
                raise
            files = None
        refs = _read(files, args.pixel_size) if files else None
    secs = _read([args.data], args.pixel_size)
    old = _threads(args.threads)
    outs = []
    try:
        for a in secs:
            a = a.copy()
            if CELL_KEY not in a.obsm or not np.isfinite(np.asarray(a.obsm[CELL_KEY])).any():
                mapping = map_query(
                    model,
                    [a],
                    reference_sections=refs,
                    epochs=args.epochs,
                    seed=args.seed,
                    progress=_progress("map query"),
                )
                sys.stderr.write("\n")
                a = mapping.write_embeddings(copy=False)[0]
            df = impute_genes(model, a, genes, method=args.method, reference=refs)
            for g in genes:
                a.obs[IMPUTED_PREFIX + g] = df[g].to_numpy(np.float32)
            a.uns["imputed_genes"] = list(genes)
            outs.append(a)
    finally:
        _threads(old)
    write_h5ad(_combine(outs), args.out)
    print(
        f"imputed ({df.attrs.get('method')}) {', '.join(genes)} for "
        f"{sum(a.n_obs for a in outs)} cells: "
        f"obs['{IMPUTED_PREFIX}<GENE>'] in {args.out}",
        file=sys.stderr,
    )
    return 0
