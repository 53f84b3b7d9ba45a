"""The demo atlas: a small synthetic mouse-like brain the package builds itself.

An 8 x 5.5 x 8 mm volume (AP, DV, ML) at 50 um with two symmetric hemispheres, an
interhemispheric fissure, a six-layer-like isocortex (five depth layers), corpus
callosum / internal capsule (fibre tracts), lateral and third ventricles, striatum,
pallidum, hippocampus (CA, DG), thalamus, hypothalamus, olfactory areas and midbrain.
Ids and colours follow the Allen ontology where a structure exists there, so code
written against the demo runs unchanged on the CCFv3.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .ontology import Ontology

__all__ = ["DEMO_MAJOR_DIVISIONS", "demo_ontology", "demo_volume"]

# (id, acronym, name, parent, colour)
_STRUCTURES = [
    (997, "root", "root", -1, "FFFFFF"),
    (8, "grey", "Basic cell groups and regions", 997, "BFDAE3"),
    (567, "CH", "Cerebrum", 8, "B0F0FF"),
    (315, "Isocortex", "Isocortex", 567, "70FF71"),
    (900001, "CTX1", "Isocortex layer 1", 315, "A8F0A8"),
    (900023, "CTX2/3", "Isocortex layer 2/3", 315, "68D868"),
    (900004, "CTX4", "Isocortex layer 4", 315, "3FC03F"),
    (900005, "CTX5", "Isocortex layer 5", 315, "1FA21F"),
    (900006, "CTX6", "Isocortex layer 6", 315, "0F800F"),
    (698, "OLF", "Olfactory areas", 567, "9AD2BD"),
    (1089, "HPF", "Hippocampal formation", 567, "7ED04B"),
    (375, "CA", "Ammon's horn", 1089, "7ED04B"),
    (726, "DG", "Dentate gyrus", 1089, "7ED04B"),
    (623, "CNU", "Cerebral nuclei", 567, "98D6F9"),
    (477, "STR", "Striatum", 623, "98D6F9"),
    (803, "PAL", "Pallidum", 623, "8599CC"),
    (343, "BS", "Brain stem", 8, "FF7080"),
    (549, "TH", "Thalamus", 343, "FF7080"),
    (1097, "HY", "Hypothalamus", 343, "E64438"),
    (313, "MB", "Midbrain", 343, "FF64FF"),
    (1009, "fiber tracts", "fiber tracts", 997, "CCCCCC"),
    (73, "VS", "ventricular systems", 997, "AAAAAA"),
]

#: acronyms of the major divisions (the level the registration Dice is measured at)
DEMO_MAJOR_DIVISIONS = (
    "Isocortex",
    "OLF",
    "HPF",
    "STR",
    "PAL",
    "TH",
    "HY",
    "MB",
    "fiber tracts",
    "VS",
)


def demo_ontology() -> Ontology:
    df = pd.DataFrame(_STRUCTURES, columns=["id", "acronym", "name", "parent", "color"])
    return Ontology(df)


def _ellipsoid(a, d, m, centre, radii):
    return (
        ((a - centre[0]) / radii[0]) ** 2
        + ((d - centre[1]) / radii[1]) ** 2
        + ((m - centre[2]) / radii[2]) ** 2
    ) <= 1.0


@lru_cache(maxsize=2)
def demo_volume(resolution_um: float) -> np.ndarray:
    res_mm = resolution_um / 1000.0
    n_ap, n_dv, n_ml = (int(np.rint(s / res_mm)) for s in (8.0, 5.5, 8.0))
    a, d, m = np.meshgrid(
        (np.arange(n_ap) + 0.5) * res_mm,
        (np.arange(n_dv) + 0.5) * res_mm,
        (np.arange(n_ml) + 0.5) * res_mm,
        indexing="ij",
        sparse=True,
    )
    lat = np.abs(m - 4.0)
    # outer shape: wider posteriorly, flatter ventrally, an interhemispheric fissure
    rm = 3.5 * (0.72 + 0.28 * np.sin(np.clip((a - 0.3) / 7.4, 0, 1) * np.pi * 0.85))
    rd = np.where(d < 2.9, 2.45, 2.1)
    brain = ((a - 4.0) / 3.75) ** 2 + ((d - 2.9) / rd) ** 2 + (lat / rm) ** 2 <= 1.0
    fissure = (lat < 0.06) & (d < 1.2)
    brain = brain & ~fissure
    depth = ndi.distance_transform_edt(brain, sampling=res_mm)  # mm from the surface

    ids = {acr: sid for sid, acr, *_ in _STRUCTURES}
    vol = np.zeros(brain.shape, dtype=np.int32)
    assigned = np.zeros(brain.shape, dtype=bool)

    def put(mask, acronym):
        nonlocal assigned
        sel = mask & brain & ~assigned
        vol[sel] = ids[acronym]
        assigned |= sel

    # ventricles first, then fibre tracts, so that grey matter never covers them
    put(_ellipsoid(a, d, lat, (3.4, 2.05, 0.95), (1.1, 0.45, 0.16)), "VS")
    put((lat < 0.07) & (d > 3.3) & (d < 4.3) & (a > 4.0) & (a < 5.6), "VS")
    dorsal = d < 3.2
    put((depth >= 0.9) & (depth < 1.05) & dorsal & (a > 0.9), "fiber tracts")
    put((np.abs(lat - 1.45) < 0.08) & (d > 2.4) & (d < 4.0) & (a > 2.9) & (a < 5.2), "fiber tracts")
    # isocortex layers by depth (dorso-lateral mantle), olfactory bulb-like front
    put((a < 1.0) & brain, "OLF")
    mantle = dorsal | (lat > 2.6)
    for lo, hi, acr in [
        (0.0, 0.09, "CTX1"),
        (0.09, 0.32, "CTX2/3"),
        (0.32, 0.47, "CTX4"),
        (0.47, 0.68, "CTX5"),
        (0.68, 0.9, "CTX6"),
    ]:
        put((depth >= lo) & (depth < hi) & mantle, acr)
    # hippocampus beneath the callosum in the posterior half
    hpf = (depth >= 1.05) & (depth < 1.65) & (d < 2.7) & (a > 4.4) & (a < 7.4)
    put(hpf & (depth < 1.33), "CA")
    put(hpf, "DG")
    put(_ellipsoid(a, d, lat, (3.0, 2.85, 1.85), (1.45, 1.0, 0.95)), "STR")
    put(_ellipsoid(a, d, lat, (3.9, 3.65, 1.55), (0.8, 0.5, 0.6)), "PAL")
    put(_ellipsoid(a, d, lat, (5.2, 3.0, 0.0), (1.25, 0.8, 1.35)), "TH")
    put(_ellipsoid(a, d, lat, (4.5, 4.55, 0.0), (1.35, 0.7, 0.85)), "HY")
    put((a > 6.2) & brain, "MB")
    put((a < 1.6) & brain, "OLF")
    # fill the rest of the interior with the nearest grey-matter structure
    grey = assigned & (vol != ids["VS"]) & (vol != ids["fiber tracts"])
    _, (ia, idd, im) = ndi.distance_transform_edt(~grey, return_indices=True)
    rest = brain & ~assigned
    vol[rest] = vol[ia[rest], idd[rest], im[rest]]
    half = n_ml // 2  # exact mirror symmetry: the right hemisphere is the left one mirrored
    vol[:, :, n_ml - half :] = vol[:, :, :half][:, :, ::-1]
    vol.setflags(write=False)
    return vol
