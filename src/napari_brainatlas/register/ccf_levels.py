"""CCF structure ids at a chosen level of the ontology: major divisions, cortical layers,
hippocampal fields, thalamic nuclei, or a fixed ontology depth.

Levels (``level``):

* ``"division"``: the 14 major divisions of :data:`.metrics.CCF_MAJOR_DIVISIONS` (the
  ones the registration engine uses; :func:`.metrics.division_index`);
* ``"layer"``: cortical layer of isocortex cells (``L1``, ``L2/3``, ``L4``, ``L5``,
  ``L6a``, ``L6b``, read from the structure acronym's suffix, e.g. ``SSp-m2/3`` ->
  ``L2/3``); every other cell keeps its major division;
* ``"field"``: hippocampal field of HPF cells (``CA1``, ``CA2``, ``CA3``, ``DG``,
  ``SUB``, ``ProS``, ``PRE``, ``POST``, ``PAR``, ``ENTl``, ``ENTm``, ``HATA``, ``APr``,
  ``IG``, ``FC``; ``HPF`` where none applies); others their major division;
* ``"nucleus"``: thalamic nucleus of TH cells, the structure at ontology depth 7 under
  TH (``VP``, ``RT``, ``MD``, ``LGd``, ...; ``TH`` for cells annotated higher up);
  others their major division;
* ``"subdivision"``: the structure one level below the cell's major division (OLF ->
  MOB, AON, PIR...; STR -> STRd, STRv, LSX, sAMY; HY -> PVZ, PVR, MEZ, LZ; CB -> CBX,
  CBN; fiber tracts -> cm, lfbs...); the division itself for cells annotated there;
* ``"fine"``: isocortex -> layer, HPF -> field, TH -> nucleus, every other cell its
  subdivision: the default finer level;
* an int ``N`` (or ``"depth6"``): the ancestor at ontology depth ``N`` (root = 0);
  structures above that depth keep their own acronym.

Labels are strings; ``""`` for cells outside the brain (id 0) or outside every major
division (at the division-based levels). :func:`level_divisions` gives each label's major
division index (the codes the label-guided plane search reads; -1 unknown).
"""

from __future__ import annotations

import re

import numpy as np

from .._errors import BrainAtlasInputError
from .metrics import division_index, label_division_index

__all__ = [
    "HIPPOCAMPAL_FIELDS",
    "LEVELS",
    "LAYER_LABELS",
    "ccf_level_labels",
    "level_divisions",
    "parse_level",
]

#: the named levels (besides an ontology depth)
LEVELS = ("division", "layer", "field", "nucleus", "subdivision", "fine")
LAYER_LABELS = ("L1", "L2/3", "L4", "L5", "L6a", "L6b")
HIPPOCAMPAL_FIELDS = (
    "CA1",
    "CA2",
    "CA3",
    "DG",
    "SUB",
    "ProS",
    "PRE",
    "POST",
    "PAR",
    "ENTl",
    "ENTm",
    "HATA",
    "APr",
    "IG",
    "FC",
)
#: ontology depth of the thalamic nuclei of the "nucleus" level (TH is at depth 4)
NUCLEUS_DEPTH = 7
_LAYER_RE = re.compile(r"(1|2/3|4|5|6a|6b)$")
_TABLES: dict = {}


def parse_level(level) -> str | int:
    """``"division"``, ``"layer"``, ``"field"``, ``"nucleus"``, ``"fine"`` or an int depth
    (``3``, ``"3"``, ``"depth3"``). Raises :class:`BrainAtlasInputError` otherwise."""
    if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
        if level < 0:
            raise BrainAtlasInputError(f"an ontology depth must be >= 0, not {level}")
        return int(level)
    s = str(level).strip().lower()
    if s in LEVELS:
        return s
    m = re.fullmatch(r"(?:depth)?(\d+)", s)
    if m:
        return int(m.group(1))
    raise BrainAtlasInputError(
        f"label level must be one of {', '.join(LEVELS)} or an ontology depth, not {level!r}"
    )


def level_name(level) -> str:
    """Name of a level for keys: ``division``, ``fine``, ``depth6``..."""
    lv = parse_level(level)
    return f"depth{lv}" if isinstance(lv, int) else lv


def _label_of(onto, sid: int, div_name: str, lv) -> str:
    if isinstance(lv, int):
        return onto.acronym(onto.ancestor_at_depth(sid, lv))
    if lv == "division" or not div_name:
        return div_name
    path = onto.path(sid)
    acr = onto.acronym(sid)
    if div_name == "Isocortex" and lv in ("layer", "fine"):
        m = _LAYER_RE.search(acr)
        return f"L{m.group(1)}" if m else div_name
    if div_name == "HPF" and lv in ("field", "fine"):
        for p in reversed(path):
            a = onto.acronym(p)
            if a in HIPPOCAMPAL_FIELDS:
                return a
        return div_name
    if div_name == "TH" and lv in ("nucleus", "fine"):
        return onto.acronym(path[NUCLEUS_DEPTH]) if len(path) > NUCLEUS_DEPTH else div_name
    if lv in ("subdivision", "fine"):
        acrs = [onto.acronym(p) for p in path]
        k = acrs.index(div_name) if div_name in acrs else -1
        return acrs[k + 1] if 0 <= k < len(acrs) - 1 else div_name
    return div_name


def _table(atlas, lv) -> dict:
    key = (id(atlas.ontology), lv)
    if key not in _TABLES:
        onto = atlas.ontology
        ids = np.asarray(onto.ids, dtype=np.int64)
        div, names = division_index(atlas, ids)
        tab = {0: ""}
        for sid, d in zip(ids, div):
            dn = names[d] if d >= 0 else ""
            if isinstance(lv, int):
                tab[int(sid)] = _label_of(onto, int(sid), dn, lv)
            else:
                tab[int(sid)] = _label_of(onto, int(sid), dn, lv) if dn else ""
        _TABLES[key] = tab
    return _TABLES[key]


def ccf_level_labels(atlas, ids, level="division") -> np.ndarray:
    """Label of each structure id at ``level`` (see the module docstring); (n,) str.

    ``atlas`` : anything with an ``ontology`` (:class:`~napari_brainatlas.atlas.Atlas`).
    Unknown ids and 0 give ``""``.
    """
    import pandas as pd

    lv = parse_level(level)
    tab = _table(atlas, lv)
    ids = np.asarray(ids).astype(np.int64).ravel()
    codes, uniq = pd.factorize(ids)
    vals = np.array([tab.get(int(u), "") for u in uniq] + [""], dtype=object)
    return vals[codes].astype(str)


def level_divisions(atlas, labels) -> np.ndarray:
    """Major-division index (into :func:`.metrics.major_divisions`) of each level label:
    layer labels -> Isocortex, everything else through
    :func:`.metrics.label_division_index` (acronyms); -1 for ``""``, "unassigned" and
    labels above or outside the divisions. (n,) int64."""
    lab = np.asarray(labels).astype(str)
    out = label_division_index(atlas, lab)
    is_layer = np.isin(lab, LAYER_LABELS)
    if is_layer.any():
        out[is_layer] = label_division_index(atlas, np.array(["Isocortex"]))[0]
    return out
