"""Train reference FuseMap + map query once (as benchmarks/annotation does) and cache
embeddings for offline experiments."""
import pickle
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import torch

torch.set_num_threads(1)
import os

CACHE = os.environ.get("ROUND3_CACHE", "/tmp/explore")   # trained reference models
import run as B

from napari_brainatlas.annotate import map_query
from napari_brainatlas.model import FuseMap

which = sys.argv[1]; epochs = int(sys.argv[2])
if which == "osm":
    refs, q_full, hidden = B.osmfish_sets()
else:
    refs, q_full, hidden = B.demo_sets(quick=(sys.argv[3] == "quick"))
t0 = time.time()
q = B.hide_genes(q_full, hidden)
model = FuseMap(refs, seed=0); model.train(max_epochs=epochs)
mapping = map_query(model, [q], epochs=epochs, seed=0)
refw = model.write_embeddings(copy=True)
qw = mapping.write_embeddings()[0]
E = mapping.gene_embedding()
pickle.dump(dict(refs=refs, q_full=q_full, q=q, hidden=hidden, refw=refw, qw=qw, E=E),
            open(f"{CACHE}/{which}_{epochs}.pkl", "wb"))
print("done", time.time() - t0)
