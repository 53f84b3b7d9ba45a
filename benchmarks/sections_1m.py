"""Read and show a synthetic 1,000,000-cell section as a Points layer, recolour by a gene.

Prints time and peak memory per step, for our path (read_sections -> section_layer_data
-> RGBA face colours assigned directly) and side by side napari's plain path (features
with a colour-by-feature string and colormap). Run under a display (xvfb-run):

    xvfb-run -a python benchmarks/sections_1m.py [--cells 1000000] [--genes 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import command_line, machine, measure  # noqa: E402


def make_section(n: int, n_genes: int, path: Path, seed: int = 0) -> Path:
    """A synthetic section: cells in an ellipse (um), sparse Poisson counts, a region."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * np.pi
    xy = np.column_stack([5000 * r * np.cos(t), 3500 * r * np.sin(t)]) + 6000
    region = np.digitize(r, [0.3, 0.6, 0.8])
    rate = rng.gamma(0.5, 1.0, (4, n_genes))[region]
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obs["region"] = pd.Categorical(np.array(["A", "B", "C", "D"])[region])
    a.obsm["spatial"] = xy
    a.write_h5ad(path)
    return path


def draw(viewer) -> None:
    """Force one real draw of the canvas (what the user waits for)."""
    viewer.screenshot(canvas_only=True, flash=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes", type=int, default=60)
    args = ap.parse_args(argv)

    import napari

    from napari_brainatlas.colors import continuous_colors
    from napari_brainatlas.io import gene_values, read_sections
    from napari_brainatlas.layers import section_layer_data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_section(args.cells, args.genes, Path(tmp) / "big.h5ad")
        with measure() as m_read:
            (adata,) = read_sections(path)
        rows.append(("read .h5ad (read_sections)", m_read))

        viewer = napari.Viewer(show=True)
        draw(viewer)
        # ---- ours
        with measure() as m_show:
            data, kwargs, _ = section_layer_data(adata)
            layer = viewer.add_points(data, **kwargs)
            viewer.reset_view()
            draw(viewer)
        rows.append(("show: add Points layer + first draw (ours)", m_show))
        with measure() as m_col:
            rgba, _ = continuous_colors(np.log1p(gene_values(adata, "G7")))
            layer.face_color = rgba
            draw(viewer)
        rows.append(("recolour by a gene + draw (ours)", m_col))
        viewer.layers.clear()
        draw(viewer)
        # ---- plain napari: colour by a feature column with a colormap
        import pandas as pd

        feats = pd.DataFrame(
            {
                "G7": gene_values(adata, "G7"),
                "G8": gene_values(adata, "G8"),
                "region": adata.obs["region"].to_numpy(),
            }
        )
        with measure() as m_show2:
            layer2 = viewer.add_points(
                adata.obsm["spatial"][:, ::-1],
                features=feats,
                size=10,
                face_color="G7",
                face_colormap="viridis",
                border_width=0,
            )
            viewer.reset_view()
            draw(viewer)
        rows.append(("show: add_points(features, face_color='G7') + draw (plain napari)", m_show2))
        with measure() as m_col2:
            layer2.face_color = "G8"
            draw(viewer)
        rows.append(("recolour: layer.face_color = 'G8' + draw (plain napari)", m_col2))
        viewer.close()

    print(f"# {args.cells:,} cells x {args.genes} genes on {machine()}")
    print(f"# command: {command_line()}")
    print("| step | seconds | peak RSS above start (MB) |")
    print("|---|---|---|")
    for name, m in rows:
        print(f"| {name} | {m.seconds:.2f} | {m.delta_mb:.0f} |")
    ratio_show = m_show2.seconds / max(m_show.seconds, 1e-9)
    ratio_col = m_col2.seconds / max(m_col.seconds, 1e-9)
    print(f"\nplain / ours: first draw {ratio_show:.1f}x, recolour {ratio_col:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
