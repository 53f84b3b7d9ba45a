"""The output guard every command and dock goes through, and the shared section writer.

Every output is written through :mod:`napari_brainatlas.io`'s atomic writers (a
temporary file in the target folder with the user's umask, then a rename) and never
over a file the run reads. The ``check_*`` functions refuse a bad output path with one
:class:`~napari_brainatlas.BrainAtlasInputError` *before* a long run starts (the
workflows' ``write_*`` functions check again):

* the output may not be any file the run reads: the inputs given, every file of an input
  folder, a model folder's own files and the reference sections it points to
  (``<model>/../<section>.h5ad``, see :func:`files_read`), compared after resolving
  symbolic links and relative parts, and by inode (a hard link is the same file);
* the folder the output goes into must be a writable folder, or be missing with its
  nearest existing parent a writable folder (it is then created when writing);
* a file output may not be an existing folder, a folder output not an existing file;
* two outputs of one run may not be the same file (:func:`check_distinct`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from anndata import AnnData

from .._errors import BrainAtlasInputError
from ..io import write_h5ad

__all__ = [
    "check_distinct",
    "check_output_file",
    "check_output_folder",
    "check_run_folder",
    "files_read",
    "model_files",
    "write_sections",
]

#: files that mark a folder as a model folder (any model of the package, any layout)
_MODEL_MARKERS = ("config.json", "weights.pt", "query.json", "spacon_config.json", "model.pt")


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _MODEL_MARKERS)


def model_files(folder) -> list[Path]:
    """The files a model folder holds and the reference sections it points to (the
    ``<section>.h5ad`` files beside it named by its config; every ``.h5ad`` beside it
    when the config cannot be read)."""
    folder = Path(folder)
    files = [f for f in folder.rglob("*") if f.is_file()]
    names = None
    try:
        cfg = json.loads((folder / "config.json").read_text())
        names = [str(n) for n in cfg.get("section_names", [])] if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        names = None
    if names is None:
        files += sorted(folder.parent.glob("*.h5ad"))
    else:
        files += [folder.parent / f"{n}.h5ad" for n in names]
    return files


def files_read(inputs: Iterable) -> list[Path]:
    """Every file a run reads given its input paths: the files themselves, the files of
    an input folder (recursively) and, for a model folder, :func:`model_files`."""
    out: list[Path] = []
    for p in inputs:
        if p is None:
            continue
        p = Path(p)
        if _is_model_folder(p):
            out += model_files(p)
        elif p.is_dir():
            out += [f for f in p.rglob("*") if f.is_file()]
        else:
            out.append(p)
    return out


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_input(out: Path, reads: Sequence[Path]) -> None:
    for f in reads:
        if _same(out, f):
            model = next((p for p in Path(f).parents if _is_model_folder(p)), None)
            where = f" of the model folder {model}" if model is not None else ""
            raise BrainAtlasInputError(
                f"refusing to overwrite the input file {out.name}{where}: this run reads it; "
                "choose another output path"
            )


def _check_folder_writable(folder: Path, what: str) -> None:
    """``folder`` is a writable folder, or does not exist yet and its nearest existing
    parent is a writable folder (the writers create it)."""
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            where = f" ({parent} is a file)" if parent is not None else ""
            raise BrainAtlasInputError(f"the {what} {folder} cannot be created{where}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BrainAtlasInputError(f"the {what} {folder} cannot be created in {parent}")
        return
    if not folder.is_dir():
        raise BrainAtlasInputError(f"the {what} {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BrainAtlasInputError(f"the {what} {folder} is not writable")


def check_output_file(path, suffix: str | None = ".h5ad", inputs: Iterable = ()) -> Path:
    """``path`` as a Path after checking its suffix (unless None), that it is not a
    folder, that its folder exists and is writable, and that it is no file the run
    reads (``inputs`` expanded by :func:`files_read`)."""
    if path is None or str(path).strip() == "":
        raise BrainAtlasInputError("the output path is empty")
    out = Path(os.path.expanduser(str(path)))
    if out.is_dir():
        raise BrainAtlasInputError(f"the output {out} is a folder, not a file")
    if suffix is not None and not out.name.lower().endswith(suffix):
        raise BrainAtlasInputError(f"the output must be a {suffix} file, not {out.name}")
    inputs = list(inputs)
    _refuse_input(out, files_read(inputs))
    for p in inputs:
        if p is not None and _is_model_folder(Path(p)):
            if Path(p).resolve() in out.absolute().resolve().parents:
                raise BrainAtlasInputError(
                    f"refusing to write {out.name} into the model folder {p} this run reads; "
                    "choose another output folder"
                )
    _check_folder_writable(out.absolute().parent, "output folder")
    if out.exists() and not os.access(out, os.W_OK) and not os.access(out.parent, os.W_OK):
        raise BrainAtlasInputError(f"the output {out} is not writable")
    return out


def check_output_folder(path, inputs: Iterable = (), names: Iterable[str] = ()) -> Path:
    """``path`` as a Path after checking that it is a folder or can be made one (its
    parent exists and is writable), that it is not an input (model) folder, and that
    none of ``names`` inside it (``<section>.h5ad``, ``model``) is a file the run reads."""
    if path is None or str(path).strip() == "":
        raise BrainAtlasInputError("the output folder path is empty")
    out = Path(os.path.expanduser(str(path)))
    if out.exists() and not out.is_dir():
        raise BrainAtlasInputError(f"the output {out} exists and is not a folder")
    if out.exists():
        _check_folder_writable(out, "output folder")
    else:
        _check_folder_writable(out.absolute().parent, "folder of the output folder")
    reads = files_read(inputs)
    for f in reads:
        if out.exists() and _same(out, f):
            raise BrainAtlasInputError(f"the output folder {out} is an input; choose another")
    for name in names:
        target = out / name
        if target.is_dir():
            inside = [
                f
                for f in reads
                if _same(target, f) or target.resolve() in Path(f).resolve().parents
            ]
            if inside:
                raise BrainAtlasInputError(
                    f"refusing to replace {target}: this run reads it; choose another output folder"
                )
        else:
            _refuse_input(target, reads)
    return out


def check_run_folder(out, names: Iterable[str], inputs: Iterable = (), model: str = "model"):
    """The checks of a run that writes ``out/<name>.h5ad`` per section and its model
    folder ``out/<model>``, made before training: :func:`check_output_folder`, and
    ``out/<model>`` must not exist yet (a finished run is never replaced; choose a new
    folder)."""
    out = check_output_folder(out, inputs, [f"{n}.h5ad" for n in names] + [model])
    target = out / model
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BrainAtlasInputError(
            f"{target} already exists (an earlier run?); choose a new output folder"
        )
    return out


def check_distinct(*paths) -> None:
    """One error when two of the outputs of a run (None skipped) are the same file."""
    seen: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        for q in seen:
            if _same(p, q):
                raise BrainAtlasInputError(f"two outputs of this run are the same file {p.name}")
        seen.append(p)


def write_sections(
    sections: Sequence[AnnData], names: Sequence[str], folder, inputs: Iterable = ()
) -> list[Path]:
    """Write ``folder/<name>.h5ad`` per section (atomically); refuses input files."""
    folder = check_output_folder(folder, inputs, [f"{n}.h5ad" for n in names])
    folder.mkdir(parents=True, exist_ok=True)
    return [write_h5ad(a, folder / f"{n}.h5ad") for a, n in zip(sections, names)]
