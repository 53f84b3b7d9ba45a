"""``napari-brainatlas domains``: connectivity-aware brain domains (SpaCon) of registered sections.

Reads registered sections (obs['ccf_id'] or obs['ccf_acronym'], obsm['ccf_coords']), maps
the connectome onto their cells, trains the graph attention autoencoder, mixes the
spatial and connectivity embeddings at --alpha and writes, per section,
obs['spacon_domain'] and obsm['X_spacon'] (plus both embeddings) to OUT/<section>.h5ad;
the model goes to OUT/spacon_model/.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "domains",
        help="connectivity-aware brain domains (SpaCon) of registered sections",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="registered sections (.h5ad, or any format the readers take)",
    )
    p.add_argument(
        "--connectome",
        required=True,
        help="Oh et al. 2014 workbook (.xlsx: W_ipsi, W_contra, ...) or 'demo'",
    )
    p.add_argument(
        "--ontology",
        default=None,
        help="structure tree .csv / structure graph .json of the registration atlas "
        "(default: the demo ontology, for sections registered to 'demo')",
    )
    p.add_argument(
        "--alpha",
        type=float,
        required=True,
        help="0 = spatial embedding only ... 1 = connectivity embedding only",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--p-max",
        type=float,
        default=None,
        help="zero the connectome weights with p-value >= this (e.g. 0.05)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resolution", type=float, default=0.5, help="Leiden resolution")
    g.add_argument(
        "--n-domains",
        type=int,
        default=None,
        help="search the Leiden resolution for this many domains",
    )
    p.add_argument(
        "--midline-ml",
        type=float,
        default=None,
        help="ML midline, um (default: 4000 for the demo atlas, 5700 for the CCFv3)",
    )
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=4, help="target regions kept per source region")
    p.add_argument("--per-region", type=int, default=3, help="target cells sampled per region")
    p.add_argument("--threads", type=int, default=None, help="torch threads while training")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _section_name(adata, i: int) -> str:
    meta = adata.uns.get("napari_brainatlas", {})
    name = meta.get("section") if isinstance(meta, dict) else None
    return str(name) if name else f"section{i}"


def run(args) -> int:
    from ..atlas import Ontology
    from ..atlas.demo_atlas import demo_ontology
    from ..io import read_sections, write_h5ad
    from .connectome import DEMO_MIDLINE_ML_UM, default_midline_ml, load_connectome
    from .spacon import prepare, train, write_results

    if not 0.0 <= args.alpha <= 1.0:
        raise BrainAtlasInputError(f"--alpha must be within 0 and 1, not {args.alpha:g}")
    if args.epochs < 1:
        raise BrainAtlasInputError("--epochs must be at least 1")
    if args.n_domains is not None and args.n_domains < 2:
        raise BrainAtlasInputError("--n-domains must be at least 2")
    connectome = load_connectome(args.connectome, p_max=args.p_max)
    sections = []
    for path in args.inputs:
        sections.extend(read_sections(path))
    if not sections:
        raise BrainAtlasInputError("no sections in the inputs")
    if args.ontology:
        ontology = Ontology.from_file(args.ontology)
    else:
        if args.midline_ml is None and not all(
            default_midline_ml(s) == DEMO_MIDLINE_ML_UM for s in sections
        ):
            raise BrainAtlasInputError(
                "these sections are not registered to the demo atlas: give --ontology (the "
                "CCF structure tree .csv)"
            )
        ontology = demo_ontology()
    names = [_section_name(s, i) for i, s in enumerate(sections)]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    print(
        f"{len(sections)} section(s), {sum(s.n_obs for s in sections):,} cells; connectome "
        f"{Path(str(connectome.source)).name} ({connectome.n_regions} regions)",
        flush=True,
    )
    data = prepare(
        sections,
        connectome,
        ontology,
        midline_ml_um=args.midline_ml,
        top_k=args.top_k,
        per_region=args.per_region,
        seed=args.seed,
    )
    n_conn = int((data.region >= 0).sum())
    print(
        f"{len(data.genes)} shared genes; {n_conn:,} cells in "
        f"{len(set(data.region[data.region >= 0].tolist()))} connectome regions; graphs: "
        f"spatial {data.spatial.n_edges:,} edges, connectivity {data.connect.n_edges:,} edges",
        flush=True,
    )
    model = train(
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        num_threads=args.threads,
        log=lambda m: print(m, flush=True),
    )
    labels = model.domains(
        args.alpha, resolution=args.resolution, n_domains=args.n_domains, seed=args.seed
    )
    write_results(sections, data, model, args.alpha, labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s, name in zip(sections, names):
        path = write_h5ad(s, out / f"{name}.h5ad")
        print(f"wrote {path}")
    model.save(out / "spacon_model")
    print(f"alpha {args.alpha:g}: {int(labels.max()) + 1} domains; model in {out / 'spacon_model'}")
    return 0
