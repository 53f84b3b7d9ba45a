"""Download the AHBA microarray donors from the Allen Brain Map (human.brain-map.org).

Each donor is one zip (about 140-300 MB) holding the five csv files of a donor folder;
it is unpacked to ``OUT_DIR/normalized_microarray_donor<id>/`` (abagen's layout), so
:func:`napari_brainatlas.ahba.process_ahba` can be given ``OUT_DIR`` directly.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from .._errors import BrainAtlasInputError
from .ahba import DONOR_FILES

__all__ = ["AHBA_DONORS", "AHBA_URL", "fetch_ahba", "resolve_donors"]

#: download URL of a donor's zip (Allen Brain Map well-known file)
AHBA_URL = "https://human.brain-map.org/api/v2/well_known_file_download/{file_id}"

#: donor id -> (donor name, well-known file id of its normalised microarray zip)
AHBA_DONORS = {
    "9861": ("H0351.2001", 178238387),
    "10021": ("H0351.2002", 178238373),
    "12876": ("H0351.1009", 178238359),
    "14380": ("H0351.1012", 178238316),
    "15496": ("H0351.1015", 178238266),
    "15697": ("H0351.1016", 178236545),
}


def resolve_donors(donors: str | Sequence[str]) -> list[str]:
    """Donor ids ("9861") from ids, names ("H0351.2001") or "all"."""
    if isinstance(donors, str):
        donors = [donors]
    by_name = {name: i for i, (name, _) in AHBA_DONORS.items()}
    out: list[str] = []
    for d in donors:
        d = str(d).strip()
        if d.lower() == "all":
            out.extend(AHBA_DONORS)
        elif d in AHBA_DONORS:
            out.append(d)
        elif d in by_name:
            out.append(by_name[d])
        else:
            raise BrainAtlasInputError(
                f"unknown AHBA donor {d!r}; use one of {', '.join(AHBA_DONORS)} (or "
                f"{', '.join(by_name)}, or 'all')"
            )
    return list(dict.fromkeys(out))


def _complete(folder: Path) -> bool:
    return all((folder / f).exists() for f in DONOR_FILES)


def fetch_ahba(
    donors: str | Sequence[str] = "all",
    out_dir: str | Path = "ahba-data",
    timeout: float = 30.0,
    url: str = AHBA_URL,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Download AHBA donors into ``out_dir``; returns their folders.

    Donors already there are not downloaded again. ``progress(donor, bytes_done,
    bytes_total)`` is called while downloading (total 0 when the server does not say).
    Without internet (or when the server cannot be reached within ``timeout`` seconds)
    raises :class:`BrainAtlasInputError` saying so and what to do instead.
    """
    ids = resolve_donors(donors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for d in ids:
        folder = out_dir / f"normalized_microarray_donor{d}"
        if not _complete(folder):
            _download_donor(d, folder, url.format(file_id=AHBA_DONORS[d][1]), timeout, progress)
        folders.append(folder)
    return folders


def _download_donor(donor: str, folder: Path, url: str, timeout: float, progress) -> None:
    zpath = folder.parent / f".{folder.name}.zip.part"
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "napari-brainatlas"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(zpath, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(donor, done, total)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        if zpath.exists():
            zpath.unlink()
        reason = getattr(exc, "reason", exc)
        raise BrainAtlasInputError(
            f"cannot download AHBA donor {donor} from {url} ({_why(reason)}): no internet "
            f"connection or the Allen server is unreachable; download it elsewhere, unzip "
            f"it into {folder} and give that folder instead"
        ) from None
    tmp = folder.parent / f".{folder.name}.tmp"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        # the zip may hold the csv files at its top or inside one folder
        inner = (
            tmp
            if _complete(tmp)
            else next((p for p in tmp.rglob("SampleAnnot.csv")), tmp / "SampleAnnot.csv").parent
        )
        if not _complete(inner):
            raise BrainAtlasInputError(
                f"the download of AHBA donor {donor} is not a donor "
                f"zip (it lacks {', '.join(DONOR_FILES)})"
            )
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(inner, folder)
    except zipfile.BadZipFile:
        raise BrainAtlasInputError(
            f"the download of AHBA donor {donor} is not a valid zip file; try again"
        ) from None
    finally:
        if zpath.exists():
            zpath.unlink()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _why(reason) -> str:
    text = str(reason).strip().splitlines()
    text = text[0] if text else type(reason).__name__
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in text:
        return "timed out"
    return text[:120]
