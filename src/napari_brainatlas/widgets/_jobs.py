"""What the docks run in their worker threads: one function per user action.

Plain Python (no Qt, no napari): each function takes the inputs (copies of the
sections, see :func:`._base.snapshot`), keyword options and ``progress`` / ``cancel``
(:mod:`napari_brainatlas.jobs`), calls one :mod:`napari_brainatlas.workflows` function
(the code the command line runs too) and returns what the dock then shows in the GUI
thread. The few actions with no workflow yet (the Embed dock's joint clusters and UMAP,
imputation from a query mapping, the atlas's label colours) call the engine here, in one
place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import BrainAtlasInputError, Cancelled
from ..jobs import check_cancel, report

__all__ = [
    "BACKED_BYTES",
    "annotate",
    "cluster_domains",
    "embed",
    "impute",
    "joint_clusters",
    "joint_umap",
    "load_atlas",
    "map_and_impute",
    "model_labels",
    "process_ahba",
    "read_layer_data",
    "register_batch",
    "register_one",
    "train_domains",
]

#: .h5ad files larger than this are opened backed (expression stays on disk)
BACKED_BYTES = 2 * 2**30


# ---------------------------------------------------------------------- sections
def _read(path: str, pixel_size_um: float | None, genes=None) -> list:
    """The sections of ``path``: the workflows' one way to read and name them; a very
    large .h5ad is opened backed (its expression stays on disk), which
    ``workflows.read_paths`` (in memory) does not offer. ``genes``: csv / tsv cell
    tables' numeric columns read as genes (``True``), else they stay obs columns."""
    from ..io.readers import CSV_SUFFIXES
    from ..workflows import read_paths

    p = Path(path)
    if p.suffix.lower() == ".h5ad" and p.is_file() and p.stat().st_size > BACKED_BYTES:
        from ..io import read_sections

        return read_sections(path, pixel_size_um=pixel_size_um, backed=True)
    table = p.is_dir() or p.name.lower().endswith(CSV_SUFFIXES)
    return read_paths(path, pixel_size_um, genes=genes if table else None)


def read_layer_data(
    path: str, pixel_size_um: float | None, *, genes=None, progress=None, cancel=None
):
    """Open: read every section of ``path`` and build its layer data (level of detail
    for large sections). Input errors name the file."""
    from ..layers import section_layer_data
    from .fastpoints import FAST_THRESHOLD, fast_layer_kwargs

    name = Path(path).name
    try:
        sections = _read(path, pixel_size_um, genes)
    except BrainAtlasInputError as exc:
        text = str(exc).strip().splitlines()
        msg = text[0] if text else "cannot be read"
        if name in msg:
            raise
        raise BrainAtlasInputError(f"{name}: {msg}") from exc
    out = []
    for i, s in enumerate(sections):
        check_cancel(cancel)
        data, kwargs, ltype = section_layer_data(s)
        if len(data) > FAST_THRESHOLD:  # level of detail, built here off the GUI thread
            data, kwargs = fast_layer_kwargs(data, kwargs)
        out.append((data, kwargs, ltype))
        report(progress, i + 1, len(sections), message=f"read {kwargs.get('name', name)}")
    return out


# ---------------------------------------------------------------------- embed
def embed(adatas, names, *, epochs, n_latent, device, seed, progress=None, cancel=None):
    """Train FuseMap on the sections and embed them (``workflows.embed_sections``).
    Returns its ``Embedded`` (model, embedded copies of the sections, names)."""
    from ..workflows import embed_sections

    return embed_sections(
        adatas,
        epochs=int(epochs),
        device=device,
        seed=int(seed),
        names=names,
        model_options={"n_latent": int(n_latent)},
        progress=progress,
        cancel=cancel,
    )


def joint_clusters(adatas, key: str, resolution: float, *, progress=None, cancel=None):
    """Leiden clusters of the sections' joint embedding ``obsm[key]`` (one label array
    per section)."""
    from ..fusemap.views import joint_clusters as clusters

    return clusters(adatas, key, float(resolution))


def joint_umap(adatas, key: str, *, progress=None, cancel=None):
    """The joint UMAP of ``obsm[key]`` (one (n, 2) array per section)."""
    from ..fusemap.views import joint_umap as umap

    return umap(adatas, key)


# ---------------------------------------------------------------------- annotate
def annotate(
    refs, queries, *, model_dir, labels, method, epochs, smooth, progress=None, cancel=None
):
    """Transfer ``labels`` onto the query sections (``workflows.label_transfer``): from
    the model folder (with the ticked reference sections, or the files beside it), or
    from a FuseMap trained on the reference sections first. Returns its
    ``Transferred``."""
    from ..workflows import label_transfer

    return label_transfer(
        queries,
        model=model_dir or None,
        reference=refs or None,
        labels=list(labels),
        method=method,
        smooth_regions=bool(smooth),
        epochs=int(epochs),
        seed=0,
        device="cpu",
        progress=progress,
        cancel=cancel,
    )


def model_labels(model_dir: str, *, progress=None, cancel=None):
    """The label columns (``{label: sections}``) and genes of the reference files beside
    a model folder (``workflows.transfer.model_reference_labels``)."""
    from ..workflows.transfer import model_reference_labels

    return model_reference_labels(model_dir)


def impute(mapped, gene: str, *, progress=None, cancel=None):
    """Imputed ``gene`` for query sections already mapped (``workflows.impute_mapped``:
    the query mapping of a transfer, or of :func:`map_and_impute`). Returns its
    ``Imputed``."""
    from ..workflows.impute import impute_mapped

    return impute_mapped(mapped, [gene], progress=progress, cancel=cancel)


def map_and_impute(refs, queries, gene: str, *, model_dir, epochs, progress=None, cancel=None):
    """Imputation with no transfer first: map the queries onto the model folder (or a
    FuseMap trained on the reference sections) with ``workflows.map_queries``, then
    impute ``gene``. Returns ``(Mapped, Imputed)``."""
    from ..workflows.impute import impute_mapped
    from ..workflows.transfer import map_queries

    mapped = map_queries(
        queries,
        model=model_dir or None,
        reference=refs or None,
        epochs=int(epochs),
        seed=0,
        device="cpu",
        what="impute",
        progress=progress,
        cancel=cancel,
    )
    return mapped, impute_mapped(mapped, [gene], cancel=cancel)


# ---------------------------------------------------------------------- domains
def train_domains(
    adatas, connectome, ontology, *, p_max, epochs, alpha, resolution, progress, cancel
):
    """SpaCon: map the connectome, build the graphs, train and cluster at ``alpha``
    (``workflows.prepare_domains`` + ``find_domains``). Returns ``(prepared, domains)``."""
    from ..workflows import find_domains, prepare_domains

    prepared = prepare_domains(adatas, connectome, ontology=ontology or None, p_max=p_max)
    check_cancel(cancel)
    found = find_domains(
        prepared,
        alpha=float(alpha),
        epochs=int(epochs),
        resolution=float(resolution),
        progress=progress,
        cancel=cancel,
    )
    return prepared, found


def cluster_domains(prepared, model, alpha, *, resolution, progress=None, cancel=None):
    """Domains again at ``alpha`` without retraining (``workflows.assign_domains``)."""
    from ..workflows import assign_domains

    return assign_domains(prepared, model, alpha=float(alpha), resolution=float(resolution))


# ---------------------------------------------------------------------- AHBA
def process_ahba(donors, atlas, atlas_info, reannotated, corrected, *, progress, cancel):
    """The AHBA pipeline (``workflows.ahba_expression``, abagen's defaults); progress in
    percent with the step's message. Returns the engine's ``AHBAResult``."""
    from ..workflows import ahba_expression

    table = ahba_expression(
        donors,
        atlas=atlas,
        probes_reannotated=reannotated,
        atlas_info=atlas_info,
        corrected_mni=corrected,
        progress=progress,
        cancel=cancel,
    )
    return table.result


# ---------------------------------------------------------------------- registration
def load_atlas(spec: str, ontology: str, *, progress=None, cancel=None):
    """Open the atlas (``workflows.load_atlas``) and precompute its label colours and
    hover table. Returns ``(atlas, colormap dict, features DataFrame)``."""
    import pandas as pd

    from ..workflows import load_atlas as open_atlas

    atlas = open_atlas(spec, ontology or None)
    ids = np.unique(np.asarray(atlas.annotation))
    ids = ids[ids != 0]
    lut = atlas.ontology.lut(ids)
    cmap = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    cmap.update({int(k): np.asarray(v, np.float32) for k, v in lut.items() if int(k)})
    feats = pd.DataFrame(
        {
            "index": np.concatenate([[0], ids]).astype(np.int64),
            "acronym": [""] + [atlas.ontology.acronym(i) for i in ids],
            "name": ["outside the brain"] + [atlas.ontology.name(i) for i in ids],
        }
    )
    return atlas, cmap, feats


def _with_hook(progress, hook):
    """``progress`` that also calls ``hook(iteration, cost_um)`` (tests slow a run)."""
    if hook is None:
        return progress

    def inner(done, total=None, info=None):
        report(progress, done, total, **(info or {}))
        hook(int(done), (info or {}).get("cost_um"))

    return inner


def register_one(adata, atlas, name: str, options: dict, *, progress=None, cancel=None, hook=None):
    """Register one section (a copy holding its cells) with the ``register_section``
    keyword ``options`` (``workflows.register_one``). Returns the RegistrationResult;
    progress per ICP iteration with ``info['cost_um']``."""
    from ..workflows import register_one as register

    reg = register(
        adata, atlas, name=name, progress=_with_hook(progress, hook), cancel=cancel, **options
    )
    return reg.result


def register_batch(jobs, atlas, common: dict, *, progress=None, cancel=None):
    """Register each ``(name, adata copy, midline)`` in turn with the keywords
    ``common`` (without a midline: fitted as a full section, the engine's rotation
    sweep). A section that fails does not stop the others. Returns
    ``{name: RegistrationResult | "failed: <why>" | "cancelled"}``: on Cancel the
    sections done so far are kept and the rest are "cancelled"."""
    from ..workflows import register_one as register
    from ._notify import one_line

    out: dict = {}
    for k, (name, adata, midline) in enumerate(jobs):
        if cancel is not None and cancel():
            break
        kw = dict(common, midline=midline)
        if midline is None:
            kw["hemisphere"] = "both"
        try:
            out[name] = register(adata, atlas, name=name, cancel=cancel, **kw).result
            status = "fitted"
        except Cancelled:
            break
        except Exception as exc:  # noqa: BLE001 - that section fails, the others go on
            status = out[name] = f"failed: {one_line(exc)}"
        report(progress, k + 1, len(jobs), section=name, status=status, message=f"{name}: {status}")
    for name, _, _ in jobs:
        out.setdefault(name, "cancelled")
    return out
