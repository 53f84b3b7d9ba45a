"""``napari-brainatlas domains``: connectivity-aware brain domains (SpaCon) of registered
sections.

Reads registered sections (obs['ccf_id'] or obs['ccf_acronym'], obsm['ccf_coords']), maps
the connectome onto their cells, trains the graph attention autoencoder, mixes the
spatial and connectivity embeddings at --alpha and writes, per section,
obs['spacon_domain'] and obsm['X_spacon'] (plus both embeddings) to OUT/<section>.h5ad;
the model goes to OUT/spacon_model/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import Progress, add_verbose, torch_threads

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "domains",
        help="connectivity-aware brain domains (SpaCon) of registered sections",
        description="Connectivity-aware brain domains (SpaCon) of registered sections.",
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
    add_verbose(p)
    p.set_defaults(func=run)


def _epoch_text(done, total, info, elapsed_s) -> str:
    return f"epoch {done}/{total}: loss {info.get('loss', float('nan')):.4f} ({elapsed_s:.0f} s)"


def run(args) -> int:
    from ..workflows import domains as wf
    from ..workflows.outputs import check_output_folder
    from ..workflows.sections import read_paths

    wf.check_options(alpha=args.alpha, epochs=args.epochs, n_domains=args.n_domains)
    out = check_output_folder(args.out)
    sections = read_paths(args.inputs)
    prepared = wf.prepare_domains(
        sections,
        args.connectome,
        ontology=args.ontology,
        midline_ml_um=args.midline_ml,
        p_max=args.p_max,
        top_k=args.top_k,
        per_region=args.per_region,
        seed=args.seed,
    )
    for line in prepared.summary():
        print(line, flush=True)
    stdout = Progress(text=_epoch_text, verbose=args.verbose, stream=lambda: sys.stdout)
    with torch_threads(args.threads), stdout as bar:
        result = wf.find_domains(
            prepared,
            alpha=args.alpha,
            epochs=args.epochs,
            resolution=args.resolution,
            n_domains=args.n_domains,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=bar,
        )
    for path in wf.write_domains(result, out, inputs=args.inputs):
        print(f"wrote {path}")
    print(f"alpha {args.alpha:g}: {result.n_domains} domains; model in {out / wf.MODEL_FOLDER}")
    return 0
