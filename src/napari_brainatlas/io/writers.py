"""Atomic writing of results: never a half-written file, never the input overwritten."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = ["atomic_write_text", "publish_mode", "write_h5ad"]


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def publish_mode(path) -> None:
    """Give a temporary file (mode 0600 from ``mkstemp``) the mode any new file of the
    user gets (0666 less the umask) before it is renamed into place."""
    os.chmod(path, 0o666 & ~_umask())


def _check_not_input(adata: AnnData | None, out: Path) -> None:
    meta = adata.uns.get("napari_brainatlas", {}) if adata is not None else {}
    src = meta.get("source") if isinstance(meta, dict) else None
    if (
        src
        and Path(src).exists()
        and (Path(src).resolve() == out.resolve() or (out.exists() and os.path.samefile(src, out)))
    ):
        raise BrainAtlasInputError(
            f"refusing to overwrite the input file {out.name}; choose another output path"
        )


def _make_parent(out: Path) -> None:
    """Create ``out``'s folder; one clear error when a file is in the way, when ``out``
    is a folder, or when the folder cannot be made."""
    if out.is_dir():
        raise BrainAtlasInputError(f"the output {out} is a folder, not a file")
    for p in [out.parent, *out.parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise BrainAtlasInputError(f"cannot write {out}: {p} is a file, not a folder")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrainAtlasInputError(
            f"cannot create the folder {out.parent}: {exc.strerror}"
        ) from exc


def write_h5ad(adata: AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` atomically (temp file in the same folder, then rename).

    Refuses to write over the file the section was read from.
    """
    out = Path(path)
    if out.suffix.lower() != ".h5ad":
        raise BrainAtlasInputError(f"output must be a .h5ad file, not {out.name}")
    _check_not_input(adata, out)
    _make_parent(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".h5ad.tmp", dir=out.parent)
    os.close(fd)
    try:
        if getattr(adata, "isbacked", False):
            adata = adata.to_memory()
        adata.write_h5ad(tmp)
        publish_mode(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write text (JSON, CSV ...) atomically."""
    return atomic_write_bytes(text.encode(), path)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` (a PNG, text encoded as UTF-8 ...) to ``path`` through a temporary
    file in the same folder, with the user's umask."""
    out = Path(path)
    _make_parent(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        publish_mode(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
