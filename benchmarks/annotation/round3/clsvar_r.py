import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
import torch

torch.set_num_threads(1)
import os
from pathlib import Path

CACHE = os.environ.get("ROUND3_CACHE", "/tmp/explore")   # trained reference models
import run as B

from napari_brainatlas.annotate import map_query
from napari_brainatlas.annotate.classifier import MLPLabelClassifier
from napari_brainatlas.model import FuseMap

which, ep = sys.argv[1], int(sys.argv[2])
refs, q_full, hidden = B.osmfish_sets() if which == "osm" else B.demo_sets(True)
lab = sys.argv[3]; kind = "tissue" if "egion" in lab else "cell"
q = B.hide_genes(q_full, hidden)
model = FuseMap.load(Path(f"{CACHE}/{which}_ref{ep}"), sections=refs, device="cpu")
Zref, y = [], []
for a, p, zc in zip(model.adatas, model.prepared, model.get_latent_representation(kind)):
    Zref.append(zc[p.kept]); y.append(a.obs[lab].astype(str).to_numpy()[p.kept])
Zref, y = np.concatenate(Zref), np.concatenate(y)
res = {}
for seed in (0, 1, 2):
    m = map_query(model, [q], epochs=ep, seed=seed)
    zq = m.get_latent_representation(kind, 0); kept = np.isfinite(zq).all(1)
    truth = q.obs[lab].astype(str).to_numpy()[kept]
    for bal in ("balanced", "sqrt"):
        for mon in ("balanced_accuracy",):
            c = MLPLabelClassifier(seed=0, balance=bal, monitor=mon).fit(Zref, y)
            s = B.scores(truth, c.classes_[c.predict_proba(zq[kept]).argmax(1)])
            res.setdefault((bal, mon), []).append(s)
            print(which, seed, bal, mon, "%.3f/%.3f" % s, flush=True)
for k, v in res.items():
    print(which, k, "mean acc %.3f f1 %.3f" % tuple(np.mean(v, 0)))
