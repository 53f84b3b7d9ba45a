"""FuseMap embedding: train on sections, write the embeddings and the model folder.

* :func:`embed_sections` - sections -> :class:`Embedded`: the trained
  :class:`~napari_brainatlas.fusemap.FuseMap`, new AnnData objects (one per section,
  same cells) holding ``obsm['X_fusemap_cell']`` and ``obsm['X_fusemap_tissue']`` (NaN
  rows for cells the preprocessing dropped), and the section names. Under torchrun
  (``WORLD_SIZE`` > 1) every rank trains its shard; only rank 0 reports progress and
  writes.
* :func:`write_embedding` - ``<out>/model/`` (the model folder, see
  :meth:`FuseMap.save`) and ``<out>/<section>.h5ad`` per section.
* :func:`load_fusemap` - a model folder -> FuseMap (one clear error when it is none).
* :func:`train_fusemap` - the one place a workflow trains a FuseMap (epochs per phase,
  default the model's ``settings.epochs``; ``progress(epoch, 2 * epochs, losses)`` with
  ``losses['phase']`` pretrain / final).
* :func:`quality_line` - the one-line quality summary ``embed`` prints (per section:
  mixing and reconstruction, :func:`napari_brainatlas.fusemap.quality.quality_summary`).

The input sections are never modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn, report
from ._progress import raise_if_cancelled, relay
from .checks import check_expression, check_shared_genes, finite_results
from .outputs import check_run_folder, write_sections
from .sections import as_sections, require_genes, section_names

__all__ = [
    "Embedded",
    "default_epochs",
    "embed_sections",
    "load_fusemap",
    "quality_line",
    "resolve_epochs",
    "train_fusemap",
    "write_embedding",
]


@dataclass
class Embedded:
    """The trained model, embedded copies of the sections and their names."""

    model: object  # FuseMap
    sections: list[AnnData]
    names: list[str]
    is_main: bool = True  # False on torchrun ranks other than 0: nothing to write
    #: per section, the cells kept flagged without an embedding (too few counts)
    notes: list[str] = field(default_factory=list)

    def header(self) -> str:
        n = sum(a.n_obs for a in self.model.adatas)
        return (
            f"embed: {len(self.model.adatas)} section(s), {n} cells, "
            f"{len(self.model.module.genes)} genes, device {self.model.device}"
        )


def default_epochs() -> int:
    """The one default number of epochs (training epochs per phase, query-mapping
    epochs) of the docks, the CLI and the workflows: ``FuseMapSettings().epochs``
    (importing the settings does not import torch)."""
    from ..fusemap.settings import FuseMapSettings

    return int(FuseMapSettings().epochs)


def resolve_epochs(epochs: int | None) -> int:
    """``epochs``, or :func:`default_epochs` for None; one input error below 0."""
    n = default_epochs() if epochs is None else int(epochs)
    if n < 0:
        raise BrainAtlasInputError("epochs must be 0 or more")
    return n


def load_fusemap(path, device: str = "auto", sections=None):
    """The FuseMap saved in the model folder ``path`` (``embed``'s ``<out>/model``)."""
    from ..fusemap import FuseMap

    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise BrainAtlasInputError(f"{p} is not a model folder (no config.json)")
    return FuseMap.load(p, sections=sections, device=device)


def train_fusemap(
    model, epochs: int | None = None, *, progress=None, cancel=None, offset: int = 0, extra=0
):
    """Train ``model`` for at most ``epochs`` per phase (None: :func:`default_epochs`);
    raises Cancelled when cancelled."""
    epochs = resolve_epochs(epochs)
    model.train(
        epochs=int(epochs),
        progress=relay(progress, "loss", offset=offset, extra=extra, stage="train"),
        cancel=cancel,
    )
    raise_if_cancelled(model)
    return model


def _device(device: str) -> tuple[int, int, str]:
    """(rank, world, device) with torchrun's process group set up when there is one."""
    from ..fusemap import distributed as D
    from ..fusemap import resolve_device

    rank, world, dist_dev = D.init_from_env()
    if world > 1 and dist_dev != "auto" and device != "cpu":
        device = dist_dev
    resolve_device(device)  # one clear error when CUDA is asked for but absent
    return rank, world, device


def embed_sections(
    sections,
    *,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    names: Sequence[str] | None = None,
    model_options: dict | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
) -> Embedded:
    """Train FuseMap on ``sections`` (AnnData or paths) and embed them (see the module
    docstring).

    ``epochs``: at most this many epochs in each of the two training phases (None:
    :func:`default_epochs`);
    ``model_options``: more :class:`FuseMap` options (``n_latent``, ...). Progress:
    ``progress(0, total, {"message": header})`` once the model is built, then one call
    per epoch.
    """
    from ..fusemap import FuseMap

    epochs = resolve_epochs(epochs)
    sections = as_sections(sections)
    if not sections:
        raise BrainAtlasInputError("no sections to embed")
    require_genes(sections, "embedding")
    names = list(names) if names is not None else section_names(sections)
    check_expression(sections, names, "FuseMap")
    check_shared_genes(sections, names)
    rank, world, device = _device(device)
    progress = progress if rank == 0 else None
    model = FuseMap(
        sections, section_names=names, device=device, seed=seed, **(model_options or {})
    )
    if epochs is None:
        epochs = model.settings.epochs
    result = Embedded(model, [], list(model.section_names), is_main=rank == 0)
    header = result.header() + (f", {world} processes" if world > 1 else "")
    report(progress, 0, 2 * int(epochs), message=header)
    train_fusemap(model, epochs, progress=progress, cancel=cancel)
    result.sections = model.write_embeddings(copy=True)
    result.notes = finite_results(result.sections, result.names)
    return result


def quality_line(result: Embedded) -> str:
    """The one-line quality summary of the trained model (per section: mixing of z_C and
    reconstruction R^2; sections below the thresholds flagged), or "" on ranks other
    than 0."""
    if not result.is_main:
        return ""
    from ..fusemap.quality import quality_summary

    return quality_summary(result.model)


def write_embedding(result: Embedded, out, *, inputs: Iterable = ()) -> list[Path]:
    """Write ``out/model/`` and ``out/<section>.h5ad`` (nothing on ranks other than 0).

    Returns the section files written; refuses to write over any of ``inputs``.
    """
    if not result.is_main:
        return []
    inputs = list(inputs)
    out = check_run_folder(out, result.names, inputs, "model")
    out.mkdir(parents=True, exist_ok=True)
    finite_results(result.sections, result.names)
    paths = write_sections(result.sections, result.names, out, inputs)
    result.model.save(out / "model")
    return paths
