"""Structure ontology of an atlas: id -> acronym, name, colour, parent, depth.

Reads the Allen forms (structure tree ``.csv`` with ``parent_structure_id`` and
``color_hex_triplet``; structure graph ``.json`` with nested ``children``) and the
BrainGlobe ``structures.json`` list form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError

__all__ = ["Ontology"]


def _hex_to_rgb(hex_triplet: str) -> tuple[int, int, int]:
    h = str(hex_triplet).strip().lstrip("#")
    if len(h) != 6:
        return (200, 200, 200)
    return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _int_column(values: pd.Series, what: str) -> pd.Series:
    """``values`` as int64; one clear error naming the first value that is no integer."""
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna() | (np.isfinite(num) & (num != np.round(num)))
    if bad.any():
        first = values[bad].iloc[0]
        raise BrainAtlasInputError(
            f"ontology structure {what}s must be integers; {int(bad.sum())} are not "
            f"(first: {first!r})"
        )
    return num.astype(np.int64)


class Ontology:
    """A tree of brain structures.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per structure with columns ``id`` (int), ``acronym``, ``name``,
        ``parent`` (int, -1 for the root) and ``color`` (``"RRGGBB"``).
    """

    def __init__(self, table: pd.DataFrame):
        need = {"id", "acronym", "name", "parent", "color"}
        missing = need - set(table.columns)
        if missing:
            raise BrainAtlasInputError(f"ontology lacks columns {sorted(missing)}")
        t = table.loc[:, ["id", "acronym", "name", "parent", "color"]].copy()
        t["id"] = _int_column(t["id"], "id")
        t["parent"] = _int_column(t["parent"].fillna(-1), "parent")
        t["acronym"] = t["acronym"].astype(str)
        t["name"] = t["name"].astype(str)
        t["color"] = t["color"].fillna("C8C8C8").astype(str)
        if t["id"].duplicated().any():
            raise BrainAtlasInputError("ontology has duplicate structure ids")
        self.table = t.set_index("id", drop=False)
        self._children: dict[int, list[int]] = {}
        for sid, parent in zip(t["id"], t["parent"]):
            self._children.setdefault(int(parent), []).append(int(sid))
        self._depth: dict[int, int] = {}
        self._path: dict[int, tuple[int, ...]] = {}
        ids = set(self.table.index)
        for sid in t["id"]:
            path = [int(sid)]
            seen = {int(sid)}
            p = int(self.table.at[sid, "parent"])
            while p in ids and p not in seen:
                path.append(p)
                seen.add(p)
                p = int(self.table.at[p, "parent"])
            self._path[int(sid)] = tuple(reversed(path))
            self._depth[int(sid)] = len(path) - 1
        self._by_acronym = {a: int(i) for i, a in zip(t["id"], t["acronym"])}

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_file(cls, path: str | Path) -> Ontology:
        """Read an Allen structure tree (.csv) or structure graph / BrainGlobe list (.json)."""
        path = Path(path)
        if not path.exists():
            raise BrainAtlasInputError(f"ontology file not found: {path}")
        if path.suffix.lower() == ".csv":
            return cls.from_allen_csv(path)
        if path.suffix.lower() == ".json":
            return cls.from_json(path)
        raise BrainAtlasInputError(f"unknown ontology format {path.suffix!r} (use .csv or .json)")

    @classmethod
    def from_allen_csv(cls, path: str | Path) -> Ontology:
        try:
            df = pd.read_csv(path)
        except Exception as exc:
            raise BrainAtlasInputError(f"cannot read ontology {path}: {exc}") from exc
        if "parent_structure_id" not in df.columns and "structure_id_path" in df.columns:
            df["parent_structure_id"] = df["structure_id_path"].map(
                lambda s: int(str(s).strip("/").split("/")[-2]) if str(s).count("/") > 2 else -1
            )
        cols = {"parent_structure_id": "parent", "color_hex_triplet": "color"}
        df = df.rename(columns=cols)
        if "color" not in df.columns:
            df["color"] = "C8C8C8"
        return cls(df)

    @classmethod
    def from_json(cls, path: str | Path) -> Ontology:
        try:
            data = json.loads(Path(path).read_text())
        except Exception as exc:
            raise BrainAtlasInputError(f"cannot read ontology {path}: {exc}") from exc
        rows: list[dict] = []
        if isinstance(data, dict) and "msg" in data:  # Allen API structure graph
            stack = [(node, -1) for node in data["msg"]]
            while stack:
                node, parent = stack.pop()
                rows.append(
                    {
                        "id": node["id"],
                        "acronym": node["acronym"],
                        "name": node["name"],
                        "parent": node.get("parent_structure_id") or parent,
                        "color": node.get("color_hex_triplet", "C8C8C8"),
                    }
                )
                stack.extend((c, node["id"]) for c in node.get("children", []))
        elif isinstance(data, list):  # BrainGlobe structures.json
            for node in data:
                path_ = node.get("structure_id_path") or [node["id"]]
                rgb = node.get("rgb_triplet", [200, 200, 200])
                rows.append(
                    {
                        "id": node["id"],
                        "acronym": node["acronym"],
                        "name": node["name"],
                        "parent": path_[-2] if len(path_) > 1 else -1,
                        "color": "{:02X}{:02X}{:02X}".format(*tuple(int(v) for v in rgb)),
                    }
                )
        else:
            raise BrainAtlasInputError(f"unrecognised ontology json in {path}")
        return cls(pd.DataFrame(rows))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, sid: int) -> bool:
        return int(sid) in self.table.index

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    def acronym(self, sid: int) -> str:
        return str(self.table.at[int(sid), "acronym"]) if int(sid) in self else ""

    def name(self, sid: int) -> str:
        return str(self.table.at[int(sid), "name"]) if int(sid) in self else ""

    def parent(self, sid: int) -> int:
        return int(self.table.at[int(sid), "parent"])

    def children(self, sid: int) -> list[int]:
        return list(self._children.get(int(sid), []))

    def depth(self, sid: int) -> int:
        return self._depth[int(sid)]

    def path(self, sid: int) -> tuple[int, ...]:
        """Ids from the root down to ``sid`` (inclusive)."""
        return self._path[int(sid)]

    def rgb(self, sid: int) -> tuple[int, int, int]:
        return _hex_to_rgb(self.table.at[int(sid), "color"]) if int(sid) in self else (0, 0, 0)

    def id_of(self, acronym: str) -> int:
        try:
            return self._by_acronym[acronym]
        except KeyError:
            raise BrainAtlasInputError(f"unknown structure acronym {acronym!r}") from None

    def ancestor_at_depth(self, sid: int, depth: int) -> int:
        """The ancestor of ``sid`` at ``depth`` (or ``sid`` itself if it is shallower)."""
        p = self._path.get(int(sid))
        if p is None:
            return int(sid)
        return p[min(depth, len(p) - 1)]

    def is_descendant(self, sid: int, ancestor: int) -> bool:
        p = self._path.get(int(sid))
        return p is not None and int(ancestor) in p

    def descendants(self, sid: int) -> list[int]:
        out, stack = [], [int(sid)]
        while stack:
            s = stack.pop()
            out.append(s)
            stack.extend(self._children.get(s, []))
        return out

    def map_ids(self, ids: np.ndarray, fn) -> np.ndarray:
        """Apply ``fn(id)`` to an id array through its unique values (fast for volumes)."""
        ids = np.asarray(ids)
        uniq, inv = np.unique(ids, return_inverse=True)
        vals = np.array([fn(int(u)) for u in uniq], dtype=object if uniq.size else float)
        return vals[inv].reshape(ids.shape)

    def acronyms(self, ids: np.ndarray) -> np.ndarray:
        """Acronyms for an id array; id 0 (outside the brain) maps to ``""``."""
        return self.map_ids(ids, lambda s: self.acronym(s) if s else "").astype(str)

    def lut(self, ids: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """``{id: RGBA float}`` colour table (id 0 transparent) for napari Labels layers."""
        ids = self.ids if ids is None else np.unique(ids)
        out = {0: np.zeros(4)}
        for s in ids:
            if int(s) == 0:
                continue
            out[int(s)] = np.array([*np.array(self.rgb(s)) / 255.0, 1.0])
        return out

    def to_frame(self) -> pd.DataFrame:
        t = self.table.copy()
        t["depth"] = [self._depth[int(i)] for i in t["id"]]
        return t.reset_index(drop=True)
