"""The shared model protocol (napari_brainatlas.models): every trainable model trains one
epoch on tiny data through the same calls, saves the same folder layout, loads back,
raises Cancelled on cancel, and answers every broken folder with one
BrainAtlasInputError naming the folder and the file. Folders of the old layouts (written
by commit 8393fe7, tests/data/legacy_models) still load."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_brainatlas import BrainAtlasInputError, Cancelled
from napari_brainatlas.models import TrainableModel

from . import _legacy_data as D

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_models"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def secs():
    return D.sections()


@pytest.fixture(scope="module")
def spacon_data():
    return D.spacon_data()


@pytest.fixture(scope="module")
def reference(secs):
    """A trained tiny FuseMap over the two reference sections (for the query mapping)."""
    from napari_brainatlas.fusemap import FuseMap, FuseMapSettings

    torch.set_num_threads(1)
    m = FuseMap(
        [a.copy() for a in secs[:2]],
        settings=FuseMapSettings(min_steps=2, **D.TINY_FUSEMAP),
        seed=0,
    )
    m.train(epochs=1)
    return m


class Kind:
    """How to build one model kind, what to give its ``load`` and how to read its
    embedding (to check that a loaded model gives the same one)."""

    def __init__(self, name, build, load_kw, latent, latent_edit):
        self.name, self.build, self.load_kw = name, build, load_kw
        self.latent, self.latent_edit = latent, latent_edit


def _kinds(secs, spacon_data, reference) -> dict[str, Kind]:
    from napari_brainatlas.annotate import QueryMapping, QueryMappingSettings
    from napari_brainatlas.cellformer import CellFormer, CellFormerSettings
    from napari_brainatlas.domains import SpaConModel, SpaConSettings
    from napari_brainatlas.fusemap import FuseMap, FuseMapSettings

    refs, q = [a.copy() for a in secs[:2]], secs[2].copy()

    def set_in(path, keys, value):
        cfg = json.loads(path.read_text())
        d = cfg
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        path.write_text(json.dumps(cfg))

    return {
        "FuseMap": Kind(
            "FuseMap",
            lambda: FuseMap(refs, settings=FuseMapSettings(min_steps=2, **D.TINY_FUSEMAP), seed=0),
            {"sections": refs},
            lambda m: np.vstack(m.get_latent_representation("cell")),
            lambda f: set_in(f / "config.json", ["settings", "n_latent"], 4),
        ),
        "QueryMapping": Kind(
            "QueryMapping",
            lambda: QueryMapping(reference, [q], settings=QueryMappingSettings(), seed=0),
            {"query_sections": [q]},
            lambda m: m.get_latent_representation("cell", 0),
            lambda f: set_in(f / "reference" / "config.json", ["settings", "n_latent"], 4),
        ),
        "SpaConModel": Kind(
            "SpaConModel",
            lambda: SpaConModel(spacon_data, settings=SpaConSettings(**D.TINY_SPACON), seed=0),
            {},
            lambda m: m.z_spatial,
            lambda f: set_in(f / "config.json", ["net", "latent"], 3),
        ),
        "CellFormer": Kind(
            "CellFormer",
            lambda: CellFormer(
                [a.copy() for a in secs[:2]],
                settings=CellFormerSettings(**D.TINY_CELLFORMER),
                seed=0,
            ),
            {"adatas": [a.copy() for a in secs[:2]]},
            lambda m: m.get_latent_representation(write=False),
            lambda f: set_in(f / "config.json", ["settings", "d_model"], 32),
        ),
    }


KINDS = ["FuseMap", "QueryMapping", "SpaConModel", "CellFormer"]


@pytest.fixture(scope="module")
def kinds(secs, spacon_data, reference):
    return _kinds(secs, spacon_data, reference)


@pytest.fixture(scope="module")
def saved(kinds, tmp_path_factory):
    """Each kind trained one epoch and saved: name -> (model, folder)."""
    torch.set_num_threads(1)
    out = {}
    for name in KINDS:
        m = kinds[name].build()
        m.train(epochs=1)
        out[name] = (m, m.save(tmp_path_factory.mktemp(name) / "model"))
    return out


# --------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("name", KINDS)
def test_train_one_epoch_save_load(name, kinds, tmp_path):
    kind = kinds[name]
    m = kind.build()
    assert isinstance(m, TrainableModel)
    assert not m.is_trained and m.history == []
    seen = []
    hist = m.train(
        epochs=1, progress=lambda d, t, info: seen.append((d, t, info)), cancel=lambda: False
    )
    assert m.is_trained and hist is m.history and len(hist) >= 1
    assert all(isinstance(h, dict) for h in hist)
    done, total, info = seen[0]
    assert done == 1 and isinstance(total, int) and total >= 1 and isinstance(info, dict)
    assert info["epoch"] == 1 and [s[0] for s in seen] == list(range(1, len(seen) + 1))
    folder = m.save(tmp_path / "model")
    assert folder == tmp_path / "model" and folder.is_dir()
    assert {"config.json", "weights.pt", "history.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"] == name and cfg["format_version"] == type(m).format_version
    assert {"settings", "seed"} <= set(cfg)
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    back = type(m).load(folder, **kind.load_kw)
    assert type(back) is type(m) and back.is_trained
    assert back.history == json.loads(json.dumps(m.history))
    np.testing.assert_allclose(kind.latent(back), kind.latent(m), atol=1e-5)
    # overwrite: refused when False, done when True
    with pytest.raises(BrainAtlasInputError, match="overwrite"):
        m.save(folder, overwrite=False)
    assert m.save(folder, overwrite=True) == folder


@pytest.mark.parametrize("name", KINDS)
def test_cancel_raises_cancelled(name, kinds):
    m = kinds[name].build()
    with pytest.raises(Cancelled):
        m.train(epochs=2, cancel=lambda: True)
    assert m.cancelled and not m.is_trained and m.history == []
    seen = []  # cancelled after the first epoch: that epoch is in the history
    with pytest.raises(Cancelled):
        m.train(epochs=3, progress=lambda *a: seen.append(a), cancel=lambda: len(seen) >= 1)
    assert len(seen) == 1 and len(m.history) == 1 and not m.is_trained


def test_same_folder_layout(saved):
    files = {n: {p.name for p in f.iterdir()} for n, (_m, f) in saved.items()}
    assert all({"config.json", "weights.pt", "history.json"} <= v for v in files.values())
    assert files["FuseMap"] == {
        "config.json",
        "weights.pt",
        "history.json",
        "genes.csv",
        "panels.csv",
    }
    assert files["CellFormer"] == {"config.json", "weights.pt", "history.json", "genes.csv"}
    assert files["SpaConModel"] == {"config.json", "weights.pt", "history.json", "latent.npz"}
    assert {"genes.csv", "panels.csv", "latent.npz", "obs_names.csv", "reference"} <= files[
        "QueryMapping"
    ]
    assert {p.name for p in (saved["QueryMapping"][1] / "reference").iterdir()} == files["FuseMap"]
    for _m, f in saved.values():
        cfg = json.loads((f / "config.json").read_text())
        assert {"model", "format_version", "settings", "seed", "is_trained"} <= set(cfg)


def test_write_embeddings_default_copies(saved, secs, kinds):
    from napari_brainatlas.fusemap import FuseMap

    fm = FuseMap.load(saved["FuseMap"][1], [a.copy() for a in secs[:2]])
    out = fm.write_embeddings()
    assert all("X_fusemap_cell" not in a.obsm for a in fm.adatas)
    assert all("X_fusemap_cell" in a.obsm for a in out)
    assert fm.write_embeddings(copy=False)[0] is fm.adatas[0]  # the old behaviour
    qm = saved["QueryMapping"][0]
    assert (
        "X_fusemap_cell" not in qm.adatas[0].obsm and qm.write_embeddings()[0] is not qm.adatas[0]
    )
    cf = saved["CellFormer"][0]
    out = cf.write_embeddings()
    assert "X_cellformer" in out[0].obsm and out[0] is not cf.adatas[0]
    sp = saved["SpaConModel"][0]
    import anndata as ad

    fake = ad.AnnData(np.zeros((len(sp.z_spatial), 1), np.float32))
    res = sp.write_embeddings([fake], 0.5, sp.domains(0.5))
    assert "X_spacon" not in fake.obsm and res[0].obsm["X_spacon"].shape == sp.z_spatial.shape


# --------------------------------------------------------------------------- broken folders
class _Unsafe:
    """A pickled Python object inside a checkpoint (torch.load(weights_only=True) refuses)."""


def _edit_json(path: Path, fn) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    # case: (how to break the folder, the file the message must name)
    "config missing": (lambda f, k: (f / "config.json").unlink(), "config.json"),
    "config empty": (lambda f, k: (f / "config.json").write_text(""), "config.json"),
    "config partial": (lambda f, k: _truncate(f / "config.json"), "config.json"),
    "config not an object": (lambda f, k: (f / "config.json").write_text("[1, 2]"), "config.json"),
    "config lacks model": (
        lambda f, k: _edit_json(f / "config.json", lambda c: c.pop("model")),
        "config.json",
    ),
    "config lacks settings": (
        lambda f, k: _edit_json(f / "config.json", lambda c: c.pop("settings")),
        "config.json",
    ),
    "config lacks seed": (
        lambda f, k: _edit_json(f / "config.json", lambda c: c.pop("seed")),
        "config.json",
    ),
    "another model class": (
        lambda f, k: _edit_json(
            f / "config.json",
            lambda c: c.update(model="CellFormer" if k != "CellFormer" else "FuseMap"),
        ),
        "config.json",
    ),
    "newer format": (
        lambda f, k: _edit_json(f / "config.json", lambda c: c.update(format_version=99)),
        "config.json",
    ),
    "bad setting value": (
        lambda f, k: _edit_json(f / "config.json", lambda c: c["settings"].update(nope=1)),
        "config.json",
    ),
    "wrong latent size": (None, "config.json"),
    "weights missing": (lambda f, k: (f / "weights.pt").unlink(), "weights.pt"),
    "weights empty": (lambda f, k: (f / "weights.pt").write_bytes(b""), "weights.pt"),
    "weights truncated": (lambda f, k: _truncate(f / "weights.pt"), "weights.pt"),
    "weights not torch": (lambda f, k: (f / "weights.pt").write_bytes(b"hello"), "weights.pt"),
    "weights pickled objects": (
        lambda f, k: torch.save({"w": torch.zeros(2), "obj": _Unsafe()}, f / "weights.pt"),
        "weights.pt",
    ),
    "history missing": (lambda f, k: (f / "history.json").unlink(), "history.json"),
    "history partial": (lambda f, k: _truncate(f / "history.json"), "history.json"),
    "history not a list": (
        lambda f, k: (f / "history.json").write_text('{"a": 1}'),
        "history.json",
    ),
    "history not records": (lambda f, k: (f / "history.json").write_text("[1, 2]"), "history.json"),
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("name", KINDS)
def test_broken_folder_is_one_input_error(name, case, saved, kinds, tmp_path):
    _m, good = saved[name]
    folder = tmp_path / "broken"
    shutil.copytree(good, folder)
    brk, file = BROKEN[case]
    (kinds[name].latent_edit if brk is None else lambda f: brk(f, name))(folder)
    with pytest.raises(BrainAtlasInputError) as err:
        type(saved[name][0]).load(folder, **kinds[name].load_kw)
    msg = str(err.value)
    assert str(folder) in msg and file in msg, msg
    assert "weights_only=False" not in msg and "\n" not in msg


TABLES = [
    ("FuseMap", "genes.csv", _truncate),
    ("FuseMap", "genes.csv", lambda p: p.write_text("")),
    ("FuseMap", "panels.csv", lambda p: p.unlink()),
    ("FuseMap", "panels.csv", lambda p: p.write_text("a,b\n1,2\n")),
    ("QueryMapping", "latent.npz", _truncate),
    ("QueryMapping", "obs_names.csv", lambda p: p.unlink()),
    ("QueryMapping", "panels.csv", lambda p: p.write_text("section,gene\nnobody,X\n")),
    ("SpaConModel", "latent.npz", lambda p: p.unlink()),
    ("SpaConModel", "latent.npz", lambda p: np.savez(p, z_spatial=np.zeros((3, 2)))),
    ("CellFormer", "genes.csv", lambda p: p.write_text("gene\n")),
    ("CellFormer", "genes.csv", lambda p: p.write_text("name\nA\n")),
]


@pytest.mark.parametrize(("name", "file", "brk"), TABLES)
def test_broken_table_is_one_input_error(name, file, brk, saved, kinds, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(saved[name][1], folder)
    brk(folder / file)
    with pytest.raises(BrainAtlasInputError) as err:
        type(saved[name][0]).load(folder, **kinds[name].load_kw)
    assert str(folder) in str(err.value) and file in str(err.value), str(err.value)


def test_not_a_folder(tmp_path):
    from napari_brainatlas.fusemap import FuseMap

    with pytest.raises(BrainAtlasInputError, match="does not exist"):
        FuseMap.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        FuseMap.load(tmp_path / "file")


# --------------------------------------------------------------------------- atomic save
def test_failed_save_keeps_the_old_folder(saved, tmp_path):
    m, _ = saved["CellFormer"]
    folder = m.save(tmp_path / "cf")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Failing(type(m)):
        def _write_files(self, f):
            super()._write_files(f)
            raise OSError("disk full")

    bad = Failing.__new__(Failing)
    bad.__dict__.update(m.__dict__)
    with pytest.raises(OSError, match="disk full"):
        bad.save(folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["cf"]  # the temporary folder is gone
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BrainAtlasInputError, match="not a model folder"):
        m.save(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_saved_files_get_the_umask(saved, tmp_path):
    m, _ = saved["SpaConModel"]
    old = os.umask(0o027)
    try:
        folder = m.save(tmp_path / "sp")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o640}


# --------------------------------------------------------------------------- settings
def test_settings_and_keyword_options(secs):
    import dataclasses

    from napari_brainatlas.fusemap import FuseMap, FuseMapSettings

    s = FuseMapSettings()
    assert (s.n_latent, s.n_hidden, s.min_steps, s.weight_average, s.recon_from) == (
        64,
        512,
        60,
        0.99,
        "both",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_latent = 3
    a = FuseMap(secs[:2], seed=0, n_latent=8, n_hidden=32, disc_hidden=16)
    b = FuseMap(secs[:2], settings=FuseMapSettings(n_latent=8, n_hidden=32, disc_hidden=16), seed=0)
    assert a.settings == b.settings and a.config == b.config
    c = FuseMap(secs[:2], settings=b.settings, seed=0, n_latent=4)  # options on top
    assert c.settings == dataclasses.replace(b.settings, n_latent=4)
    with pytest.raises(BrainAtlasInputError, match="unknown FuseMap option 'n_latnet'"):
        FuseMap(secs[:2], n_latnet=8)
    with pytest.raises(BrainAtlasInputError, match="recon_from"):
        FuseMapSettings(recon_from="gene")


# --------------------------------------------------------------------------- deprecations
def test_deprecated_spellings_still_work(secs, spacon_data, tmp_path):
    from napari_brainatlas.cellformer import CellFormer
    from napari_brainatlas.domains import SpaConModel, train
    from napari_brainatlas.fusemap import FuseMap

    m = FuseMap([a.copy() for a in secs[:2]], seed=0, min_steps=2, **D.TINY_FUSEMAP)
    with pytest.warns(DeprecationWarning, match="max_epochs"):
        m.train(max_epochs=2, cancel=lambda: True)  # the old cancel: no raise, a flag
    assert m.cancelled and m.is_trained
    losses, lines = [], []
    with pytest.warns(DeprecationWarning, match="SpaConModel"):
        sp = train(
            spacon_data,
            epochs=1,
            progress=lambda e, n, loss: losses.append(loss),
            log=lines.append,
            **D.TINY_SPACON,
        )
    assert isinstance(sp, SpaConModel) and isinstance(losses[0], float)
    assert lines[0].startswith("epoch 1/1: loss ") and sp.epoch_seconds[0] > 0
    cf = CellFormer([a.copy() for a in secs[:2]], seed=0, **D.TINY_CELLFORMER)
    texts = []
    with pytest.warns(DeprecationWarning, match="info\\['loss'\\]"):
        cf.train(1, progress=lambda e, n, loss: texts.append(f"{loss:.4f} {float(loss):.2f}"))
    assert texts[0] == f"{cf.history[0]['loss']:.4f} {cf.history[0]['loss']:.2f}"
    folder = cf.save(tmp_path / "cf")
    with pytest.warns(DeprecationWarning, match="overwrite=True"):
        cf.save(folder)  # the old default replaced an existing model folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cf.save(folder, overwrite=True)


# --------------------------------------------------------------------------- old layouts
def test_old_layouts_load_with_the_same_embeddings(secs, tmp_path):
    from napari_brainatlas.annotate import QueryMapping
    from napari_brainatlas.cellformer import CellFormer
    from napari_brainatlas.domains import SpaConModel
    from napari_brainatlas.fusemap import FuseMap

    exp = np.load(LEGACY / "expected.npz")
    fm = FuseMap.load(LEGACY / "fusemap_v1", [a.copy() for a in secs[:2]])
    for i, z in enumerate(fm.get_latent_representation("cell")):
        np.testing.assert_allclose(z, exp[f"fusemap_cell_{i}"], atol=1e-5)
    assert fm.is_trained and fm.history and fm.settings.n_latent == 8
    qm = QueryMapping.load(LEGACY / "query_v1", [secs[2].copy()])
    np.testing.assert_allclose(
        qm.get_latent_representation("cell", 0), exp["query_cell_0"], atol=1e-5
    )
    lite = QueryMapping.load(LEGACY / "query_v1")  # without the query: saved embeddings
    np.testing.assert_allclose(
        lite.get_latent_representation("cell", 0), exp["query_cell_0"], atol=1e-5
    )
    sp = SpaConModel.load(LEGACY / "spacon_v1")
    assert np.array_equal(sp.domains(0.5, resolution=0.5), exp["spacon_domains"])
    assert [h["epoch"] for h in sp.history] == [1, 2] and sp.settings.latent == 4
    cf = CellFormer.load(LEGACY / "cellformer_v2", [a.copy() for a in secs[:2]])
    np.testing.assert_allclose(
        cf.get_latent_representation(write=False), exp["cellformer_latent"], atol=1e-5
    )
    # a loaded old folder saves in the new layout and loads again
    back = CellFormer.load(cf.save(tmp_path / "cf"), [a.copy() for a in secs[:2]])
    np.testing.assert_allclose(
        back.get_latent_representation(write=False), exp["cellformer_latent"], atol=1e-5
    )


def test_loaded_without_data_cannot_train(saved):
    from napari_brainatlas.annotate import QueryMapping
    from napari_brainatlas.domains import SpaConModel
    from napari_brainatlas.fusemap import FuseMap

    for cls, name in (
        (FuseMap, "FuseMap"),
        (QueryMapping, "QueryMapping"),
        (SpaConModel, "SpaConModel"),
    ):
        m = cls.load(saved[name][1])
        with pytest.raises(BrainAtlasInputError):
            m.train(epochs=1)
