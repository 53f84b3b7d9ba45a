"""Write the model folders of the layouts before the shared model protocol (issue 27):
FuseMap format 1, its query mapping format 1, SpaCon's spacon_model/ and CellFormer
format 2, plus the embeddings the old code computed from them (expected.npz).

Run from the repository root with the source tree of commit 8393fe7 (the code that
wrote these layouts) first on the path::

    git worktree add --detach ../before 8393fe7
    OMP_NUM_THREADS=1 PYTHONPATH=../before/src python tests/data/legacy_models/make_legacy_models.py

tests/test_models_protocol.py loads these folders with the current code.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests import _legacy_data as D  # noqa: E402


def main() -> None:
    import napari_brainatlas
    from napari_brainatlas.annotate import map_query
    from napari_brainatlas.cellformer import CellFormer
    from napari_brainatlas.domains import train
    from napari_brainatlas.fusemap import FuseMap

    if (Path(napari_brainatlas.__file__).parent / "models.py").exists():
        raise SystemExit("run this with the source tree of commit 8393fe7 on PYTHONPATH")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for name in ("fusemap_v1", "query_v1", "spacon_v1", "cellformer_v2"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    secs = D.sections()
    refs, q = [a.copy() for a in secs[:2]], secs[2].copy()
    expected = {}
    fm = FuseMap(refs, seed=0, min_steps=2, **D.TINY_FUSEMAP)
    fm.train(max_epochs=1)
    fm.save(HERE / "fusemap_v1")
    for i, z in enumerate(fm.get_latent_representation("cell")):
        expected[f"fusemap_cell_{i}"] = z
    mp = map_query(fm, [q], epochs=1, seed=0)
    mp.save(HERE / "query_v1")
    expected["query_cell_0"] = mp.get_latent_representation("cell", 0)
    sp = train(D.spacon_data(), epochs=2, seed=0, num_threads=1, **D.TINY_SPACON)
    sp.save(HERE / "spacon_v1")
    expected["spacon_domains"] = sp.domains(0.5, resolution=0.5)
    cf = CellFormer([a.copy() for a in secs[:2]], seed=0, **D.TINY_CELLFORMER)
    cf.train(1)
    cf.save(HERE / "cellformer_v2")
    expected["cellformer_latent"] = cf.get_latent_representation(write=False)
    np.savez_compressed(HERE / "expected.npz", **expected)
    print(
        "wrote",
        ", ".join(sorted(p.name for p in HERE.iterdir() if p.name != "make_legacy_models.py")),
    )


if __name__ == "__main__":
    main()
