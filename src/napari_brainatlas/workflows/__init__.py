"""One function per user task, shared by the command line and the docks.

Plain Python: no Qt, no argparse, no printing. The shape follows scanpy's tools and
napari-spatialdata's Qt-free model: AnnData objects (or paths) in, keyword-only
options, results out as new AnnData objects, models and tables inside a small result
dataclass that also says what to print (``summary()`` / ``lines()``). A workflow never
modifies its input AnnData objects nor any input file; each ``write_*`` function writes
its outputs atomically through :mod:`napari_brainatlas.io`, so a dock's "Save" and the
command line's ``--out`` write the same files.

Long work reports through :mod:`napari_brainatlas.jobs`: ``progress(done, total, info)``
after each unit (``done == 0`` with ``info['message']``: a header line before the
work starts) and ``cancel()`` polled between units; a cancelled run raises
:class:`napari_brainatlas.Cancelled`. Bad input raises one
:class:`~napari_brainatlas.BrainAtlasInputError`.

Modules (imported on first use, so ``import napari_brainatlas.workflows`` is cheap):

=============  ================================================================
sections       read paths into sections, name sections (``read_paths``, ...)
register       one section, many, an ordered series (``register_one``, ...)
embed          FuseMap embedding, the model folder (``embed_sections``, ...)
transfer       label transfer onto query sections (``label_transfer``, ...)
impute         genes a section never measured (``impute_sections``)
domains        SpaCon domains (``prepare_domains``, ``find_domains``, ...)
ahba           Allen Human Brain Atlas parcel x gene table (``ahba_expression``)
cellformer     the transformer cell encoder (``train_cellformer``)
demo           the headless main job on the demo (``run_demo``)
analyses       gene modules, panels, proximity (``find_modules``, ``design_panel``, ...)
ccf_export     the per-cell CCF table of registered sections (``export_ccf``, ...)
outputs        output-path checks and the per-section writer
=============  ================================================================
"""

from __future__ import annotations

import importlib

__all__ = [
    "ahba_expression",
    "cell_proximity",
    "design_panel",
    "find_modules",
    "score_sections",
    "write_modules",
    "write_panel",
    "write_proximity",
    "write_scored",
    "as_sections",
    "assign_domains",
    "ccf_cells",
    "describe_file",
    "embed_sections",
    "export_ccf",
    "fetch_donors",
    "find_domains",
    "impute_sections",
    "load_atlas",
    "load_fusemap",
    "load_reference",
    "place_series",
    "prepare_domains",
    "read_paths",
    "reference_files",
    "register_many",
    "register_one",
    "run_demo",
    "section_name",
    "section_names",
    "select_section",
    "train_cellformer",
    "label_transfer",
    "write_ahba",
    "write_ccf_cells",
    "write_cellformer",
    "write_domains",
    "write_embedding",
    "write_imputed",
    "write_registered",
    "write_series",
    "write_transfer",
]

_WHERE = {
    "ahba": ("ahba_expression", "fetch_donors", "write_ahba"),
    "analyses": (
        "cell_proximity",
        "design_panel",
        "find_modules",
        "score_sections",
        "write_modules",
        "write_panel",
        "write_proximity",
        "write_scored",
    ),
    "ccf_export": ("ccf_cells", "export_ccf", "write_ccf_cells"),
    "cellformer": ("train_cellformer", "write_cellformer"),
    "demo": ("run_demo",),
    "domains": ("assign_domains", "find_domains", "prepare_domains", "write_domains"),
    "embed": ("embed_sections", "load_fusemap", "write_embedding"),
    "impute": ("impute_sections", "write_imputed"),
    "register": (
        "load_atlas",
        "place_series",
        "register_many",
        "register_one",
        "write_registered",
        "write_series",
    ),
    "sections": (
        "as_sections",
        "describe_file",
        "read_paths",
        "section_name",
        "section_names",
        "select_section",
    ),
    "transfer": ("label_transfer", "load_reference", "reference_files", "write_transfer"),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
