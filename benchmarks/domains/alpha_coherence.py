"""Which alpha gives spatially coherent SpaCon domains on the demo (the Domains dock's
default, issue 23).

The demo the viewer opens (``make_demo_sections(seed=0)``: 4 sections at 400 cells/mm2),
registered from the ground truth, the demo connectome; SpaCon trained as the dock trains
it (30 epochs, Leiden resolution 0.5); one model per seed, re-mixed at each alpha
without retraining. For each alpha:

* ``coherence``: the fraction of cells whose domain equals the majority domain of their
  10 nearest neighbours in the same section (the cell itself left out): 1 = domains are
  contiguous patches, low = salt and pepper;
* ``ARI``: adjusted Rand index against each cell's true CCF major division
  (``obs['region']`` of the demo), for reference;
* ``domains``: how many Leiden found.

    python benchmarks/domains/alpha_coherence.py [--seeds 0 1] [--threads 1]

Prints a markdown table (paste into benchmarks/domains/RESULTS_domains.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def registered_demo(seed: int = 0):
    from napari_brainatlas.demo import make_demo_sections

    out = []
    for a in make_demo_sections(seed=seed):
        b = a.copy()
        b.obs["ccf_id"] = b.obs["ccf_id_true"].to_numpy().astype(np.int64)
        b.obs["ccf_acronym"] = b.obs["ccf_acronym_true"].astype(str).to_numpy()
        b.obsm["ccf_coords"] = np.asarray(b.obsm["ccf_coords_true"], float)
        b.uns["ccf_registration"] = {"truth": {"atlas": "demo"}}
        out.append(b)
    return out


def coherence(sections, labels_per_section, k: int = 10) -> float:
    """Fraction of cells whose label is the majority label of their k spatial
    neighbours (same section, the cell left out)."""
    from scipy.spatial import cKDTree

    agree = total = 0
    for a, lab in zip(sections, labels_per_section):
        lab = np.asarray(lab).astype(str)
        codes, inv = np.unique(lab, return_inverse=True)
        xy = np.asarray(a.obsm["spatial"], float)
        _, idx = cKDTree(xy).query(xy, k=k + 1)
        neigh = inv[idx[:, 1:]]
        counts = np.zeros((len(xy), len(codes)), np.int32)
        np.add.at(counts, (np.repeat(np.arange(len(xy)), k), neigh.ravel()), 1)
        agree += int((counts.argmax(1) == inv).sum())
        total += len(xy)
    return agree / max(total, 1)


def smoothed(sections, labels_per_section, k: int = 30):
    """The labels after a k-nearest-neighbour spatial vote (the Domains dock's
    'smooth domains' option, :func:`napari_brainatlas.annotate.smooth_labels`)."""
    from napari_brainatlas.annotate.smoothing import smooth_labels

    return [
        smooth_labels(a.obsm["spatial"], lab, k=k)[0]
        for a, lab in zip(sections, labels_per_section)
    ]


def main(argv=None) -> None:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from napari_brainatlas.workflows.domains import assign_domains, find_domains, prepare_domains

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--resolutions", type=float, nargs="+", default=[0.5, 0.2])
    p.add_argument("--smooth-k", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = registered_demo()
    n = sum(a.n_obs for a in sections)
    truth = np.concatenate([a.obs["region"].astype(str).to_numpy() for a in sections])
    rows: dict[tuple, list] = {}
    times = []
    for seed in args.seeds:
        prepared = prepare_domains(sections, "demo", seed=seed)
        t0 = time.perf_counter()
        found = find_domains(prepared, alpha=0.0, epochs=args.epochs, seed=seed)
        times.append(time.perf_counter() - t0)
        for res_ in args.resolutions:
            for alpha in ALPHAS:
                res = assign_domains(prepared, found.model, alpha=alpha, resolution=res_, seed=seed)
                labs = [s.obs["spacon_domain"].astype(str).to_numpy() for s in res.sections]
                sm = smoothed(res.sections, labs, args.smooth_k)
                rows.setdefault((res_, alpha), []).append(
                    (
                        coherence(res.sections, labs),
                        adjusted_rand_score(truth, np.concatenate(labs)),
                        coherence(res.sections, sm),
                        adjusted_rand_score(truth, np.concatenate(sm)),
                        res.n_domains,
                    )
                )
    print(
        f"{len(sections)} demo sections, {n:,} cells; {args.epochs} epochs; seeds {args.seeds}; "
        f"training {', '.join(f'{t:.0f} s' for t in times)} (torch threads {args.threads}); "
        f"smoothing: a k = {args.smooth_k} spatial vote\n"
    )
    print(
        "| resolution | alpha | coherence | per seed | ARI | coherence smoothed | "
        "ARI smoothed | domains |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (res_, alpha), vals in rows.items():
        v = np.array([x[:4] for x in vals])
        print(
            f"| {res_:g} | {alpha:.1f} | {v[:, 0].mean():.3f} | "
            f"{', '.join(f'{c:.3f}' for c in v[:, 0])} | {v[:, 1].mean():.3f} | "
            f"{v[:, 2].mean():.3f} | {v[:, 3].mean():.3f} | {[x[4] for x in vals]} |"
        )


if __name__ == "__main__":
    main()
