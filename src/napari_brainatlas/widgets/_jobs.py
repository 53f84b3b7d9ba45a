"""What the docks run in their worker threads: one function per user action.

Plain Python (no Qt, no napari): each function takes the inputs (copies of the
sections, see :func:`._base.snapshot`), keyword options and ``progress`` / ``cancel``
(:mod:`napari_brainatlas.jobs`), calls the engines and returns what the dock then shows
in the GUI thread. This is the one place the docks call the engines; when the
``workflows`` layer lands these become calls of its functions.

Engines whose callbacks differ from ``progress(done, total, info)`` are adapted here:
FuseMap and its query mapping report ``(epoch, n_epochs, losses)`` (already the
protocol), SpaCon ``(epoch, n_epochs, loss)``, registration ``(iteration, cost)`` (or
the protocol, once the engine moves to it), AHBA yields ``(message, fraction)``.
"""

from __future__ import annotations

import inspect
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
    "process_ahba",
    "read_layer_data",
    "register_batch",
    "register_one",
    "train_domains",
    "train_model",
]

#: .h5ad files larger than this are opened backed (expression stays on disk)
BACKED_BYTES = 2 * 2**30


# ---------------------------------------------------------------------- helpers
def train_model(model, epochs: int, *, progress=None, cancel=None) -> bool:
    """``model.train`` with the epoch keyword the model takes (``epochs``, or the older
    ``max_epochs``); True when it was cancelled (the model keeps the weights reached,
    whether the engine raises :class:`Cancelled` or sets ``model.cancelled``)."""
    params = inspect.signature(model.train).parameters
    key = "epochs" if "epochs" in params else "max_epochs"
    try:
        model.train(**{key: int(epochs)}, progress=progress, cancel=cancel)
    except Cancelled:
        model.cancelled = True
    return bool(getattr(model, "cancelled", False))


def _phase(progress, offset: int, total: int, **extra):
    """A ``progress`` for one phase of a longer job: its units counted after
    ``offset`` of ``total``."""

    def inner(done, n=None, info=None):
        info = dict(info) if isinstance(info, dict) else {}
        info.update(extra)
        report(progress, offset + int(done), total, **info)

    return inner


# ---------------------------------------------------------------------- sections
def read_layer_data(path: str, pixel_size_um: float | None, *, progress=None, cancel=None):
    """Open: read every section of ``path`` and build its layer data (level of detail
    for large sections). Input errors name the file."""
    from ..io import read_sections
    from ..layers import section_layer_data
    from .fastpoints import FAST_THRESHOLD, fast_layer_kwargs

    name = Path(path).name
    big = (
        str(path).lower().endswith(".h5ad")
        and Path(path).is_file()
        and Path(path).stat().st_size > BACKED_BYTES
    )
    try:
        sections = read_sections(path, pixel_size_um=pixel_size_um, backed=big)
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
def embed(adatas, names, *, epochs: int, n_latent: int, device: str, seed: int, progress, cancel):
    """Train FuseMap on the sections (copies: written into) and embed them.
    Returns ``(model, embedded sections)``; a cancelled model keeps its weights."""
    from ..fusemap import FuseMap

    model = FuseMap(adatas, section_names=names, n_latent=n_latent, device=device, seed=seed)
    train_model(model, epochs, progress=progress, cancel=cancel)
    return model, model.write_embeddings(copy=False)


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
def _reference_from_folder(model, model_dir: Path) -> list:
    """The embedded reference sections written beside a model folder
    (``<section>.h5ad``, as ``napari-brainatlas embed`` writes them)."""
    from ..io import read_sections

    files = [model_dir.parent / f"{n}.h5ad" for n in model.section_names]
    if not all(f.is_file() for f in files):
        raise BrainAtlasInputError(
            "the model folder holds no labelled cells: tick the embedded reference "
            "sections (or keep the .h5ad files `napari-brainatlas embed` wrote beside it)"
        )
    out = []
    for f in files:
        for a in read_sections(f):
            out.append(a.to_memory() if getattr(a, "isbacked", False) else a)
    return out


def annotate(
    refs, queries, *, model_dir, labels, method, epochs, smooth, progress=None, cancel=None
):
    """Transfer: [train FuseMap on the reference], map the query onto it, transfer
    ``labels``. Returns ``(mapping, annotated query copies)``."""
    from ..annotate import map_query, transfer_labels
    from ..fusemap import CELL_KEY, FuseMap

    epochs = int(epochs)
    if model_dir:
        model = FuseMap.load(model_dir, device="cpu")
        if not refs:
            refs = _reference_from_folder(model, Path(model_dir))
        if not all(CELL_KEY in a.obsm for a in refs):
            raise BrainAtlasInputError(
                "reference sections need FuseMap embeddings for a model "
                "folder: untick them to use the files beside the folder"
            )
        total, offset = epochs, 0
    else:
        if not refs:
            raise BrainAtlasInputError("tick reference sections or choose a model folder")
        total = 3 * epochs  # pretrain + final (at most) + the query mapping
        model = FuseMap(refs, seed=0, device="cpu")
        if train_model(
            model, epochs, progress=_phase(progress, 0, total, phase="train"), cancel=cancel
        ):
            raise Cancelled("cancelled")
        refs = model.write_embeddings(copy=True)
        offset = 2 * epochs
    for lab in labels:
        if not all(lab in a.obs.columns for a in refs):
            raise BrainAtlasInputError(f"the reference sections have no obs['{lab}'] labels")
    mapping = map_query(
        model,
        queries,
        reference_sections=refs,
        epochs=epochs,
        cancel=cancel,
        progress=_phase(progress, offset, total, phase="map query"),
    )
    if getattr(mapping, "cancelled", False):
        raise Cancelled("cancelled")
    mapped = mapping.write_embeddings(copy=True)
    out = transfer_labels(
        refs, mapped, labels=labels, method=method, smooth_regions=smooth, cancel=cancel
    )
    report(progress, total, total, message="labels transferred")
    return mapping, out


def impute(mapping, adatas, gene: str, *, progress=None, cancel=None) -> list[np.ndarray]:
    """Imputed values of ``gene`` for each (mapped) query section."""
    from ..annotate import impute_genes

    out = []
    for i, ad in enumerate(adatas):
        check_cancel(cancel)
        out.append(impute_genes(mapping, ad, [gene])[gene].to_numpy())
        report(progress, i + 1, len(adatas))
    return out


# ---------------------------------------------------------------------- domains
def train_domains(
    adatas, connectome, ontology, *, p_max, epochs, seed=0, progress=None, cancel=None
):
    """SpaCon: map the connectome, prepare the graph, train. Returns ``(data, model)``."""
    from ..atlas import Ontology
    from ..atlas.demo_atlas import demo_ontology
    from ..domains import load_connectome, prepare, train

    con = load_connectome(connectome, p_max=p_max)
    onto = Ontology.from_file(ontology) if ontology else demo_ontology()
    data = prepare(adatas, con, onto, seed=seed)

    def on_epoch(epoch, n_epochs, loss):
        info = dict(loss) if isinstance(loss, dict) else {"loss": float(loss)}
        report(progress, epoch, n_epochs, **info)

    model = train(
        data, epochs=int(epochs), seed=seed, num_threads=1, progress=on_epoch, cancel=cancel
    )
    return data, model


def cluster_domains(model, alpha, *, resolution, seed=0, progress=None, cancel=None):
    """Re-mix the stored embeddings at ``alpha`` and cluster. Returns ``(alpha, labels)``."""
    return alpha, model.domains(alpha, resolution=resolution, seed=seed)


# ---------------------------------------------------------------------- AHBA
def process_ahba(donors, atlas, atlas_info, reannotated, corrected, *, progress, cancel):
    """The AHBA pipeline (abagen's defaults); progress in percent with the step's
    message. Returns the :class:`~napari_brainatlas.ahba.AHBAResult`."""
    from ..ahba.pipeline import iter_process_ahba

    gen = iter_process_ahba(
        donors, atlas, reannotated, atlas_info=atlas_info, corrected_mni=corrected
    )
    while True:
        check_cancel(cancel)
        try:
            message, fraction = next(gen)
        except StopIteration as stop:
            return stop.value
        report(progress, int(np.rint(100 * fraction)), 100, message=str(message))


# ---------------------------------------------------------------------- registration
def load_atlas(spec: str, ontology: str, *, progress=None, cancel=None):
    """Open the atlas and precompute its label colours and hover table.
    Returns ``(atlas, colormap dict, features DataFrame)``."""
    import pandas as pd

    from ..atlas import Atlas

    atlas = Atlas.load(spec, ontology=ontology or None)
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


def _registration_progress(progress, max_iter: int | None, hook=None):
    """Adapt the engine's ``progress(iteration, cost)`` (or, once it moves to the
    protocol, ``progress(done, total, info)``) to the protocol; ``info['cost_um']``
    carries the ICP cost. ``hook(i, cost)`` is called after every value (tests)."""

    def inner(*args):
        if len(args) == 2:
            done, cost = args
            total, info = max_iter, {"cost_um": float(cost)}
        else:
            done, total, info = args
            info = dict(info) if isinstance(info, dict) else {"cost_um": float(info)}
            cost = info.get("cost_um", info.get("cost"))
            if cost is not None:
                info["cost_um"] = float(cost)
        report(progress, int(done), total, **info)
        if hook is not None:
            hook(int(done), cost)

    return inner


def register_one(adata, atlas, kwargs: dict, *, progress=None, cancel=None, hook=None):
    """Register one section (a copy holding its cells) with the ``register_section``
    keywords ``kwargs``. Returns the RegistrationResult."""
    from ..register import register_section

    cb = _registration_progress(progress, kwargs.get("max_iter"), hook)
    return register_section(adata, atlas, progress=cb, cancel=cancel, **kwargs)


def register_batch(jobs, atlas, common: dict, *, progress=None, cancel=None):
    """Register each ``(name, adata copy, midline)`` in turn with the keywords
    ``common`` (without a midline: fitted as a full section, the engine's rotation
    sweep). A section that fails does not stop the others. Returns
    ``{name: RegistrationResult | "failed: <why>" | "cancelled"}``: on Cancel the
    sections done so far are kept and the rest are "cancelled"."""
    from ..register import register_section
    from ._notify import one_line

    out: dict = {}
    for k, (name, adata, midline) in enumerate(jobs):
        if cancel is not None and cancel():
            break
        kw = dict(common)
        if midline is None:
            kw["hemisphere"] = "both"
        try:
            out[name] = register_section(
                adata, atlas, midline=midline, section_name=name, cancel=cancel, **kw
            )
            status = "fitted"
        except Cancelled:
            break
        except Exception as exc:  # noqa: BLE001 - that section fails, the others go on
            status = out[name] = f"failed: {one_line(exc)}"
        report(progress, k + 1, len(jobs), section=name, status=status, message=f"{name}: {status}")
    for name, _, _ in jobs:
        out.setdefault(name, "cancelled")
    return out
