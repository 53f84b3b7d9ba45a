"""Cell tables in csv / tsv files: which column is what.

A lab's cell table holds coordinates (``x/y``, ``X/Y``, ``center_x/center_y``, ...),
text columns (cell type, region, a cluster id) and often numbers beside them, some of
which are genes and some not (``Z``, area, ``nUMI``). The reader therefore decides:

* **text columns become obs** (categorical when they repeat), and so does every column a
  *type row* marks as a group;
* **numeric columns become genes only when the user says so** (``genes=``: ``True`` for
  every numeric column that is not a coordinate or a per-cell measure such as ``Z`` or
  area, a list of column names, or ``"FIRST:LAST"`` for a block of columns in file
  order); otherwise they stay numeric obs columns (still shown and coloured by) and the
  section has no genes;
* in a folder, genes come from a **counts table elsewhere** (genes x cells or cells x
  genes, matched by cell id), as spacexr, STARmap PLUS and many labs publish them; every
  column of the coordinates table then becomes obs.

A **type row** is the second header row of the Single Cell Portal metadata format, which
STARmap PLUS uses (``NAME,X,Y,Z,...`` then ``TYPE,numeric,numeric,numeric,group,...``): it
is recognised, dropped, and its types are used (a ``group`` column of numbers is a
label, never a gene). Errors name the file, the column and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._errors import BrainAtlasInputError
from .coords import COORD_PAIRS

__all__ = [
    "NON_GENE_COLUMNS",
    "CellTable",
    "coord_columns",
    "parse_genes_option",
    "read_table",
    "split_columns",
]

#: words a Single Cell Portal type row holds (lower case)
TYPE_WORDS = frozenset(
    {"numeric", "group", "string", "text", "category", "categorical", "label", "int", "float"}
)
_NUMERIC_TYPES = frozenset({"numeric", "int", "float"})
#: numeric columns that are per-cell measures, not genes, even with ``genes=True``
#: (compared in lower case)
NON_GENE_COLUMNS = frozenset(
    {
        "z",
        "z_um",
        "center_z",
        "zcoord",
        "area",
        "cell_area",
        "volume",
        "cell_volume",
        "size",
        "numi",
        "n_counts",
        "total_counts",
        "n_genes",
        "ncount_rna",
        "nfeature_rna",
        "fov",
    }
)
_ID_WORDS = ("id", "name", "cell", "barcode", "index", "bead", "spot")
_COORD_NAMES = frozenset(c for pair in COORD_PAIRS for c in pair)


@dataclass
class CellTable:
    """One csv / tsv file read: the table (index = cell or gene ids) and the types a
    type row gave (empty when the file has none)."""

    path: Path
    df: pd.DataFrame
    types: dict[str, str] = field(default_factory=dict)


def _sep(path: Path) -> str:
    return "\t" if path.name.lower().endswith((".tsv", ".tsv.gz", ".txt")) else ","


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


def _type_row(path: Path, sep: str) -> dict[str, str]:
    """``{column: type}`` when the second line is a type row, else ``{}``."""
    head = pd.read_csv(path, sep=sep, header=None, nrows=2, dtype=str, keep_default_na=False)
    if head.shape[0] < 2 or head.shape[1] < 2:
        return {}
    words = [str(v).strip() for v in head.iloc[1]]
    if words[0].upper() != "TYPE":
        return {}
    if not all(w.lower() in TYPE_WORDS for w in words[1:]):
        return {}
    return {str(c): w.lower() for c, w in zip(head.iloc[0, 1:], words[1:])}


def _use_as_index(df: pd.DataFrame) -> bool:
    """Whether the first column names the rows (cell or gene ids)."""
    if df.shape[1] < 2:
        return False
    first = str(df.columns[0])
    if first.strip() == "" or first.startswith("Unnamed: 0"):
        return True
    if first in _COORD_NAMES:
        return False
    col = df.iloc[:, 0]
    if not col.is_unique or col.isna().any():
        return False
    if pd.api.types.is_numeric_dtype(col):
        return any(w in first.lower() for w in _ID_WORDS)
    return True


def read_table(path: str | Path) -> CellTable:
    """Read one csv / tsv (``.gz`` too): a type row recognised and dropped, the first
    column the index when it holds unique ids (else rows are numbered from 0)."""
    path = Path(path)
    sep = _sep(path)
    try:
        types = _type_row(path, sep)
        df = pd.read_csv(path, sep=sep, skiprows=[1] if types else None, low_memory=False)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    if df.shape[1] == 0:
        raise BrainAtlasInputError(f"{path.name}: the table has no columns")
    if _use_as_index(df):
        df = df.set_index(df.columns[0])
        df.index.name = None
    df.index = df.index.astype(str)
    if not df.index.is_unique:
        df.index = pd.Index(_unique(df.index))
    df.columns = [str(c) for c in df.columns]
    for c, t in types.items():
        if c in df.columns and t in _NUMERIC_TYPES:
            df[c] = _to_numbers(df[c], path.name, c)
    return CellTable(path, df, types)


def _unique(ids) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        k = seen.get(i, 0)
        out.append(i if k == 0 else f"{i}-{k}")
        seen[i] = k + 1
    return out


def coord_columns(df: pd.DataFrame) -> tuple[str, str] | None:
    """The first coordinate column pair the table has (see ``COORD_PAIRS``)."""
    for cx, cy in COORD_PAIRS:
        if cx in df.columns and cy in df.columns:
            return cx, cy
    return None


def _first_text(col: pd.Series) -> tuple[str, str] | None:
    """(row id, value) of the first entry of ``col`` that is not a number."""
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad.to_numpy())[0])
    return str(col.index[i]), str(col.iloc[i])


def _to_numbers(col: pd.Series, file: str, name: str) -> pd.Series:
    where = _first_text(col)
    if where is not None:
        raise BrainAtlasInputError(
            f"{file}: column {name!r} is typed numeric but row {where[0]!r} holds "
            f"{where[1]!r}; correct that value or mark the column 'group'"
        )
    return pd.to_numeric(col)


def parse_genes_option(genes) -> bool | list[str] | tuple[str, str] | None:
    """``None``/``False`` (no genes from columns), ``True`` (every numeric column), a list
    of column names, or a ``(first, last)`` block; from the Python or the command-line
    spelling (``"all"``, ``"A,B,C"``, ``"A:C"``)."""
    if genes is None or genes is False:
        return None
    if genes is True:
        return True
    if isinstance(genes, str):
        text = genes.strip()
        if text.lower() in ("all", "true", "yes", "numeric"):
            return True
        if ":" in text and "," not in text:
            first, last = (s.strip() for s in text.split(":", 1))
            if not first or not last:
                raise BrainAtlasInputError(
                    f"genes {genes!r}: give a block as FIRST:LAST (two column names)"
                )
            return first, last
        genes = text.split(",")
    out = [str(g).strip() for g in genes if str(g).strip()]
    if not out:
        raise BrainAtlasInputError("genes: give 'all', column names (A,B,C) or a block A:C")
    return out


def _gene_list(df: pd.DataFrame, numeric: list[str], option, file: str) -> list[str]:
    """The columns the ``genes`` option names, checked (present, numeric)."""
    if option is True:
        return [c for c in numeric if c.lower() not in NON_GENE_COLUMNS]
    cols = list(df.columns)
    if isinstance(option, tuple):
        first, last = option
        for c in (first, last):
            if c not in cols:
                raise BrainAtlasInputError(
                    f"{file}: no column {c!r} to start or end the gene block "
                    f"(columns: {_listing(cols)})"
                )
        i, j = cols.index(first), cols.index(last)
        if j < i:
            raise BrainAtlasInputError(
                f"{file}: gene block {first}:{last} runs backwards ({last!r} comes first)"
            )
        option = cols[i : j + 1]
    missing = [c for c in option if c not in cols]
    if missing:
        raise BrainAtlasInputError(
            f"{file}: no column {missing[0]!r} among the columns ({_listing(cols)}); "
            "name the gene columns as the header spells them"
        )
    for c in option:
        if c in numeric and df[c].isna().any():
            row = df.index[int(np.flatnonzero(df[c].isna().to_numpy())[0])]
            raise BrainAtlasInputError(
                f"{file}: gene column {c!r} has an empty value (row {str(row)!r}); fill it "
                "(0 where nothing was counted) or leave the column out of genes"
            )
        if c not in numeric:
            where = _first_text(df[c])
            held = f" (row {where[0]!r} holds {where[1]!r})" if where else ""
            raise BrainAtlasInputError(
                f"{file}: column {c!r} is not numeric{held}, so it cannot be a gene; "
                "correct the value or leave the column out of genes"
            )
    return list(option)


def _listing(cols, n: int = 8) -> str:
    cols = list(cols)
    more = f", ... ({len(cols)} in all)" if len(cols) > n else ""
    return ", ".join(cols[:n]) + more


def split_columns(
    table: CellTable, skip: tuple[str, ...], genes=None
) -> tuple[list[str], pd.DataFrame]:
    """(gene columns, obs) of a cell table: ``skip`` (the coordinates) left out, ``genes``
    as :func:`parse_genes_option` reads it, every other column an obs column (text and
    type-row groups categorical when values repeat, numbers numeric)."""
    df = table.df
    rest = [c for c in df.columns if c not in skip]
    groups = {c for c, t in table.types.items() if t not in _NUMERIC_TYPES}
    numeric = [c for c in rest if c not in groups and pd.api.types.is_numeric_dtype(df[c].dtype)]
    option = parse_genes_option(genes)
    gene_cols = [] if option is None else _gene_list(df, numeric, option, table.path.name)
    chosen = set(gene_cols)
    obs = pd.DataFrame(index=df.index.astype(str))
    for c in rest:
        if c in chosen:
            continue
        col = df[c]
        if c in numeric and col.dtype != bool:
            obs[c] = col.to_numpy()
        else:
            obs[c] = _as_labels(col)
    return gene_cols, obs


def _as_labels(col: pd.Series):
    """Text values as a categorical when they repeat (labels), else as strings."""
    values = col.astype(object).where(col.notna(), None)
    text = np.array([None if v is None else str(v) for v in values], dtype=object)
    n_unique = len(pd.unique(text[pd.notna(text)]))
    if n_unique <= max(200, len(text) // 2):
        return pd.Categorical(text)
    return text
