"""The Atlas type on the real CCFv3 (25 and 50 um, csv and json ontologies) and the demo."""

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.atlas import Atlas, Ontology, make_demo_atlas

from ._data import CCF25, CCF50, ONTO_CSV, ONTO_JSON, shared


@pytest.fixture(scope="module")
def ccf50():
    return Atlas.load(shared(CCF50), ontology=shared(ONTO_CSV))


def test_ontologies_csv_and_json_agree():
    a = Ontology.from_file(shared(ONTO_CSV))
    b = Ontology.from_file(shared(ONTO_JSON))
    assert len(a) == len(b) == 1327
    for acr in ("root", "Isocortex", "CA1", "VISp", "TH", "fiber tracts"):
        sid = a.id_of(acr)
        assert b.acronym(sid) == acr
        assert a.parent(sid) == b.parent(sid)
        assert a.rgb(sid) == b.rgb(sid)
    visp1 = a.id_of("VISp1")
    assert a.is_descendant(visp1, a.id_of("Isocortex"))
    assert a.acronym(a.ancestor_at_depth(visp1, 0)) == "root"
    assert a.depth(a.id_of("root")) == 0 and a.depth(visp1) > 5


def test_ccf50_geometry_and_lookup(ccf50):
    assert ccf50.shape == (264, 160, 228) and ccf50.resolution_um == 50
    assert ccf50.midline_ml_um == pytest.approx(5700)
    # a point in the middle of the thalamus, left hemisphere
    sid = ccf50.structure_at(np.array([[7000.0, 3500.0, 5000.0]]))[0]
    th = ccf50.ontology.id_of("TH")
    assert ccf50.ontology.is_descendant(sid, th)
    assert ccf50.structure_at(np.array([[-10.0, 0, 0], [1e6, 0, 0]])).tolist() == [0, 0]


def test_ccf_slices_coronal_sagittal_hemi_oblique(ccf50):
    s = ccf50.slice("coronal", 7000)
    assert s.shape == (160, 228)
    assert np.array_equal(s.labels, ccf50.annotation[140])
    left = ccf50.slice("coronal", 7000, hemisphere="left")
    assert left.labels[:, 114:].max() == 0 and left.labels[:, :114].max() > 0
    right = ccf50.slice("coronal", 7000, hemisphere="right")
    assert right.labels[:, :114].max() == 0
    sag = ccf50.slice("sagittal", 3000)
    assert sag.shape == (160, 264)
    assert np.array_equal(sag.labels, ccf50.annotation[:, :, 60].T)
    # an exact oblique slice of angle 0 equals the plain one; 4 degrees differs a little
    flat = ccf50.slice("coronal", 7025, angles_deg=(1e-9, 0))
    assert (flat.labels == ccf50.slice("coronal", 7025).labels).mean() > 0.99
    tilt = ccf50.slice("coronal", 7025, angles_deg=(4, 0))
    agree = (tilt.labels == flat.labels).mean()
    assert 0.5 < agree < 0.99
    # to_3d puts in-plane points back on the cutting plane
    xy = np.array([[1000.0, 2000.0], [9000.0, 4000.0]])
    p = tilt.to_3d(xy)
    assert np.allclose(p[:, 1:], xy[:, ::-1])
    assert p[1, 0] - p[0, 0] == pytest.approx(np.tan(np.deg2rad(4)) * 8000)


def test_bad_atlas_requests(ccf50):
    with pytest.raises(BrainAtlasInputError, match="outside the atlas"):
        ccf50.slice("coronal", 20000)
    with pytest.raises(BrainAtlasInputError, match="plane"):
        ccf50.slice("axial", 100)
    with pytest.raises(BrainAtlasInputError, match="not found"):
        Atlas.load("/no/such/annotation.nrrd")


def test_ccf25_loads_with_json_ontology():
    a = Atlas.load(shared(CCF25), ontology=shared(ONTO_JSON))
    assert a.shape == (528, 320, 456) and a.resolution_um == 25
    ids = np.unique(a.annotation[::4, ::4, ::4])
    missing = [i for i in ids if i and i not in a.ontology]
    assert not missing
    assert a.version.startswith("annotation_25.nrrd")


def test_demo_atlas_structure():
    a = make_demo_atlas()
    assert a.annotation.shape == (160, 110, 160)
    onto = a.ontology
    present = {onto.acronym(i) for i in np.unique(a.annotation) if i}
    for acr in (
        "CTX1",
        "CTX2/3",
        "CTX4",
        "CTX5",
        "CTX6",
        "CA",
        "DG",
        "STR",
        "PAL",
        "TH",
        "HY",
        "MB",
        "OLF",
        "fiber tracts",
        "VS",
    ):
        assert acr in present
    # two mirror-symmetric hemispheres
    assert np.array_equal(a.annotation, a.annotation[:, :, ::-1])
    # deterministic (cached object, and the generator itself)
    from napari_brainatlas.atlas.demo_atlas import demo_volume

    assert np.array_equal(demo_volume.__wrapped__(50.0), a.annotation)
