"""The one shape every trainable model shares (FuseMap, QueryMapping, SpaConModel, CellFormer).

Modelled on scvi-tools' ``BaseModelClass``: a model is built from its data and a frozen
settings dataclass, trained in place, and saved to / loaded from a folder.

>>> model = FuseMap(sections, settings=FuseMapSettings(n_latent=32), seed=0)
>>> history = model.train(epochs=10, progress=progress, cancel=cancel)
>>> model.is_trained, model.history[-1]["val_loss"]
>>> model.save("model_dir")                  # atomic; overwrite=True replaces a model folder
>>> model = FuseMap.load("model_dir", sections)

* ``train(epochs=None, *, progress=None, cancel=None) -> history``: ``epochs`` None means
  the settings' default; ``progress(done, total, info)`` after every epoch (``info`` the
  epoch's record, a dict of plain values); ``cancel()`` polled between steps, and when it
  says so ``train`` raises :class:`~napari_brainatlas.Cancelled` (each model's docstring
  says what it holds then; ``is_trained`` keeps the value it had before the call).
* ``history``: one dict per finished epoch, over every ``train`` call.
* ``is_trained``: True once a ``train`` call has finished (or the loaded model was).
* ``save(path, overwrite=False) -> Path`` and ``Model.load(path, ...)``.

The model folder (the same for every model)::

    config.json    {"model": <class name>, "format_version": N, "settings": {...}, ...}
    weights.pt     torch.save(state_dict): tensors only, read with
                   torch.load(weights_only=True)
    history.json   [ {per-epoch record}, ... ]
    *.csv          tables: gene lists, gene embedding, per-section gene panels
    latent.npz     per-cell arrays where the model keeps them (numpy, no pickles)

:meth:`TrainableModel.save` writes everything into a temporary sibling folder and then
renames it into place, so an interrupted save leaves the old folder (or, between the two
renames, nothing) and never a half-written one; files and folders get the user's umask.
:meth:`TrainableModel.load` checks every file it reads and answers anything broken
(missing, empty or truncated files, JSON that does not parse, missing keys, a folder of
another model class or a newer format, weights that do not fit the config, a checkpoint
holding pickled Python objects) with one :class:`~napari_brainatlas.BrainAtlasInputError`
naming the folder and the file. Folders written before this layout (format 1 of FuseMap,
QueryMapping and SpaCon, format 2 of CellFormer) are read as they are; they are never
rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import secrets
import shutil
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ._errors import BrainAtlasInputError

__all__ = [
    "ModelFolder",
    "TrainableModel",
    "load_state",
    "resolve_settings",
    "save_atomically",
    "settings_from_dict",
    "settings_to_dict",
]

#: file names every model folder shares
CONFIG, WEIGHTS, HISTORY = "config.json", "weights.pt", "history.json"
#: files that mark a folder as a model folder of this package (current or older layouts)
_MODEL_MARKERS = (CONFIG, WEIGHTS, "query.json", "spacon_config.json", "model.pt")


# --------------------------------------------------------------------------- settings
def resolve_settings(settings_cls, settings, options: dict, what: str):
    """``settings`` (default: ``settings_cls()``) with ``options`` applied by
    :func:`dataclasses.replace`; an unknown option is one BrainAtlasInputError."""
    if settings is None:
        settings = settings_cls()
    elif not isinstance(settings, settings_cls):
        raise BrainAtlasInputError(
            f"settings must be a {settings_cls.__name__}, not {type(settings).__name__}"
        )
    if not options:
        return settings
    known = {f.name for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BrainAtlasInputError(
            f"unknown {what} option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    return dataclasses.replace(settings, **options)


def settings_to_dict(settings) -> dict:
    """Plain JSON values (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()
    }


def settings_from_dict(settings_cls, values: dict, folder: ModelFolder | None = None):
    """The settings a config.json holds; a bad value names the file."""
    try:
        known = {f.name for f in dataclasses.fields(settings_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BrainAtlasInputError(f"unknown settings {', '.join(map(repr, unknown))}")
        return settings_cls(**values)
    except (BrainAtlasInputError, TypeError, ValueError) as exc:
        if folder is None:
            raise
        raise folder.error(CONFIG, f"holds bad settings: {exc}") from None


def coerce_fields(obj, casts: dict[str, Callable]) -> None:
    """In a frozen dataclass's ``__post_init__``: convert fields (``int("3")`` ...);
    a value that does not convert is one BrainAtlasInputError naming the field."""
    for name, cast in casts.items():
        value = getattr(obj, name)
        if value is None:
            continue
        try:
            object.__setattr__(obj, name, cast(value))
        except (TypeError, ValueError):
            raise BrainAtlasInputError(f"{name} cannot be {value!r}") from None


# --------------------------------------------------------------------------- saving
def _is_model_folder(path: Path) -> bool:
    return any((path / m).exists() for m in _MODEL_MARKERS)


def save_atomically(path, write: Callable[[Path], None], overwrite: bool | None = False) -> Path:
    """Run ``write(tmp)`` on a new temporary sibling folder of ``path`` and rename it to
    ``path``. An existing non-empty ``path`` is replaced only when it is a model folder
    and ``overwrite`` is True (``None``: the old default of the models, replace it with a
    DeprecationWarning); a failed ``write`` leaves ``path`` untouched."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BrainAtlasInputError(f"{path} exists and is not a folder")
    replace = path.is_dir() and any(path.iterdir())
    if replace:
        if not _is_model_folder(path):
            raise BrainAtlasInputError(
                f"{path} is a folder but not a model folder: not replacing it"
            )
        if overwrite is None:
            warnings.warn(
                f"saving over the existing model folder {path} without overwrite=True is "
                "deprecated (the default is becoming overwrite=False); pass overwrite=True",
                DeprecationWarning,
                stacklevel=3,
            )
        elif not overwrite:
            raise BrainAtlasInputError(
                f"{path} already holds a model: pass overwrite=True to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = path.parent / f".{path.name}.saving-{token}"
    tmp.mkdir()  # mode 0o777 & ~umask, as any folder the user makes
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir():
        old = path.parent / f".{path.name}.old-{token}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    return path


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_json_default))


def _json_default(v):
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return float(v)


def save_state(module: torch.nn.Module, path: Path) -> None:
    """``torch.save`` of the module's state dict, every tensor on the CPU."""
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)


# --------------------------------------------------------------------------- loading
class ModelFolder:
    """Reads the files of one model folder; every problem is one BrainAtlasInputError
    naming the folder and the file."""

    def __init__(self, path, model_name: str):
        self.path = Path(path)
        self.model_name = model_name
        if not self.path.exists():
            raise BrainAtlasInputError(f"model folder {self.path} does not exist")
        if not self.path.is_dir():
            raise BrainAtlasInputError(f"{self.path} is not a model folder (it is a file)")

    def error(self, name: str, problem: str) -> BrainAtlasInputError:
        return BrainAtlasInputError(
            f"cannot load the {self.model_name} model folder {self.path}: {name} {problem}"
        )

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def _file(self, name: str) -> Path:
        p = self.path / name
        if not p.is_file():
            if name == CONFIG:
                raise BrainAtlasInputError(
                    f"{self.path} is not a {self.model_name} model folder: config.json is missing"
                )
            raise self.error(name, "is missing")
        if p.stat().st_size == 0:
            raise self.error(name, "is empty")
        return p

    def json(self, name: str, kind: type = dict):
        p = self._file(name)
        try:
            obj = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise self.error(name, "is not valid JSON (cut short or damaged)") from None
        if not isinstance(obj, kind):
            raise self.error(name, f"does not hold a JSON {'object' if kind is dict else 'list'}")
        return obj

    def config(self, accepted_versions: tuple[int, ...], keys: tuple[str, ...] = ()) -> dict:
        """config.json, checked: model class, format version, required keys."""
        cfg = self.json(CONFIG)
        for k in ("model", "format_version"):
            if k not in cfg:
                raise self.error(CONFIG, f"has no {k!r} key")
        if cfg["model"] != self.model_name:
            raise self.error(CONFIG, f"holds a {cfg['model']} model, not a {self.model_name}")
        v = cfg["format_version"]
        if not isinstance(v, int) or v not in accepted_versions:
            newest = max(accepted_versions)
            why = (
                "written by a newer version of napari-brainatlas"
                if isinstance(v, int) and v > newest
                else "not one this version reads (train the model again)"
            )
            raise self.error(
                CONFIG,
                f"holds a {self.model_name} model of format {v}, {why} "
                f"(formats read: {', '.join(map(str, accepted_versions))})",
            )
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise self.error(
                CONFIG,
                f"lacks the key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            )
        return cfg

    def weights(self, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
        """A state dict read with ``torch.load(weights_only=True)``: tensors only."""
        p = self._file(name)
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise self.error(
                name,
                "holds pickled Python objects, not plain weights; it is not read, as "
                "unpickling can run code (save the model again with this version)",
            ) from None
        except Exception:  # noqa: BLE001 - torch raises RuntimeError, KeyError, EOFError ...
            raise self.error(name, "is cut short or not a torch weights file") from None
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise self.error(name, "does not hold a state dict (names -> tensors)")
        return state

    def history(self, name: str = HISTORY) -> list[dict]:
        hist = self.json(name, list)
        if not all(isinstance(h, dict) for h in hist):
            raise self.error(name, "is not a list of per-epoch records")
        return hist

    def csv(self, name: str, **kw) -> pd.DataFrame:
        p = self._file(name)
        try:
            return pd.read_csv(p, **kw)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
            raise self.error(name, "is not a readable csv table") from None

    def npz(self, name: str, keys: list[str]) -> dict[str, np.ndarray]:
        p = self._file(name)
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in keys if k not in z.files]
                if missing:
                    raise self.error(name, f"lacks the arrays {', '.join(missing)}")
                return {k: np.asarray(z[k]) for k in keys}
        except BrainAtlasInputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise self.error(name, "is cut short or not a numpy archive") from None

    def npy(self, name: str) -> np.ndarray:
        p = self._file(name)
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            raise self.error(name, "is cut short or not a numpy array") from None


def load_state(module: torch.nn.Module, state: dict, folder: ModelFolder, name=WEIGHTS) -> None:
    """``module.load_state_dict(state)`` after checking that every tensor is there and has
    the shape the config gives the module (a wrong latent size, another gene panel ...)."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected tensor {extra[0]!r}"
        raise folder.error(name, f"does not fit config.json: it {what}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise folder.error(
                name,
                f"does not fit config.json: {k} has shape {tuple(state[k].shape)}, "
                f"the config gives {tuple(v.shape)} (another latent size or gene panel?)",
            )
    module.load_state_dict(state)


# --------------------------------------------------------------------------- base class
class TrainableModel(ABC):
    """Base class of the trainable models (see the module docstring).

    Subclasses set :attr:`format_version` and :attr:`accepted_versions`, and implement
    :meth:`train`, :meth:`_write_files` (weights and tables into a folder; returns what
    config.json holds besides ``model`` and ``format_version``) and :meth:`_from_folder`
    (build the model from a :class:`ModelFolder` and its config).
    """

    #: format of the folder :meth:`save` writes
    format_version: ClassVar[int] = 1
    #: formats :meth:`load` reads (older layouts through :meth:`_legacy_config`)
    accepted_versions: ClassVar[tuple[int, ...]] = (1,)

    _history: list
    _is_trained: bool = False

    # ------------------------------------------------------------------ state
    @property
    def history(self) -> list[dict]:
        """One dict per finished epoch (every ``train`` call appends)."""
        if not hasattr(self, "_history"):
            self._history = []
        return self._history

    @history.setter
    def history(self, value) -> None:
        self._history = list(value)

    @property
    def is_trained(self) -> bool:
        """True once a ``train`` call finished (a cancelled one leaves it as it was)."""
        return bool(self._is_trained)

    @is_trained.setter
    def is_trained(self, value: bool) -> None:
        self._is_trained = bool(value)

    # ------------------------------------------------------------------ protocol
    @abstractmethod
    def train(self, epochs: int | None = None, *, progress=None, cancel=None) -> list[dict]:
        """Train in place; returns :attr:`history`."""

    @abstractmethod
    def _write_files(self, folder: Path) -> dict[str, Any]:
        """Write weights and tables into ``folder``; return config.json's other keys."""

    @classmethod
    @abstractmethod
    def _from_folder(cls, folder: ModelFolder, cfg: dict, *args, **kwargs):
        """Build the model from a checked folder and its config."""

    @classmethod
    def _legacy_config(cls, folder: ModelFolder) -> dict | None:
        """The config of a folder in an older layout (None: the current layout)."""
        return None

    def write_folder(self, folder: Path) -> Path:
        """Write the model folder's files into ``folder`` (not atomically; :meth:`save`
        wraps this). Used directly to nest a model inside another one's folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        extra = self._write_files(folder)
        cfg = {"model": type(self).__name__, "format_version": self.format_version, **extra}
        write_json(folder / CONFIG, cfg)
        write_json(folder / HISTORY, self.history)
        return folder

    def save(self, path, overwrite: bool | None = None) -> Path:
        """Write the model folder ``path`` atomically and return it.

        ``overwrite``: replace an existing model folder (True) or refuse (False). Not given:
        False, except that for one release an existing model folder is still replaced
        (the models' old default) with a DeprecationWarning. A non-empty folder that is
        not a model folder is never replaced."""
        return save_atomically(path, self.write_folder, overwrite)

    @classmethod
    def load(cls, path, *args, **kwargs):
        """Read a model folder written by :meth:`save` (or by an older version)."""
        folder = ModelFolder(path, cls.__name__)
        cfg = cls._legacy_config(folder)
        if cfg is None:
            cfg = folder.config(cls.accepted_versions, ("settings",))
        return cls._from_folder(folder, cfg, *args, **kwargs)
