"""Validation sections cut from a real CCF annotation, with expression and the truth.

Sections are cut from an :class:`~napari_brainatlas.atlas.Atlas` (the Allen CCFv3 at 25
or 50 um; the package never ships it: pass ``Atlas.load(annotation.nrrd, ontology)``)
at known planes (coronal full and hemisections, sagittal), with cutting angles, tears,
dropped cells, smooth warps and a random frame (rotation, scale, shear, mirror, offset),
all through :func:`napari_brainatlas.register.sample_section`. On top of that:

* **uneven cell density**: cells are kept with a probability that depends on the
  structure (dense granule layers and layer 4, sparse layer 1, fibre tracts and
  ventricles) and on a smooth random field over the section;
* **cell classes** (excitatory, inhibitory, granule, astrocyte, oligodendrocyte, OPC,
  microglia, endothelial, ependymal) drawn from each structure's composition;
* **expression from the structure each cell sits in, at several ontology depths**
  (:class:`CCFExpressionModel`): a strong programme per major division, a weaker one
  per finer structure (cortical layer, hippocampal field, thalamic nucleus: the "fine"
  level of :mod:`napari_brainatlas.register.ccf_levels`, partly shared between
  neighbouring layers), and weak programmes of the structures at depths 6, 7 and 8;
  how strongly a cell shows them depends on its class (neurons fully, glia partly,
  microglia and vessels little), on top of class markers and AP / DV / ML gradients;
* negative-binomial counts (Gamma-Poisson, dispersion ``THETA``) with a per-cell size
  factor, **a per-section gene panel** (shared core genes plus a random part of the
  others) and **a per-section capture shift** (overall efficiency and per-gene factors).

The truth is kept, as in :func:`napari_brainatlas.demo.make_demo_sections`:
``obsm['ccf_coords_true']`` (AP, DV, ML um), ``obsm['slice_xy_true']``,
``obs['ccf_id_true']`` (the annotation at ``ccf_coords_true``), ``obs['ccf_acronym_true']``,
``obs['ccf_division_true']``, ``obs['ccf_fine_true']``, ``obs['cell_class_true']`` and
``uns['demo_truth']`` (plane, position_um, hemisphere, angles_deg, affine 3x3 section um
-> atlas slice um without the warp, midline 2x2 section um dorsal then ventral, mirror,
and the generator's settings). A pipeline under test must not read ``*_true`` or
``demo_truth``.

:func:`as_reference` adds the registration truth as the CCF keys a registered section
carries (``obsm['ccf_coords']``, ``obs['ccf_id']``, ``obs['ccf_acronym']``,
``uns['ccf_registration']``); a query (:func:`make_ccf_sections`'s output as is) has
no region labels, midline or position besides the truth.

Everything is deterministic for a seed. On the 50 um atlas a section of 2,000 cells
takes well under a second.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from ..io.readers import normalise_section
from ..register import RegistrationResult, sample_section
from ..register.ccf_levels import ccf_level_labels

__all__ = [
    "CELL_CLASSES",
    "THETA",
    "CCFExpressionModel",
    "SectionSpec",
    "as_reference",
    "make_ccf_reference_and_queries",
    "make_ccf_section",
    "make_ccf_sections",
    "random_section_specs",
    "reference_section_specs",
]

THETA = 4.0
#: cell class -> how strongly it shows the regional programmes
CELL_CLASSES: dict[str, float] = {
    "Exc": 1.0,
    "Inh": 0.9,
    "Granule": 1.0,
    "Astro": 0.6,
    "Oligo": 0.35,
    "OPC": 0.35,
    "Micro": 0.2,
    "Endo": 0.2,
    "Ependymal": 0.3,
}
_GLIA = {"Astro": 0.12, "Oligo": 0.08, "OPC": 0.04, "Micro": 0.05, "Endo": 0.06}
#: cell-class composition by fine label (first) or major division
COMPOSITION: dict[str, dict[str, float]] = {
    "default": {"Exc": 0.45, "Inh": 0.2, **_GLIA},
    "L1": {"Inh": 0.3, "Astro": 0.35, "Micro": 0.1, "Endo": 0.12, "OPC": 0.05, "Oligo": 0.08},
    "DG": {"Granule": 0.6, "Inh": 0.05, **_GLIA},
    "STR": {"Exc": 0.03, "Inh": 0.62, **_GLIA},
    "PAL": {"Exc": 0.05, "Inh": 0.5, **_GLIA},
    "HY": {"Exc": 0.32, "Inh": 0.32, **_GLIA},
    "MB": {"Exc": 0.35, "Inh": 0.25, **_GLIA},
    "P": {"Exc": 0.32, "Inh": 0.25, **_GLIA},
    "MY": {"Exc": 0.3, "Inh": 0.25, **_GLIA},
    "CB": {"Granule": 0.6, "Inh": 0.1, **_GLIA},
    "OLF": {"Granule": 0.3, "Exc": 0.25, "Inh": 0.1, **_GLIA},
    "fiber tracts": {"Oligo": 0.7, "Astro": 0.12, "OPC": 0.06, "Micro": 0.06, "Endo": 0.06},
    "VS": {"Ependymal": 0.7, "Astro": 0.1, "Micro": 0.1, "Endo": 0.1},
}
#: relative cell density by fine label (first) or major division (default 1)
DENSITY = {
    "L1": 0.45,
    "L2/3": 1.25,
    "L4": 1.5,
    "DG": 1.8,
    "CA1": 1.3,
    "CB": 1.7,
    "fiber tracts": 0.5,
    "VS": 0.4,
    "STR": 1.1,
    "HY": 0.85,
}
#: genes per programme
N_CLASS_MARKERS = 3
N_DIVISION_GENES = 4
N_FINE_POOL = 48
N_FINE_GENES = 5
N_STRUCT_POOL = 40
N_STRUCT_GENES = 3
N_OTHER = 24
GRADIENTS = ("ap", "-ap", "dv", "-dv", "ml", "-ml")
#: log-scale effects: class markers, pan-neuronal, division, fine structure, depth
#: 6-8 structures (the finer the structure, the weaker its programme)
CLASS_EFFECT = 3.0
NEURON_EFFECT = 1.5
DIVISION_EFFECT = 2.5
FINE_EFFECT = 1.0
STRUCT_EFFECT = 0.45
STRUCT_DEPTHS = (6, 7, 8)
#: every panel measures the core: this many markers of each cell class, genes of each
#: division programme and of the fine pool, and the gradient genes; the other genes are
#: measured with probability ``PANEL_FRACTION`` per section
CORE_CLASS_MARKERS = 2
CORE_DIVISION_GENES = 2
CORE_FINE_GENES = 12
PANEL_FRACTION = 0.5


@dataclass(frozen=True)
class SectionSpec:
    """How one section is cut and placed (see :func:`~napari_brainatlas.register.sample_section`)."""

    plane: str = "coronal"
    position_um: float = 6000.0
    hemisphere: str = "both"
    n_cells: int = 3000
    angles_deg: tuple = (0.0, 0.0)
    rotation_deg: float = 0.0
    scale: float = 1.0
    shear: float = 0.0
    mirror: bool = False
    drop_fraction: float = 0.0
    warp_um: float = 0.0
    tear_fraction: float = 0.0
    offset_um: tuple = (1000.0, -500.0)
    seed: int = 0
    name: str = "section"
    extra: dict = field(default_factory=dict)


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(k).encode()) for k in keys])


class CCFExpressionModel:
    """Log-mean expression of a cell from its class, its structure at several ontology
    depths and its position (module docstring). Deterministic for ``seed``: every
    structure's programme is drawn from a generator keyed by ``(seed, label)``, so it
    does not depend on which sections were generated first."""

    def __init__(self, atlas, seed: int = 0):
        from ..register.metrics import major_divisions

        self.atlas = atlas
        self.seed = int(seed)
        self.divisions = major_divisions(atlas)[0]
        self.classes = list(CELL_CLASSES)
        g = []
        g += [f"{c}_m{i}" for c in self.classes for i in range(N_CLASS_MARKERS)]
        g += ["Pan_n0", "Pan_n1", "Pan_n2"]
        g += [
            f"Div_{d.replace(' ', '_')}_{i}"
            for d in self.divisions
            for i in range(N_DIVISION_GENES)
        ]
        g += [f"Fine_{i:02d}" for i in range(N_FINE_POOL)]
        g += [f"Struct_{i:02d}" for i in range(N_STRUCT_POOL)]
        g += [f"Grad_{s.replace('-', 'neg')}" for s in GRADIENTS]
        g += [f"Other_{i:02d}" for i in range(N_OTHER)]
        self.genes = g
        self.gidx = {n: i for i, n in enumerate(g)}
        rng = _rng(self.seed, "model")
        G = len(g)
        self.baseline = rng.normal(-1.3, 0.7, G)
        self.class_profile = rng.normal(0.0, 0.35, (len(self.classes), G))
        for ci, c in enumerate(self.classes):
            for i in range(N_CLASS_MARKERS):
                self.class_profile[ci, self.gidx[f"{c}_m{i}"]] += CLASS_EFFECT
            if c in ("Exc", "Inh", "Granule"):
                for i in range(3):
                    self.class_profile[ci, self.gidx[f"Pan_n{i}"]] += NEURON_EFFECT
        self.response = np.array([CELL_CLASSES[c] for c in self.classes])
        core = [f"{c}_m{i}" for c in self.classes for i in range(CORE_CLASS_MARKERS)]
        core += [
            f"Div_{d.replace(' ', '_')}_{i}"
            for d in self.divisions
            for i in range(CORE_DIVISION_GENES)
        ]
        core += [f"Fine_{i:02d}" for i in range(CORE_FINE_GENES)]
        core += [f"Grad_{s.replace('-', 'neg')}" for s in GRADIENTS]
        self.core = sorted(self.gidx[n] for n in core)
        self._fine_pool = np.array([self.gidx[f"Fine_{i:02d}"] for i in range(N_FINE_POOL)])
        self._struct_pool = np.array([self.gidx[f"Struct_{i:02d}"] for i in range(N_STRUCT_POOL)])

    # -------------------------------------------------------------- programmes
    def _division_effect(self, name: str) -> np.ndarray:
        e = np.zeros(len(self.genes))
        if name:
            rng = _rng(self.seed, "div", name)
            e[np.array(self._fine_pool)] += rng.normal(0, 0.15, N_FINE_POOL)
            for i in range(N_DIVISION_GENES):
                e[self.gidx[f"Div_{name.replace(' ', '_')}_{i}"]] += DIVISION_EFFECT
        return e

    def _fine_effect(self, label: str, division: str) -> np.ndarray:
        e = np.zeros(len(self.genes))
        if not label or label == division:
            return e
        rng = _rng(self.seed, "fine", label)
        genes = rng.choice(self._fine_pool, N_FINE_GENES, replace=False)
        e[genes] += FINE_EFFECT * rng.uniform(0.6, 1.4, N_FINE_GENES)
        if label.startswith("L"):  # cortical layers: a shared depth profile on 4 genes
            order = ("L1", "L2/3", "L4", "L5", "L6a", "L6b")
            t = order.index(label) / (len(order) - 1) if label in order else 0.5
            prof = np.array([1 - t, t, np.exp(-((t - 0.5) ** 2) / 0.05), (1 - t) ** 2])
            e[self._fine_pool[:4]] += FINE_EFFECT * prof
        return e

    def _struct_effect(self, sid: int) -> np.ndarray:
        e = np.zeros(len(self.genes))
        if sid <= 0:
            return e
        rng = _rng(self.seed, "struct", sid)
        genes = rng.choice(self._struct_pool, N_STRUCT_GENES, replace=False)
        e[genes] += STRUCT_EFFECT * rng.normal(1.0, 0.4, N_STRUCT_GENES)
        return e

    def _table(self, keys, fn) -> tuple[np.ndarray, np.ndarray]:
        codes, uniq = pd.factorize(np.asarray(keys))
        return codes, np.array([fn(u) for u in uniq]).reshape(len(uniq), len(self.genes))

    def log_mean(self, ids: np.ndarray, classes: np.ndarray, ccf: np.ndarray) -> np.ndarray:
        """(n, G) log-mean expression of cells with structure ``ids``, class indices
        ``classes`` and CCF positions ``ccf`` (n, 3) um."""
        atlas = self.atlas
        div = ccf_level_labels(atlas, ids, "division")
        fine = ccf_level_labels(atlas, ids, "fine")
        region = np.zeros((len(ids), len(self.genes)))
        c, t = self._table(div, self._division_effect)
        region += t[c]
        c, t = self._table(
            [f"{f}|{d}" for f, d in zip(fine, div)],
            lambda k: self._fine_effect(*k.split("|", 1)),
        )
        region += t[c]
        onto = atlas.ontology
        codes, uniq = pd.factorize(np.asarray(ids, dtype=np.int64))
        for depth in STRUCT_DEPTHS:
            # the structure at this depth on each cell's path (none if the cell's own
            # structure is not deeper)
            anc = np.array(
                [
                    onto.path(int(s))[depth] if s in onto and len(onto.path(int(s))) > depth else 0
                    for s in uniq
                ],
                dtype=np.int64,
            )
            c, t = self._table(anc, lambda s: self._struct_effect(int(s)))
            region += t[c][codes]
        lm = self.baseline[None, :] + self.class_profile[classes]
        lm += self.response[classes][:, None] * region
        ext = atlas.shape_um
        pos = {
            "ap": ccf[:, 0] / ext[0],
            "dv": ccf[:, 1] / ext[1],
            "ml": np.abs(ccf[:, 2] - ext[2] / 2) / (ext[2] / 2),
        }
        for s in GRADIENTS:
            v = pos[s.lstrip("-")]
            lm[:, self.gidx[f"Grad_{s.replace('-', 'neg')}"]] += 1.2 * (
                (1 - v) if s.startswith("-") else v
            )
        return lm

    def draw_classes(self, rng, div: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """Cell-class index of each cell from its structure's composition."""
        out = np.zeros(len(div), dtype=np.int64)
        keys = np.array(
            [
                f if f in COMPOSITION else (d if d in COMPOSITION else "default")
                for d, f in zip(div, fine)
            ]
        )
        for k in np.unique(keys):
            sel = np.flatnonzero(keys == k)
            comp = COMPOSITION[k]
            p = np.array([comp.get(c, 0.0) for c in self.classes])
            out[sel] = rng.choice(len(self.classes), len(sel), p=p / p.sum())
        return out

    def panel(self, rng) -> list[int]:
        """Gene indices measured by one section: the core plus a random part of the rest."""
        rest = np.setdiff1d(np.arange(len(self.genes)), self.core)
        pick = rest[rng.random(len(rest)) < PANEL_FRACTION]
        return sorted(set(self.core) | set(pick.tolist()))


def _density(rng, atlas, div, fine, xy_slice) -> np.ndarray:
    """Relative density of each candidate cell: structure factor x smooth field."""
    w = np.array([DENSITY.get(f, DENSITY.get(d, 1.0)) for d, f in zip(div, fine)])
    size = float(np.ptp(xy_slice, axis=0).max()) or 1.0
    field_ = np.zeros(len(w))
    for _ in range(3):
        k = rng.normal(size=2) * 2 * np.pi / size * rng.uniform(0.7, 1.6)
        field_ += np.sin(xy_slice @ k + rng.uniform(0, 2 * np.pi))
    return w * np.exp(0.35 * field_ / 3 * 2)


def make_ccf_section(atlas, spec: SectionSpec, model: CCFExpressionModel) -> AnnData:
    """One section (see the module docstring) following ``spec``."""
    rng = _rng(spec.seed, "section", spec.name)
    a = sample_section(
        atlas,
        plane=spec.plane,
        position_um=spec.position_um,
        hemisphere=spec.hemisphere,
        n_cells=int(spec.n_cells * 2.5),
        angles_deg=tuple(spec.angles_deg),
        rotation_deg=spec.rotation_deg,
        scale=spec.scale,
        shear=spec.shear,
        mirror=spec.mirror,
        drop_fraction=spec.drop_fraction,
        warp_um=spec.warp_um,
        tear_fraction=spec.tear_fraction,
        midline_jitter=0.0,
        offset_um=tuple(spec.offset_um),
        seed=spec.seed,
        name=spec.name,
    )
    ccf = np.asarray(a.obsm["ccf_coords_true"], float)
    ids = atlas.structure_at(ccf)  # the truth is the annotation at the true position
    cand = np.flatnonzero(ids > 0)
    div = ccf_level_labels(atlas, ids[cand], "division")
    fine = ccf_level_labels(atlas, ids[cand], "fine")
    w = _density(rng, atlas, div, fine, np.asarray(a.obsm["slice_xy_true"])[cand])
    n = min(int(spec.n_cells), len(cand))
    keep = np.sort(rng.choice(len(cand), n, replace=False, p=w / w.sum()))
    idx = cand[keep]
    div, fine, ids = div[keep], fine[keep], ids[idx]
    ccf = ccf[idx]
    cls = model.draw_classes(rng, div, fine)
    genes = model.panel(rng)
    capture = float(rng.uniform(0.5, 1.6))
    gene_batch = np.exp(rng.normal(0.0, 0.4, len(genes)))
    size = np.exp(rng.normal(0.0, 0.3, n))
    mean = np.exp(model.log_mean(ids, cls, ccf)[:, genes])
    mean *= (capture * size)[:, None] * gene_batch[None, :]
    counts = rng.poisson(rng.gamma(THETA, mean / THETA)).astype(np.int32)
    obs = pd.DataFrame(
        {
            "ccf_id_true": ids.astype(np.int64),
            "ccf_acronym_true": pd.Categorical(atlas.ontology.acronyms(ids).astype(str)),
            "ccf_division_true": pd.Categorical(div),
            "ccf_fine_true": pd.Categorical(fine),
            "cell_class_true": pd.Categorical(np.asarray(model.classes)[cls]),
        },
        index=[f"{spec.name}_c{i}" for i in range(n)],
    )
    out = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[model.genes[g] for g in genes]))
    out.obsm["ccf_coords_true"] = ccf
    out.obsm["slice_xy_true"] = np.asarray(a.obsm["slice_xy_true"])[idx]
    truth = dict(a.uns["demo_truth"])
    truth.update(
        atlas=atlas.name,
        spec={
            k: (np.asarray(v, dtype=float) if isinstance(v, tuple) else v)
            for k, v in asdict(spec).items()
            if k != "extra"
        },
        capture=capture,
        expression_seed=model.seed,
    )
    out.uns["demo_truth"] = truth
    return normalise_section(
        out,
        source=f"ccf_sections(seed={spec.seed})",
        section=spec.name,
        fmt="ccf-synthetic",
        pixel_size_um=1.0,
        coords=np.asarray(a.obsm["spatial"])[idx],
        coords_from="generated",
    )


# ---------------------------------------------------------------------- sets of sections
_KINDS = ("coronal-both", "coronal-left", "coronal-right", "sagittal")


def _sagittal_position(rng, atlas, lateral_max: float = 0.88) -> float:
    mid = float(atlas.midline_ml_um)
    d = float(rng.uniform(500.0, lateral_max * mid))
    return mid - d if rng.random() < 0.5 else mid + d


def _coronal_position(rng, atlas, lo_f: float = 0.12, hi_f: float = 0.88) -> float:
    lo, hi = atlas.tissue_range_um("coronal")
    return float(rng.uniform(lo + lo_f * (hi - lo), lo + hi_f * (hi - lo)))


def random_section_specs(
    atlas, n: int, seed: int = 0, *, n_cells=(3000, 8000), hard: bool = True, prefix: str = "Q"
) -> list[SectionSpec]:
    """``n`` query sections cycling coronal full, coronal left and right hemisections and
    sagittal sections at random positions, in random frames (rotation, scale 0.6-1.6,
    shear, mirror for hemisections and sagittal sections, 0-10 % cells dropped).
    ``hard``: also a cutting angle up to 4 deg, a smooth warp up to 80 um and up to 15 %
    of the tissue torn away (the registration benchmark's hard set). ``n_cells``: an int
    or a (low, high) range drawn log-uniformly."""
    rng = _rng(seed, "specs", prefix)
    out = []
    for i in range(n):
        kind = _KINDS[i % 4]
        plane, hemi = ("sagittal", "both") if kind == "sagittal" else kind.split("-")
        pos = (
            _sagittal_position(rng, atlas) if plane == "sagittal" else _coronal_position(rng, atlas)
        )
        mirror = bool(rng.random() < 0.5) if (plane == "sagittal" or hemi != "both") else False
        if np.ndim(n_cells):
            nc = int(np.exp(rng.uniform(np.log(n_cells[0]), np.log(n_cells[1]))))
        else:
            nc = int(n_cells)
        kw = {}
        if hard:
            th, ph = rng.uniform(0, 4.0), rng.uniform(0, 2 * np.pi)
            kw = {
                "angles_deg": (float(th * np.cos(ph)), float(th * np.sin(ph))),
                "warp_um": float(rng.uniform(0, 80)),
                "tear_fraction": float(rng.uniform(0, 0.15)),
            }
        out.append(
            SectionSpec(
                plane=plane,
                position_um=pos,
                hemisphere=hemi,
                n_cells=nc,
                rotation_deg=float(rng.uniform(-180, 180)),
                scale=float(rng.uniform(0.6, 1.6)),
                shear=float(rng.uniform(-0.05, 0.05)),
                mirror=mirror,
                drop_fraction=float(rng.uniform(0, 0.10)),
                offset_um=tuple(float(v) for v in rng.uniform(-5000, 5000, 2)),
                seed=int(seed * 1000 + i),
                name=f"{prefix}{i:02d}_{plane[:3]}_{hemi}",
                **kw,
            )
        )
    return out


def reference_section_specs(
    atlas, n: int = 8, seed: int = 0, *, n_cells: int = 3000, n_sagittal: int | None = None
) -> list[SectionSpec]:
    """A reference series: full coronal sections spread evenly along AP (jittered) and
    ``n_sagittal`` (default ``n // 4``) sagittal ones spread along ML on both sides, with
    small cutting angles and warps, no tears, random frames."""
    rng = _rng(seed, "reference")
    n_sag = n // 4 if n_sagittal is None else int(n_sagittal)
    n_cor = n - n_sag
    lo, hi = atlas.tissue_range_um("coronal")
    edges = np.linspace(lo + 0.05 * (hi - lo), lo + 0.95 * (hi - lo), n_cor + 1)
    pos = [("coronal", float(rng.uniform(edges[i], edges[i + 1]))) for i in range(n_cor)]
    mid = float(atlas.midline_ml_um)
    for j in range(n_sag):
        d = 600.0 + (0.8 * mid - 600.0) * (j + 0.5) / max(n_sag, 1)
        pos.append(("sagittal", mid - d if j % 2 == 0 else mid + d))
    out = []
    for i, (plane, p) in enumerate(pos):
        th, ph = rng.uniform(0, 2.0), rng.uniform(0, 2 * np.pi)
        out.append(
            SectionSpec(
                plane=plane,
                position_um=p,
                hemisphere="both",
                n_cells=int(n_cells),
                angles_deg=(float(th * np.cos(ph)), float(th * np.sin(ph))),
                rotation_deg=float(rng.uniform(-180, 180)),
                scale=float(rng.uniform(0.8, 1.25)),
                mirror=bool(plane == "sagittal" and rng.random() < 0.5),
                drop_fraction=float(rng.uniform(0, 0.05)),
                warp_um=float(rng.uniform(0, 40)),
                offset_um=tuple(float(v) for v in rng.uniform(-5000, 5000, 2)),
                seed=int(seed * 1000 + 500 + i),
                name=f"R{i:02d}_{plane[:3]}",
            )
        )
    return out


def make_ccf_sections(
    atlas, specs, *, expression_seed: int = 0, model: CCFExpressionModel | None = None
) -> list[AnnData]:
    """Sections (queries: no labels, midline or position besides the truth) for
    ``specs`` (from :func:`random_section_specs` / :func:`reference_section_specs`), all
    with the expression model of ``expression_seed``."""
    model = model or CCFExpressionModel(atlas, expression_seed)
    return [make_ccf_section(atlas, s, model) for s in specs]


def as_reference(adata: AnnData, atlas) -> AnnData:
    """A copy of a generated section registered with its truth: ``obsm['ccf_coords']``,
    ``obs['ccf_id']``, ``obs['ccf_acronym']`` and ``uns['ccf_registration']`` (the true
    plane, angles and affine; the smooth warp is not part of the record)."""
    out = adata.copy()
    tr = out.uns["demo_truth"]
    ids = np.asarray(out.obs["ccf_id_true"], dtype=np.int64)
    out.obsm["ccf_coords"] = np.asarray(out.obsm["ccf_coords_true"], float).copy()
    out.obs["ccf_id"] = ids
    out.obs["ccf_acronym"] = pd.Categorical(atlas.ontology.acronyms(ids).astype(str))
    name = str(out.obs["section"].iloc[0]) if "section" in out.obs else "section"
    rec = RegistrationResult(
        atlas=atlas.name,
        atlas_version=atlas.version,
        plane=str(tr["plane"]),
        position_um=float(tr["position_um"]),
        hemisphere=str(tr["hemisphere"]),
        affine=np.asarray(tr["affine"], float).tolist(),
        angles_deg=[float(v) for v in np.asarray(tr["angles_deg"], float)],
        midline=np.asarray(tr["midline"], float).tolist(),
        mirrored=bool(tr.get("mirror", False)),
        confidence=1.0,
        section=name,
        n_cells=int(out.n_obs),
        notes=["ground truth of a generated section (its smooth warp is not in the record)"],
    )
    reg = dict(out.uns.get("ccf_registration", {}))
    reg[name] = rec.to_uns()
    out.uns["ccf_registration"] = reg
    return out


def make_ccf_reference_and_queries(
    atlas,
    n_reference: int = 8,
    n_query: int = 40,
    seed: int = 0,
    *,
    reference_cells: int = 3000,
    query_cells=(3000, 8000),
    hard: bool = True,
) -> tuple[list[AnnData], list[AnnData]]:
    """(reference, queries): ``n_reference`` registered reference sections
    (:func:`reference_section_specs`, :func:`as_reference`) and ``n_query`` query
    sections (:func:`random_section_specs`), one expression model (``seed``)."""
    model = CCFExpressionModel(atlas, seed)
    ref_specs = reference_section_specs(atlas, n_reference, seed, n_cells=reference_cells)
    q_specs = random_section_specs(atlas, n_query, seed, n_cells=query_cells, hard=hard)
    ref = [as_reference(a, atlas) for a in make_ccf_sections(atlas, ref_specs, model=model)]
    return ref, make_ccf_sections(atlas, q_specs, model=model)
