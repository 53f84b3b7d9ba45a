import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np
import torch

torch.set_num_threads(1)
import os
from pathlib import Path

CACHE = os.environ.get("ROUND3_CACHE", "/tmp/explore")   # trained reference models
import run as B

from napari_brainatlas.annotate import impute_genes, map_query
from napari_brainatlas.annotate.classifier import KNNLabelClassifier, MLPLabelClassifier
from napari_brainatlas.model import CELL_KEY, FuseMap

which, ep = sys.argv[1], int(sys.argv[2])
variants = json.loads(sys.argv[3])   # list of dicts of map_query kwargs
if which == "osm":
    refs, q_full, hidden = B.osmfish_sets(); lab = "ClusterName"
else:
    refs, q_full, hidden = B.demo_sets(True); lab = "celltype"
q = B.hide_genes(q_full, hidden)
mdir = Path(f"{CACHE}/{which}_ref{ep}")
if mdir.exists():
    model = FuseMap.load(mdir, sections=refs, device="cpu")
else:
    model = FuseMap(refs, seed=0); model.train(max_epochs=ep); model.save(mdir)
refw = model.write_embeddings(copy=True)
ZrC = np.concatenate([a.obsm[CELL_KEY] for a in refw]); yr = np.concatenate([a.obs[lab].astype(str) for a in refw])
okr = np.isfinite(ZrC).all(1)
ref_genes = set().union(*(B.upper_panel(a) for a in refs))
genes = [g for g in hidden if g in ref_genes]
for kw in variants:
    t0 = time.time()
    kw2 = dict(kw); e = kw2.pop("epochs", ep); sd = kw2.pop("seed", 0); kw2.pop("x", None); torch.manual_seed(len(str(kw)) * 7)
    m = map_query(model, [q], epochs=e, seed=sd, **kw2)
    qw = m.write_embeddings()[0]
    kept = np.isfinite(qw.obsm[CELL_KEY]).all(1)
    truth = q.obs[lab].astype(str).to_numpy()[kept]
    c = MLPLabelClassifier(seed=0).fit(ZrC[okr], yr[okr])
    a_mlp = B.scores(truth, c.classes_[c.predict_proba(qw.obsm[CELL_KEY][kept]).argmax(1)])
    k = KNNLabelClassifier(15).fit(ZrC[okr], yr[okr])
    a_knn = B.scores(truth, k.classes_[k.predict_proba(qw.obsm[CELL_KEY][kept]).argmax(1)])
    imp = impute_genes(m, 0, genes)
    rs = []
    for g in genes:
        meas = B.lognorm(q_full, [g])[:, 0]; f = imp[g].to_numpy(); mm = kept & np.isfinite(f)
        rs.append(np.corrcoef(meas[mm], f[mm])[0, 1])
    print(f"{kw} mlp {a_mlp[0]:.3f}/{a_mlp[1]:.3f} knn15 {a_knn[0]:.3f} impR {np.mean(rs):.3f} "
          f"epochs_run {len(m.history)} last {m.history[-1]} t {time.time()-t0:.0f}s", flush=True)
