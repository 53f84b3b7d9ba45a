"""``napari-brainatlas cellformer``: train a CellFormer on sections, write embeddings."""

from __future__ import annotations

from pathlib import Path

from ._common import Progress, add_verbose

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    q = sub.add_parser(
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
    add_verbose(q)
    q.set_defaults(func=run)


def _epoch_text(done, total, info, elapsed_s) -> str:
    return f"epoch {done}/{total} loss {info.get('loss', float('nan')):.4f}"


def run(args) -> int:
    from ..workflows import cellformer as wf
    from ..workflows.outputs import check_output_folder
    from ..workflows.sections import read_paths

    out = check_output_folder(args.out)
    sections = read_paths(args.inputs)
    with Progress(text=_epoch_text, verbose=args.verbose) as bar:
        result = wf.train_cellformer(
            sections,
            epochs=args.epochs,
            max_genes=args.max_genes,
            device=args.device,
            seed=args.seed,
            progress=bar,
        )
    wf.write_cellformer(result, out, inputs=args.inputs)
    print(result.summary(out))
    return 0
