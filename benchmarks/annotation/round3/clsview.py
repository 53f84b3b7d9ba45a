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
from napari_brainatlas.annotate.classifier import KNNLabelClassifier, MLPLabelClassifier
from napari_brainatlas.annotate.query import encode_through_panel
from napari_brainatlas.model import FuseMap

which, adv, seed = sys.argv[1], sys.argv[2] == "adv", int(sys.argv[3])
refs, q_full, hidden = B.osmfish_sets() if which == "osm" else B.demo_sets(True)
lab = "ClusterName" if which == "osm" else "celltype"
q = B.hide_genes(q_full, hidden)
model = FuseMap.load(Path(f"{CACHE}/{which}_ref5"), sections=refs, device="cpu")
m = map_query(model, [q], epochs=5, seed=seed, adversarial=adv)
zq = m.get_latent_representation("cell", 0); kept = np.isfinite(zq).all(1)
truth = q.obs[lab].astype(str).to_numpy()[kept]
Zref, Zview, y = [], [], []
for a, p, zc in zip(model.adatas, model.prepared, model.get_latent_representation("cell")):
    Zref.append(zc[p.kept]); Zview.append(encode_through_panel(m, 0, a, p.kept)); y.append(a.obs[lab].astype(str).to_numpy()[p.kept])
Zref, Zview, y = map(np.concatenate, (Zref, Zview, y))
ok = np.isfinite(Zview).all(1)
for name, Z in (("ref zC", Zref), ("query view", Zview)):
    c = MLPLabelClassifier(seed=0).fit(Z[ok], y[ok]); pr = c.classes_[c.predict_proba(zq[kept]).argmax(1)]
    k = KNNLabelClassifier(15).fit(Z[ok], y[ok]); pk = k.classes_[k.predict_proba(zq[kept]).argmax(1)]
    print(which, adv, seed, name, "mlp %.3f/%.3f" % B.scores(truth, pr), "knn %.3f" % B.scores(truth, pk)[0], flush=True)
