"""A family of held-out cross-panel splits of real labelled data (issue 26).

Every split is made from one labelled *set* and is deterministic from
``(set, index, family_seed)``:

* **osmFISH** (Codeluppi 2018, one SScortex section, 6,471 cells x 33 genes, labels
  ``ClusterName`` and ``Region``; the authors' 'Excluded' cells stay in the tissue but
  carry no label). The cells are cut into 2 or 3 sections by one of three cuts, cycled
  by the split index: ``halves`` (slabs along a random direction, equal cell counts),
  ``stripes`` (8-12 stripes along a random direction, dealt to the sections in turn) or
  ``random`` (each cell to a random section).
* **MERFISH** (Moffitt 2018 hypothalamus, spacexr's copy: a scRNA-seq reference of
  1,308 cells x 134 genes with 14 types and a MERFISH section of 750 cells without
  labels) and **SlideSeq** (spacexr's cerebellum: an snRNA-seq reference of 475 nuclei x
  384 genes with 19 types and 100 Slide-seq beads without labels). The labelled
  dissociated cells are split at random into a reference section and a labelled query
  section (the label metrics are measured there); the spatial section is added as one
  more query section (whole, or cut into two by the split's cut), as a user annotating
  new spatial data against a scRNA-seq reference would. Dissociated sections have no
  coordinates: their ``obsm['spatial']`` is all NaN, which FuseMap reads as a section
  without tissue context (its graph is the identity).
* **demo** (``napari_brainatlas.demo.make_demo_sections``): 2 or 3 generated sections
  at different AP positions (each its own tissue, with the generator's batch effect),
  restricted to the genes all of them measure before the panel rule below.

On top of the cut, every split draws:

* **panels**: an overlap ``f ~ U(0.3, 0.7)``: ``round(f * G)`` of the set's ``G`` genes
  are measured by every section; each remaining gene is measured by exactly one section
  (drawn at random), so ``shared / union = f`` (to within rounding);
* **capture shift** on some sections (each with probability 1/2, at least one): a
  per-gene capture efficiency ``exp(N(0, sigma^2))`` with ``sigma ~ U(0.2, 0.7)`` times a
  depth factor ``d`` with ``log d ~ U(log 0.5, log 2)``, applied to the integer counts by
  binomial thinning (factor <= 1) or by adding Poisson(count * (factor - 1)) (factor > 1),
  so the sections still hold integer counts;
* **type dropout** (probability 1/3): every cell of one cell type (one holding at least
  2 % of the labelled cells) is removed from one section.

Reference and query: in 2-section osmFISH / demo splits the first section is the
reference, the second the query; with 3 sections one or two of them are references.
The dev half is the first half of a set's split indices, the test half the second
(``half(index, n)``). The original counts of every cell over the set's genes are kept
(``Split.truth``): the imputation ground truth for genes a section's panel lacks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def _find_data() -> Path:
    """$NAPARI_BRAINATLAS_DATA, else ../shared/data of the checkout (also from a worktree
    nested deeper)."""
    import os

    if os.environ.get("NAPARI_BRAINATLAS_DATA"):
        return Path(os.environ["NAPARI_BRAINATLAS_DATA"])
    for p in HERE.parents:
        if (p / "shared" / "data").is_dir():
            return p / "shared" / "data"
    return HERE.parents[1].parent / "shared" / "data"


DATA = _find_data()
OSMFISH = DATA / "osmfish_codeluppi2018" / "osmFISH_SScortex_mouse_all_cells.loom"
MERFISH = DATA / "spacexr_merfish_hypothalamus"
SLIDESEQ = DATA / "spacexr_slideseq_cerebellum"

#: splits per set (the real sets: at least 24)
N_SPLITS = {"osmFISH": 24, "MERFISH": 24, "SlideSeq": 24, "demo": 8}
SETS = tuple(N_SPLITS)
CUTS = ("halves", "stripes", "random")
OVERLAP_RANGE = (0.3, 0.7)
SIGMA_RANGE = (0.2, 0.7)
DEPTH_RANGE = (0.5, 2.0)
P_SHIFT = 0.5
P_DROPOUT = 1.0 / 3.0
#: obs column names of the labels in every split section
CELL_LABEL = "celltype"
TISSUE_LABEL = "region"

__all__ = [
    "N_SPLITS",
    "SETS",
    "Split",
    "SplitSpec",
    "half",
    "load_pool",
    "make_split",
    "split_indices",
    "split_spec",
    "thin_counts",
]


def half(index: int, n: int) -> str:
    """'dev' for the first half of a set's split indices, 'test' for the second."""
    return "dev" if index < n // 2 else "test"


def split_indices(set_name: str, which: str = "all") -> list[int]:
    n = N_SPLITS[set_name]
    return [i for i in range(n) if which == "all" or half(i, n) == which]


# ----------------------------------------------------------------------------- pools
@dataclass
class Pool:
    """One labelled set: integer counts (cells x genes), labels, coordinates (or None),
    and for the dissociated sets the unlabelled spatial section."""

    name: str
    counts: np.ndarray
    genes: list[str]
    cell: np.ndarray  # cell-type label per cell (None = unlabelled)
    tissue: np.ndarray | None
    coords: np.ndarray | None
    obs_names: list[str]
    spatial: dict | None = None  # {"counts", "genes", "coords", "obs_names"}


def _labels(v) -> np.ndarray:
    out = np.asarray(pd.Series(v).astype(object), dtype=object)
    return np.array([None if (x is None or str(x) in ("Excluded", "nan")) else str(x) for x in out])


def _dense(X) -> np.ndarray:
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _read_csv_counts(path, transpose=True):
    df = pd.read_csv(path, index_col=0)
    return (df.T if transpose else df).astype(np.int64)


@cache
def load_pool(set_name: str) -> Pool:
    """The labelled cells of a set (read once per process; files are only read)."""
    import sys

    sys.path.insert(0, str(HERE.parents[1] / "src"))
    if set_name == "osmFISH":
        from napari_brainatlas.io import read_sections

        a = read_sections(OSMFISH)[0]
        X = _dense(a.layers["counts"] if "counts" in a.layers else a.X)
        return Pool(
            "osmFISH",
            np.rint(X).astype(np.int64),
            [str(g) for g in a.var_names],
            _labels(a.obs["ClusterName"]),
            _labels(a.obs["Region"]),
            np.asarray(a.obsm["spatial"], float)[:, :2],
            [str(n) for n in a.obs_names],
        )
    if set_name in ("MERFISH", "SlideSeq"):
        from napari_brainatlas.io import read_sections

        if set_name == "MERFISH":
            ref = _read_csv_counts(MERFISH / "reference_scrna" / "counts.csv")
            ct = pd.read_csv(MERFISH / "reference_scrna" / "cell_types.csv", index_col=0)["x"]
            labels = ct.reindex(ref.index).to_numpy()
            sq = read_sections(MERFISH / "query_merfish")[0]
        else:
            ref = _read_csv_counts(SLIDESEQ / "reference_snrna" / "dge.csv")
            meta = pd.read_csv(SLIDESEQ / "reference_snrna" / "meta_data.csv", index_col=0)
            names = pd.read_csv(SLIDESEQ / "reference_snrna" / "cell_type_dict.csv")
            name_of = dict(zip(names["Cluster"], names["Name"]))
            labels = meta["cluster"].map(name_of).reindex(ref.index).to_numpy()
            sq = read_sections(SLIDESEQ / "query_slideseq")[0]
        sp_genes = [str(g) for g in sq.var_names]
        genes = [g for g in ref.columns if g in set(sp_genes)]
        Xs = _dense(sq.layers["counts"] if "counts" in sq.layers else sq.X)
        col = {g: i for i, g in enumerate(sp_genes)}
        return Pool(
            set_name,
            ref[genes].to_numpy(np.int64),
            genes,
            _labels(labels),
            None,
            None,
            [str(n) for n in ref.index],
            spatial={
                "counts": np.rint(Xs[:, [col[g] for g in genes]]).astype(np.int64),
                "coords": np.asarray(sq.obsm["spatial"], float)[:, :2],
                "obs_names": [str(n) for n in sq.obs_names],
            },
        )
    raise KeyError(f"unknown set {set_name!r}; sets: {', '.join(SETS)}")


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class SplitSpec:
    """What one split draws (plain values; ``Split.spec``)."""

    set: str
    index: int
    half: str
    family_seed: int
    cut: str
    n_sections: int
    roles: tuple  # "reference" / "query" per section
    overlap: float
    shift: tuple  # per section: None or (sigma, depth)
    dropout: tuple | None  # (section, cell type) or None
    angle_deg: float
    n_stripes: int
    demo_seed: int | None = None

    @property
    def reference(self) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r == "reference"]

    @property
    def query(self) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r == "query"]


def _rng(set_name: str, index: int, family_seed: int, what: str) -> np.random.Generator:
    key = zlib.crc32(f"{set_name}|{index}|{what}".encode())
    return np.random.default_rng([family_seed, key])


def split_spec(set_name: str, index: int, family_seed: int = 0) -> SplitSpec:
    """The split's drawn parameters (no data read, except the cell-type list)."""
    n = N_SPLITS[set_name]
    if not 0 <= index < n:
        raise IndexError(f"{set_name} has splits 0..{n - 1}")
    rng = _rng(set_name, index, family_seed, "spec")
    cut = CUTS[index % 3]
    demo_seed = None
    if set_name in ("MERFISH", "SlideSeq"):
        n_spatial = 1 + int(rng.random() < 0.5)
        roles = ("reference", "query") + ("query",) * n_spatial
        cut = cut if n_spatial == 2 else "whole"
    elif set_name == "demo":
        roles = ("reference", "query") if rng.random() < 0.5 else ("reference",) * 2 + ("query",)
        cut, demo_seed = "sections", int(rng.integers(1, 10_000))
    else:
        k = 2 + int(rng.random() < 0.5)
        if k == 2:
            roles = ("reference", "query")
        else:
            roles = (
                ("reference", "reference", "query")
                if rng.random() < 0.5
                else (
                    "reference",
                    "query",
                    "query",
                )
            )
    n_sec = len(roles)
    overlap = float(rng.uniform(*OVERLAP_RANGE))
    shifted = rng.random(n_sec) < P_SHIFT
    if not shifted.any():
        shifted[1] = True  # at least one section (a query) is shifted
    shift = []
    for s in shifted:
        sigma = float(rng.uniform(*SIGMA_RANGE))
        depth = float(np.exp(rng.uniform(np.log(DEPTH_RANGE[0]), np.log(DEPTH_RANGE[1]))))
        shift.append((sigma, depth) if s else None)
    angle = float(rng.uniform(0, 180))
    n_stripes = int(rng.integers(8, 13))
    dropout = None
    if rng.random() < P_DROPOUT:
        labelled = [i for i, r in enumerate(roles) if _labelled(set_name, i)]
        sec = int(rng.choice(labelled))
        dropout = (sec, float(rng.random()))  # which type: resolved on the data
    return SplitSpec(
        set=set_name,
        index=index,
        half=half(index, n),
        family_seed=family_seed,
        cut=cut,
        n_sections=n_sec,
        roles=roles,
        overlap=overlap,
        shift=tuple(shift),
        dropout=dropout,
        angle_deg=angle,
        n_stripes=n_stripes,
        demo_seed=demo_seed,
    )


def _labelled(set_name: str, section: int) -> bool:
    """Sections holding labelled cells (the dissociated sets: the first two)."""
    return section < 2 if set_name in ("MERFISH", "SlideSeq") else True


# ----------------------------------------------------------------------------- splits
@dataclass
class Split:
    """A split: AnnData sections (integer counts in ``X`` and ``layers['counts']``,
    ``obs['section']``, ``obs['celltype']`` (and ``obs['region']`` where the set has
    regions; None = unlabelled), ``obsm['spatial']`` in um or all NaN for dissociated
    cells), the reference / query section indices, and the ground truth."""

    spec: SplitSpec
    sections: list
    truth: list  # per section: original counts (cells x truth_genes), int64
    truth_genes: list[str]
    panels: list[list[str]]
    info: dict = field(default_factory=dict)

    @property
    def reference(self) -> list[int]:
        return self.spec.reference

    @property
    def query(self) -> list[int]:
        return self.spec.query

    @property
    def name(self) -> str:
        return f"{self.spec.set}#{self.spec.index}"

    @property
    def has_tissue(self) -> bool:
        return any(TISSUE_LABEL in a.obs.columns for a in self.sections)

    def labelled(self, i: int) -> bool:
        return bool(pd.notna(self.sections[i].obs[CELL_LABEL]).any())

    def shared_genes(self) -> list[str]:
        s = set(self.panels[0])
        for p in self.panels[1:]:
            s &= set(p)
        return [g for g in self.truth_genes if g in s]


def thin_counts(counts: np.ndarray, factor: np.ndarray, rng) -> np.ndarray:
    """Counts scaled by a per-gene ``factor`` (broadcast over cells), kept integer:
    binomial thinning where the factor is <= 1, count + Poisson(count * (factor - 1))
    where it is > 1. Expected value ``counts * factor`` either way."""
    c = np.asarray(counts, np.int64)
    f = np.broadcast_to(np.asarray(factor, float), c.shape)
    out = np.empty_like(c)
    lo = f <= 1.0
    out[lo] = rng.binomial(c[lo], np.clip(f[lo], 0.0, 1.0))
    hi = ~lo
    out[hi] = c[hi] + rng.poisson(c[hi] * (f[hi] - 1.0))
    return out


def _cut(coords: np.ndarray | None, k: int, spec: SplitSpec, rng) -> np.ndarray:
    """Section index per cell for a cut into ``k`` parts."""
    n = len(coords) if coords is not None else 0
    if spec.cut == "random" or coords is None:
        return rng.integers(0, k, n)
    th = np.deg2rad(spec.angle_deg)
    t = coords @ np.array([np.cos(th), np.sin(th)])
    if spec.cut == "halves":
        edges = np.quantile(t, np.linspace(0, 1, k + 1)[1:-1])
        return np.searchsorted(edges, t, side="right")
    if spec.cut == "stripes":
        edges = np.quantile(t, np.linspace(0, 1, spec.n_stripes + 1)[1:-1])
        stripe = np.searchsorted(edges, t, side="right")
        return stripe % k
    raise ValueError(spec.cut)


def _panels(genes: list[str], n_sec: int, overlap: float, rng) -> list[list[str]]:
    G = len(genes)
    order = rng.permutation(G)
    n_shared = int(min(max(round(overlap * G), 1), G))
    shared = set(order[:n_shared].tolist())
    owner = rng.integers(0, n_sec, G)
    out = []
    for v in range(n_sec):
        out.append([g for j, g in enumerate(genes) if j in shared or owner[j] == v])
    return out


def _demo_parts(spec: SplitSpec):
    """(counts, genes, cell, tissue, coords, obs_names) per demo section."""
    import sys

    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from napari_brainatlas.demo import make_demo_sections

    secs = make_demo_sections(seed=spec.demo_seed, n_sections=spec.n_sections, cells_per_mm2=60.0)
    common = set(secs[0].var_names)
    for a in secs[1:]:
        common &= set(a.var_names)
    genes = [g for g in secs[0].var_names if g in common]
    parts = []
    for a in secs:
        X = a.layers["counts"] if "counts" in a.layers else a.X
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        col = {g: i for i, g in enumerate(a.var_names)}
        parts.append(
            (
                np.rint(X[:, [col[g] for g in genes]]).astype(np.int64),
                _labels(a.obs["celltype"]),
                _labels(a.obs["region"]),
                np.asarray(a.obsm["spatial"], float)[:, :2],
                [str(n) for n in a.obs_names],
            )
        )
    return genes, parts


def make_split(set_name: str, index: int, family_seed: int = 0) -> Split:
    """Build split ``index`` of ``set_name`` (deterministic for ``family_seed``)."""
    import anndata as ad

    spec = split_spec(set_name, index, family_seed)
    rng = _rng(set_name, index, family_seed, "data")
    n_sec = spec.n_sections
    if set_name == "demo":
        genes, parts = _demo_parts(spec)
    else:
        pool = load_pool(set_name)
        genes = list(pool.genes)
        parts = []
        if pool.spatial is None:
            assign = _cut(pool.coords, n_sec, spec, rng)
            for v in range(n_sec):
                m = assign == v
                parts.append(
                    (
                        pool.counts[m],
                        pool.cell[m],
                        pool.tissue[m] if pool.tissue is not None else None,
                        pool.coords[m],
                        [n for n, k in zip(pool.obs_names, m) if k],
                    )
                )
        else:
            # dissociated labelled cells: reference (50-70 %) and labelled query
            frac = rng.uniform(0.5, 0.7)
            is_ref = rng.random(len(pool.counts)) < frac
            for m in (is_ref, ~is_ref):
                parts.append(
                    (
                        pool.counts[m],
                        pool.cell[m],
                        None,
                        None,
                        [n for n, k in zip(pool.obs_names, m) if k],
                    )
                )
            spd = pool.spatial
            n_sp = n_sec - 2
            assign = (
                _cut(spd["coords"], n_sp, spec, rng)
                if n_sp > 1
                else np.zeros(len(spd["coords"]), int)
            )
            for v in range(n_sp):
                m = assign == v
                none = np.full(int(m.sum()), None, dtype=object)
                parts.append(
                    (
                        spd["counts"][m],
                        none,
                        None,
                        spd["coords"][m],
                        [n for n, k in zip(spd["obs_names"], m) if k],
                    )
                )
    panels = _panels(genes, n_sec, spec.overlap, rng)
    drop_type = None
    if spec.dropout is not None:
        sec, u = spec.dropout
        cell = parts[sec][1]
        lab = pd.Series([c for c in cell if c is not None])
        freq = lab.value_counts(normalize=True)
        cand = sorted(freq[freq >= 0.02].index)
        if cand:
            drop_type = str(cand[min(int(u * len(cand)), len(cand) - 1)])
    sections, truth = [], []
    for v, (counts, cell, tissue, coords, names) in enumerate(parts):
        keep = np.ones(len(counts), bool)
        if drop_type is not None and v == spec.dropout[0]:
            keep = np.array([c != drop_type for c in cell])
        counts, cell = counts[keep], cell[keep]
        names = [n for n, k in zip(names, keep) if k]
        cols = [genes.index(g) for g in panels[v]]
        X = counts[:, cols]
        if spec.shift[v] is not None:
            sigma, depth = spec.shift[v]
            f = np.exp(rng.normal(0.0, sigma, len(cols))) * depth
            X = thin_counts(X, f[None, :], rng)
        obs = pd.DataFrame(index=pd.Index([f"s{v}_{n}" for n in names]))
        obs["section"] = f"{set_name}{index}_s{v}_{spec.roles[v][0]}"
        obs[CELL_LABEL] = pd.array([None if c is None else str(c) for c in cell], dtype=object)
        if tissue is not None:
            obs[TISSUE_LABEL] = pd.array(
                [None if c is None else str(c) for c in tissue[keep]], dtype=object
            )
        Xf = X.astype(np.float32)
        a = ad.AnnData(X=Xf, obs=obs, var=pd.DataFrame(index=pd.Index(panels[v])))
        a.layers["counts"] = Xf.copy()
        a.obsm["spatial"] = (
            np.asarray(coords[keep], float)
            if coords is not None
            else np.full((len(names), 2), np.nan)
        )
        a.uns["split"] = {"set": set_name, "index": index, "role": spec.roles[v]}
        sections.append(a)
        truth.append(counts)
    info = {
        "n_cells": [a.n_obs for a in sections],
        "n_genes": [a.n_vars for a in sections],
        "n_shared": len(set.intersection(*(set(p) for p in panels))),
        "n_union": len(set().union(*(set(p) for p in panels))),
        "dropped_type": drop_type,
    }
    return Split(spec, sections, truth, list(genes), panels, info)


def cap_cells(split: Split, max_cells: int | None) -> Split:
    """The split with every section cut to at most ``max_cells`` cells (a uniform random
    subset, deterministic for the split; the same cells for every method). Used to fit a
    run into the time there is; None or a larger cap returns the split unchanged."""
    if not max_cells or all(a.n_obs <= max_cells for a in split.sections):
        return split
    rng = _rng(split.spec.set, split.spec.index, 0, f"cap{max_cells}")
    sections, truth = [], []
    for a, t in zip(split.sections, split.truth):
        keep = np.arange(a.n_obs)
        if a.n_obs > max_cells:
            keep = np.sort(rng.choice(a.n_obs, max_cells, replace=False))
        sections.append(a[keep].copy())
        truth.append(t[keep])
    info = dict(split.info, n_cells=[a.n_obs for a in sections], max_cells=int(max_cells))
    return Split(split.spec, sections, truth, split.truth_genes, split.panels, info)


def describe(split: Split) -> str:
    """One line: the split's cut, panels, shifts and dropout."""
    s = split.spec
    shifts = ",".join("-" if x is None else f"s{x[0]:.2f}/d{x[1]:.2f}" for x in s.shift)
    drop = f" drop {split.info['dropped_type']!r} from s{s.dropout[0]}" if s.dropout else ""
    if s.dropout and split.info["dropped_type"] is None:
        drop = ""
    roles = "".join(r[0] for r in s.roles)
    return (
        f"{split.name} [{s.half}] {s.cut} {roles} cells {split.info['n_cells']} genes "
        f"{split.info['n_genes']} shared {split.info['n_shared']}/{split.info['n_union']} "
        f"(f={s.overlap:.2f}) shift {shifts}{drop}"
    )


if __name__ == "__main__":  # print the family
    import sys

    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    for name in SETS:
        for i in split_indices(name, which):
            print(describe(make_split(name, i)))
