"""Gene programs of the demo data: cell types, their regions, markers and counts.

Expression is a negative binomial (Gamma-Poisson, dispersion ``THETA``) around
``exp(log_mean)`` where ``log_mean`` adds a gene baseline, a per-type random profile,
type / class / pan-neuronal markers, a region programme (tissue signal independent of
cell type) and AP / DV gradient genes; a section multiplies it by its capture
efficiency and a per-gene batch factor.
"""

from __future__ import annotations

import numpy as np

THETA = 4.0

#: cell type -> (main class, marker genes)
CELL_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "L2/3 IT": ("Excitatory", ("Cux2", "Otof", "Calb1")),
    "L4 IT": ("Excitatory", ("Rorb", "Rspo1", "Whrn")),
    "L5 ET": ("Excitatory", ("Fezf2", "Bcl11b", "Pou3f1")),
    "L6 CT": ("Excitatory", ("Foxp2", "Syt6", "Tle4")),
    "CA pyramidal": ("Excitatory", ("Fibcd1", "Wfs1", "Ccn3")),
    "DG granule": ("Excitatory", ("Prox1", "C1ql2", "Dsp")),
    "TH glut": ("Excitatory", ("Tcf7l2", "Prkcd", "Plekhg1")),
    "HY glut": ("Excitatory", ("Pomc", "Trh", "Oxt")),
    "MB glut": ("Excitatory", ("Th", "Slc6a3", "En1")),
    "Pvalb": ("Inhibitory", ("Pvalb", "Kcnc1", "Lhx6")),
    "Sst": ("Inhibitory", ("Sst", "Chodl", "Nos1")),
    "Lamp5": ("Inhibitory", ("Lamp5", "Ndnf", "Reln")),
    "MSN D1": ("Inhibitory", ("Drd1", "Tac1", "Pdyn")),
    "MSN D2": ("Inhibitory", ("Drd2", "Penk", "Adora2a")),
    "PAL GABA": ("Inhibitory", ("Lhx8", "Gbx1", "Npas1")),
    "HY GABA": ("Inhibitory", ("Agrp", "Gal", "Npy")),
    "OB granule": ("Inhibitory", ("Sp8", "Dlx1", "Cdhr1")),
    "Astro": ("Glia", ("Gfap", "Aqp4", "Aldh1l1")),
    "Oligo": ("Glia", ("Mbp", "Plp1", "Mog")),
    "OPC": ("Glia", ("Pdgfra", "Cspg4", "Olig2")),
    "Micro": ("Glia", ("Cx3cr1", "P2ry12", "Tmem119")),
    "Endo": ("Vascular", ("Cldn5", "Flt1", "Pecam1")),
    "Ependymal": ("Glia", ("Foxj1", "Ccdc153", "Rarres2")),
}

CLASS_MARKERS = {
    "Excitatory": ("Slc17a7", "Slc17a6", "Neurod6"),
    "Inhibitory": ("Gad1", "Gad2", "Slc32a1"),
}
PAN_NEURONAL = ("Snap25", "Syt1", "Rbfox3")

#: major division -> region programme genes (expressed by every cell there)
REGION_GENES = {
    "Isocortex": ("Emx1", "Satb2"),
    "OLF": ("Omp", "Gng13"),
    "HPF": ("Zbtb20", "Nr3c2"),
    "STR": ("Ppp1r1b", "Rgs9"),
    "PAL": ("Nkx2-1", "Zic1"),
    "TH": ("Gbx2", "Shox2"),
    "HY": ("Otp", "Sim1"),
    "MB": ("Otx2", "Pax7"),
    "fiber tracts": ("Mobp", "Ermn"),
    "VS": ("Ttr", "Kl"),
}
GRADIENT_GENES = {
    "Nr2f1": ("ap", 1.4),
    "Cbln2": ("ap", -1.4),
    "Epha4": ("dv", 1.4),
    "Sema3e": ("dv", -1.4),
}
N_OTHER_GENES = 40

_GLIA = {"Astro": 0.12, "Oligo": 0.08, "OPC": 0.04, "Micro": 0.04, "Endo": 0.05}
#: fine region acronym -> {cell type: weight}
COMPOSITION: dict[str, dict[str, float]] = {
    "CTX1": {"Lamp5": 0.35, "Astro": 0.3, "Micro": 0.1, "Endo": 0.1, "OPC": 0.05, "Oligo": 0.1},
    "CTX2/3": {"L2/3 IT": 0.5, "Pvalb": 0.08, "Sst": 0.06, **_GLIA},
    "CTX4": {"L4 IT": 0.5, "Pvalb": 0.1, "Sst": 0.05, **_GLIA},
    "CTX5": {"L5 ET": 0.45, "Pvalb": 0.08, "Sst": 0.08, **_GLIA},
    "CTX6": {"L6 CT": 0.5, "Pvalb": 0.05, "Sst": 0.06, **_GLIA},
    "OLF": {"OB granule": 0.6, **_GLIA},
    "CA": {"CA pyramidal": 0.6, "Pvalb": 0.05, "Sst": 0.05, **_GLIA},
    "DG": {"DG granule": 0.7, **_GLIA},
    "STR": {"MSN D1": 0.32, "MSN D2": 0.32, "Pvalb": 0.03, **_GLIA},
    "PAL": {"PAL GABA": 0.5, "Oligo": 0.1, **{k: v for k, v in _GLIA.items() if k != "Oligo"}},
    "TH": {"TH glut": 0.6, **_GLIA},
    "HY": {"HY GABA": 0.3, "HY glut": 0.3, **_GLIA},
    "MB": {"MB glut": 0.45, "HY GABA": 0.1, **_GLIA},
    "fiber tracts": {"Oligo": 0.7, "Astro": 0.12, "OPC": 0.06, "Micro": 0.06, "Endo": 0.06},
    "VS": {"Ependymal": 0.8, "Astro": 0.1, "Micro": 0.1},
}


def gene_universe() -> list[str]:
    """Every gene of the demo (deterministic order)."""
    genes: list[str] = []
    for _, markers in CELL_TYPES.values():
        genes += list(markers)
    for m in CLASS_MARKERS.values():
        genes += list(m)
    genes += list(PAN_NEURONAL)
    for g in REGION_GENES.values():
        genes += list(g)
    genes += list(GRADIENT_GENES)
    genes += [f"Gm{1000 + i}" for i in range(N_OTHER_GENES)]
    assert len(set(genes)) == len(genes)
    return genes


class ExpressionModel:
    """Log-mean expression of every (cell type, region, position), fixed by a seed."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.genes = gene_universe()
        self.gidx = {g: i for i, g in enumerate(self.genes)}
        G = len(self.genes)
        self.types = list(CELL_TYPES)
        self.baseline = rng.normal(-1.6, 0.7, G)
        self.type_profile = rng.normal(0.0, 0.45, (len(self.types), G))
        for t, (main, markers) in CELL_TYPES.items():
            ti = self.types.index(t)
            for g in markers:
                self.type_profile[ti, self.gidx[g]] += 3.6
            for g in CLASS_MARKERS.get(main, ()):
                self.type_profile[ti, self.gidx[g]] += 3.0
            if main in CLASS_MARKERS:
                for g in PAN_NEURONAL:
                    self.type_profile[ti, self.gidx[g]] += 1.8

    def log_mean(
        self, types: np.ndarray, regions: np.ndarray, ap01: np.ndarray, dv01: np.ndarray
    ) -> np.ndarray:
        """(n, G) log-mean expression for cells of type index ``types`` in major
        ``regions`` at normalised AP / DV positions in [0, 1]."""
        lm = self.baseline[None, :] + self.type_profile[types]
        for reg, genes in REGION_GENES.items():
            sel = regions == reg
            for g in genes:
                lm[sel, self.gidx[g]] += 2.0
        for g, (axis, slope) in GRADIENT_GENES.items():
            pos = ap01 if axis == "ap" else dv01
            lm[:, self.gidx[g]] += 1.0 + slope * (pos - 0.5) * 2
        return lm


def sample_counts(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Negative binomial counts (Gamma-Poisson) with dispersion ``THETA``."""
    lam = rng.gamma(THETA, mean / THETA)
    return rng.poisson(lam).astype(np.int32)
