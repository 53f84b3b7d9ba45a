"""SpaCon connectivity-aware brain domains of registered sections.

* :func:`prepare_domains` - registered sections (``obs['ccf_id']`` or
  ``obs['ccf_acronym']``, ``obsm['ccf_coords']`` in CCF um) + a connectome (``"demo"``,
  an Oh et al. 2014 workbook path or a Connectome) + the registration atlas's ontology
  -> :class:`DomainsInput` (the shared genes, the spatial and connectivity graphs).
* :func:`find_domains` - train the graph attention autoencoder, mix the spatial and
  connectivity embeddings at ``alpha`` (0 = spatial only, 1 = connectivity only) and
  cluster (Leiden) -> :class:`Domains`: new AnnData objects per section with
  ``obs['spacon_domain']`` (categorical, "0" = largest domain), ``obsm['X_spacon']`` (the
  mix), ``obsm['X_spacon_spatial' / 'X_spacon_connect']`` and ``uns['spacon']``.
* :func:`assign_domains` - domains again at another ``alpha`` without retraining (the
  dock's slider).
* :func:`write_domains` - ``<out>/<section>.h5ad`` per section and ``<out>/spacon_model/``.
* :func:`check_options` - the options' one-sentence errors, before any slow step.

``progress(epoch, epochs, {"loss": ...})`` once per training epoch. Inputs are never
modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..jobs import ProgressFn
from ._progress import relay
from .outputs import check_output_folder, write_sections
from .sections import as_sections, section_names

__all__ = [
    "Domains",
    "DomainsInput",
    "assign_domains",
    "check_options",
    "find_domains",
    "prepare_domains",
    "write_domains",
]

MODEL_FOLDER = "spacon_model"


def check_options(*, alpha: float, epochs: int = 30, n_domains: int | None = None) -> None:
    """One :class:`BrainAtlasInputError` for an alpha outside [0, 1], fewer than one
    epoch or fewer than two domains."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise BrainAtlasInputError(f"alpha must be within 0 and 1, not {alpha:g}")
    if epochs < 1:
        raise BrainAtlasInputError("epochs must be at least 1")
    if n_domains is not None and n_domains < 2:
        raise BrainAtlasInputError("the number of domains must be at least 2")


@dataclass
class DomainsInput:
    """Sections ready for SpaCon: the engine's data and what it was built from."""

    sections: list[AnnData]
    names: list[str]
    data: object  # SpaConData
    connectome: object  # Connectome

    def summary(self) -> list[str]:
        d = self.data
        n_conn = int((d.region >= 0).sum())
        regions = len(set(d.region[d.region >= 0].tolist()))
        return [
            f"{len(self.sections)} section(s), {sum(s.n_obs for s in self.sections):,} "
            f"cells; connectome {Path(str(self.connectome.source)).name} "
            f"({self.connectome.n_regions} regions)",
            f"{len(d.genes)} shared genes; {n_conn:,} cells in {regions} connectome regions; "
            f"graphs: spatial {d.spatial.n_edges:,} edges, connectivity "
            f"{d.connect.n_edges:,} edges",
        ]


def _ontology(ontology, sections, midline_ml_um):
    from ..atlas import Ontology
    from ..atlas.demo_atlas import demo_ontology
    from ..domains.connectome import DEMO_MIDLINE_ML_UM, default_midline_ml

    if ontology is not None:
        return ontology if isinstance(ontology, Ontology) else Ontology.from_file(ontology)
    if midline_ml_um is None and not all(
        default_midline_ml(s) == DEMO_MIDLINE_ML_UM for s in sections
    ):
        raise BrainAtlasInputError(
            "these sections are not registered to the demo atlas: give the ontology (the "
            "CCF structure tree .csv)"
        )
    return demo_ontology()


def prepare_domains(
    sections,
    connectome,
    *,
    ontology=None,
    midline_ml_um: float | None = None,
    p_max: float | None = None,
    top_k: int = 4,
    per_region: int = 3,
    seed: int = 0,
) -> DomainsInput:
    """Map the connectome onto the cells of ``sections`` (AnnData or paths) and build
    both graphs.

    ``ontology``: Ontology or structure tree .csv / graph .json (default: the demo
    ontology, for sections registered to 'demo'); ``midline_ml_um``: the ML midline (um;
    default from the registration atlas); ``p_max``: zero connectome weights with p-value
    >= this; ``top_k`` target regions kept per source region, ``per_region`` target cells
    sampled per region.
    """
    from ..domains import load_connectome, prepare

    sections = as_sections(sections)
    if not sections:
        raise BrainAtlasInputError("no sections given")
    if isinstance(connectome, (str, Path)):
        connectome = load_connectome(connectome, p_max=p_max)
    onto = _ontology(ontology, sections, midline_ml_um)
    data = prepare(
        sections,
        connectome,
        onto,
        midline_ml_um=midline_ml_um,
        top_k=top_k,
        per_region=per_region,
        seed=seed,
    )
    return DomainsInput(sections, section_names(sections), data, connectome)


@dataclass
class Domains:
    """Sections with their domains, the trained model and the labels (one per cell)."""

    sections: list[AnnData]
    names: list[str]
    model: object  # SpaConModel
    labels: np.ndarray
    alpha: float

    @property
    def n_domains(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0


def assign_domains(
    prepared: DomainsInput,
    model,
    *,
    alpha: float,
    resolution: float = 0.5,
    n_domains: int | None = None,
    seed: int = 0,
) -> Domains:
    """Domains at ``alpha`` from a trained model (Leiden ``resolution``, or searched for
    ``n_domains``), written into copies of the sections."""
    from ..domains import write_results

    check_options(alpha=alpha, n_domains=n_domains)
    labels = model.domains(alpha, resolution=resolution, n_domains=n_domains, seed=seed)
    out = [s.copy() for s in prepared.sections]
    write_results(out, prepared.data, model, alpha, labels)
    return Domains(out, list(prepared.names), model, labels, float(alpha))


def _train(data, epochs, batch_size, seed, progress, cancel):
    """The one call of SpaCon's training."""
    from ..domains import train

    return train(
        data,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=relay(progress, "loss"),
        cancel=cancel,
    )


def find_domains(
    prepared: DomainsInput,
    *,
    alpha: float,
    epochs: int = 30,
    resolution: float = 0.5,
    n_domains: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel=None,
) -> Domains:
    """Train SpaCon on ``prepared`` and assign the domains at ``alpha``."""
    check_options(alpha=alpha, epochs=epochs, n_domains=n_domains)
    model = _train(prepared.data, int(epochs), batch_size, seed, progress, cancel)
    return assign_domains(
        prepared, model, alpha=alpha, resolution=resolution, n_domains=n_domains, seed=seed
    )


def write_domains(result: Domains, out, *, inputs=()) -> list[Path]:
    """Write ``out/<section>.h5ad`` per section and the model to ``out/spacon_model``."""
    out = check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_sections(result.sections, result.names, out, inputs)
    result.model.save(out / MODEL_FOLDER)
    return paths
