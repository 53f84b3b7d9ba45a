"""``napari-brainatlas cellformer``: train a CellFormer on sections, write embeddings."""

from __future__ import annotations

import sys
from pathlib import Path

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    q = subparsers.add_parser(
        "cellformer",
        help="train the Transformer cell encoder and embed the cells",
        description="Train CellFormer (gene + expression-bin tokens, masked-value "
        "prediction) on the sections of INPUT files; write the model folder and one "
        ".h5ad per section with obsm['X_cellformer'] to --out.",
    )
    q.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help=".h5ad, .loom, .csv or a folder of csv files",
    )
    q.add_argument("--out", type=Path, required=True, metavar="DIR")
    q.add_argument("--epochs", type=int, default=10)
    q.add_argument("--max-genes", type=int, default=64, help="tokens per cell (64)")
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run)


def run(args) -> int:
    from ..io import read_sections, write_h5ad
    from .model import CellFormer

    if args.epochs < 1:
        raise BrainAtlasInputError("--epochs must be at least 1")
    sections = []
    for p in args.inputs:
        sections.extend(read_sections(p))
    model = CellFormer(sections, max_genes=args.max_genes, device=args.device, seed=args.seed)
    model.train(
        args.epochs,
        progress=lambda e, n, loss: print(f"epoch {e}/{n} loss {loss:.4f}", file=sys.stderr),
    )
    model.get_latent_representation()
    out = Path(args.out)
    model.save(out / "model")
    names = set()
    for i, s in enumerate(sections):
        name = str(s.uns.get("napari_brainatlas", {}).get("section", f"section{i}"))
        name = name if name not in names else f"{name}_{i}"
        names.add(name)
        write_h5ad(s, out / f"{name}.h5ad")
    print(
        f"{sum(s.n_obs for s in sections)} cells from {len(sections)} section(s) -> "
        f"{out} (model in {out / 'model'})"
    )
    return 0
