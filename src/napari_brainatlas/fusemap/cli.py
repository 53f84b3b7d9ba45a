"""``napari-brainatlas embed``: train FuseMap on sections and write the embeddings.

    napari-brainatlas embed INPUT... --out DIR [--epochs N] [--device auto|cpu|cuda]
                                     [--seed S] [--threads T]

Writes ``DIR/model/`` (the model folder, see :meth:`FuseMap.save`) and one
``DIR/<section>.h5ad`` per section holding ``obsm['X_fusemap_cell']`` and
``obsm['X_fusemap_tissue']``, and ends with a one-line quality summary on stderr
(per section: mixing and reconstruction R^2, :func:`.quality.quality_summary`). Input
files are only read. Under torchrun (``WORLD_SIZE``
> 1) every rank trains its shard and rank 0 writes the results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .._errors import BrainAtlasInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
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
        "--epochs", type=int, default=3, help="maximum epochs per training phase (default 3)"
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
    p.set_defaults(func=run)


class _Bar:
    """Plain-text progress bar on stderr."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.time()

    def __call__(self, epoch: int, n_epochs: int, losses: dict) -> None:
        frac = min(epoch / max(n_epochs, 1), 1.0)
        fill = round(frac * self.width)  # frac: a Python float
        msg = (
            f"\rembed [{'#' * fill}{'.' * (self.width - fill)}] {epoch}/{n_epochs} "
            f"{losses.get('phase', '')} recon {losses.get('recon', float('nan')):.4f} "
            f"val {losses.get('val_loss', float('nan')):.4f} "
            f"{time.time() - self.t0:.0f}s"
        )
        self.stream.write(msg)
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _read_all(paths, pixel_size, section_key):
    from ..io import read_sections

    sections, names = [], []
    for path in paths:
        secs = read_sections(path, pixel_size_um=pixel_size, section_key=section_key)
        for i, a in enumerate(secs):
            if getattr(a, "isbacked", False):
                a = a.to_memory()
            meta = a.uns.get("napari_brainatlas", {})
            name = meta.get("section") if isinstance(meta, dict) else None
            if not name:
                name = Path(path).stem if len(secs) == 1 else f"{Path(path).stem}_{i}"
            sections.append(a)
            names.append(str(name))
    return sections, names


def run(args) -> int:
    import torch

    from . import distributed as D
    from .fusemap import FuseMap, resolve_device

    if args.epochs < 0:
        raise BrainAtlasInputError("--epochs must be 0 or more")
    rank, world, dist_dev = D.init_from_env()
    device = args.device if world == 1 or dist_dev == "auto" or args.device == "cpu" else dist_dev
    resolve_device(device)  # one-line error when CUDA is asked for but absent
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BrainAtlasInputError(f"--out {out} exists and is not a folder")
    sections, names = _read_all(args.inputs, args.pixel_size, args.section_key)
    if not sections:
        raise BrainAtlasInputError("no sections found in the input")
    inputs = {str(Path(p).resolve()) for p in args.inputs}
    model = FuseMap(sections, section_names=names, device=device, seed=args.seed)
    main = rank == 0
    if main:
        n = sum(a.n_obs for a in sections)
        print(
            f"embed: {len(sections)} section(s), {n} cells, {len(model.module.genes)} genes, "
            f"device {model.device}" + (f", {world} processes" if world > 1 else ""),
            file=sys.stderr,
        )
    bar = _Bar() if main else None
    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        model.train(max_epochs=args.epochs, progress=bar)
    finally:
        torch.set_num_threads(old_threads)
        if bar is not None:
            bar.close()
    if not main:
        return 0
    from ..io import write_h5ad

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model")
    for a, name in zip(model.write_embeddings(copy=True), model.section_names):
        target = out / f"{name}.h5ad"
        if str(target.resolve()) in inputs:
            raise BrainAtlasInputError(f"refusing to overwrite the input file {target.name}")
        write_h5ad(a, target)
        print(f"wrote {target}", file=sys.stderr)
    print(f"model folder {out / 'model'}", file=sys.stderr)
    from .quality import quality_summary

    print(quality_summary(model), file=sys.stderr)
    return 0
