"""CellFormer: train the transformer cell encoder on sections and embed their cells.

* :func:`train_cellformer` - sections (AnnData or paths) -> :class:`CellFormerRun`: the
  trained :class:`~napari_brainatlas.cellformer.CellFormer` and new AnnData objects (one
  per section, same cells) holding ``obsm['X_cellformer']`` (n, d_model) float32.
* :func:`write_cellformer` - ``<out>/model/`` (the model folder) and
  ``<out>/<section>.h5ad`` per section, atomically.

``progress(epoch, epochs, {"loss": ...})`` once per epoch. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn
from ._progress import raise_if_cancelled, relay
from .outputs import check_output_folder, write_sections
from .sections import as_sections, section_names

__all__ = ["CellFormerRun", "train_cellformer", "write_cellformer"]


@dataclass
class CellFormerRun:
    """The trained model, embedded copies of the sections and their names."""

    model: object  # CellFormer
    sections: list[AnnData]
    names: list[str]

    def summary(self, out=None) -> str:
        n = sum(s.n_obs for s in self.sections)
        where = f" -> {out} (model in {Path(out) / 'model'})" if out is not None else ""
        return f"{n} cells from {len(self.sections)} section(s){where}"


def _train(model, epochs, progress, cancel):
    """The one call of CellFormer's training."""
    model.train(int(epochs), progress=relay(progress, "loss"), cancel=cancel)
    raise_if_cancelled(model)


def train_cellformer(
    sections,
    *,
    epochs: int = 10,
    max_genes: int = 64,
    device: str = "auto",
    seed: int = 0,
    model_options: dict | None = None,
    progress: ProgressFn | None = None,
    cancel=None,
) -> CellFormerRun:
    """Train a CellFormer (``max_genes`` tokens per cell; more options in
    ``model_options``) for ``epochs`` and embed every cell."""
    from ..cellformer import LATENT_KEY, CellFormer

    if epochs < 1:
        raise BrainAtlasInputError("epochs must be at least 1")
    sections = as_sections(sections)
    model = CellFormer(
        sections, max_genes=max_genes, device=device, seed=seed, **(model_options or {})
    )
    _train(model, epochs, progress, cancel)
    z = model.get_latent_representation(write=False)
    out, start = [], 0
    for s in sections:
        b = s.copy()
        b.obsm[LATENT_KEY] = np.asarray(z[start : start + s.n_obs], dtype=np.float32)
        start += s.n_obs
        out.append(b)
    return CellFormerRun(model, out, section_names(sections))


def write_cellformer(result: CellFormerRun, out, *, inputs: Iterable = ()) -> list[Path]:
    """Write ``out/model/`` and ``out/<section>.h5ad``; returns the section files."""
    out = check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_sections(result.sections, result.names, out, inputs)
    result.model.save(out / "model")
    return paths
