"""Plain napari vs the level-of-detail fast path, side by side: first draw, recolour by a
gene, peak memory, for 100k, 1M and 4M-cell sections (issue 6).

Each run of a path is its own subprocess (so peak memory is its own, and a plain run that
takes too long can be stopped: it is then reported as "> limit"); the two paths alternate,
one run each, ``--repeat`` times, so both see the same load from other jobs. Timings are
medians. Run under a display:

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/viewer/run.py

* plain napari: ``add_points(data, features={G7, G8, region}, face_color='G7',
  face_colormap='viridis')`` + ``reset_view`` + draw; recolour ``layer.face_color =
  'G8'`` + draw (the gene values are already in the features, not timed).
* ours (what the Sections widget does): ``section_layer_data`` (features = every obs
  column + cell ids, colours by region) + ``fast_layer_kwargs`` + ``make_fast_layer`` +
  ``add_layer`` + level of detail for the view (image overview + a subset of points) +
  draw; recolour = read the gene (``gene_values``, from memory, or from disk for the
  backed 4M file) + colormap + ``set_colors`` + overview + draw.

"Draw" is ``viewer.screenshot(canvas_only=True)``: a real render of the canvas (Mesa
llvmpipe here), what the user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _measure import command_line, machine, measure

CANVAS = (1600, 1100)

NOTES = """
## What the time went into (profiles at 200k-1M cells, this machine)

* Rasterisation in llvmpipe: vispy draws a point clamped to napari's minimum canvas size
  (4 px) as an 18 px sprite (size + 4 x (edge floor of half the minimum + 1.5 px
  antialiasing)), ~30 us per point: 120k points take 2.4-4 s per frame, 1M ~25 s.
  Fix: draw at most ~50k points (all of them only when that few are in view); when
  zoomed out, an RGBA image overview of every cell in view (one screen pixel or one cell
  per image pixel, ~25 ms per million cells; an image draws in ~0.06 s) under a
  density-preserving subset of ~15k points (no minimum size: hover targets).
* napari's Points extent (`np.max(data, axis=0)` on an (n, 2) C-order array, ~70 ms per
  call at 1M, ~9 calls when a layer is added): the fast path hands napari column-major
  data (~20x faster, public API).
* The vispy upload builds a Python list of one symbol string per *drawn* point (0.8 s at
  1M): only the subset is uploaded (napari's 2D slicing ignores `shown`; fastpoints.py
  gives the layer a slicing state that honours it).
* Colours: `layer.face_color = rgba` rebuilds the property dict of every feature column
  and validates the array (0.1-0.5 s at 1M), and border + face refresh the visual twice:
  `set_colors` writes both colour managers' arrays and emits one event (same colours,
  tested). `categorical_colors` on a million strings (0.6-1.3 s): colours per category,
  spread by the codes. `cell_size_um`: above 80k cells the median nearest-neighbour
  distance from ~300 random grid windows (0.13 s instead of 0.6 s for a k-d tree of a
  million cells; same median within 5 %, tested). Cell ids kept as they are instead of a
  unicode copy (~0.5 s).
* The layer is a napari Points subclass whose slicing honours ``shown`` from creation, so
  a million-cell layer is never sliced, thumbnailed and uploaded whole (~0.1 s).
* Recolour, ours: reading the gene (~0.1 s in memory, a column streamed from disk when
  backed) + colormap + `set_colors` + overview + one frame of ~15k points.

Not faster: the first draw still builds one full napari Points layer (features for
hover, selection: ~0.3 s at 1M) and inserts the overview Image layer (~0.15 s, napari's
layer-list and controls machinery); the 4M backed open is dominated by anndata reading
and hashing 4M cell ids.
"""


# ---------------------------------------------------------------------- data
def make_file(n: int, n_genes: int, path: Path, seed: int = 0, chunk: int = 500_000) -> Path:
    """Synthetic section(s): cells in an ellipse (um), four regions, sparse Poisson counts
    (generated in chunks, so a 4M-cell file fits in memory)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * np.pi
    xy = np.column_stack([5000 * r * np.cos(t), 3500 * r * np.sin(t)]) + 6000
    region = np.digitize(r, [0.3, 0.6, 0.8])
    rates = rng.gamma(0.5, 1.0, (4, n_genes))
    parts = []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        parts.append(sp.csr_matrix(rng.poisson(rates[region[lo:hi]]).astype(np.float32)))
    X = sp.vstack(parts, format="csr")
    a = ad.AnnData(X=X, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    a.obs_names = np.char.add("c", np.arange(n).astype(str)).astype(object)
    a.obs["region"] = pd.Categorical(np.array(["A", "B", "C", "D"])[region])
    a.obsm["spatial"] = xy
    a.write_h5ad(path)
    return path


# ---------------------------------------------------------------------- workers
def _viewer():
    import napari
    from napari.layers import Points

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*CANVAS)
    # one-off costs (napari's units registry, shader compilation) out of the timings
    from napari_brainatlas.colors import colormap_lut

    colormap_lut("viridis")  # matplotlib import
    viewer.add_layer(Points(np.random.default_rng(0).random((10, 2))))
    viewer.add_image(np.zeros((4, 4, 4), np.uint8), rgb=True)
    draw(viewer)
    viewer.layers.clear()
    draw(viewer)
    return viewer


def draw(viewer):
    return viewer.screenshot(canvas_only=True, flash=False)


def worker_plain(path: str, repeat: int) -> dict:
    import pandas as pd

    from napari_brainatlas.io import gene_values, read_sections
    from napari_brainatlas.layers import cell_size_um

    (adata,) = read_sections(path)
    feats = pd.DataFrame(
        {
            "G7": gene_values(adata, "G7"),
            "G8": gene_values(adata, "G8"),
            "region": adata.obs["region"].to_numpy(),
        }
    )
    yx = np.ascontiguousarray(adata.obsm["spatial"][:, ::-1])
    size = cell_size_um(adata.obsm["spatial"])
    viewer = _viewer()
    out = {
        "first": [],
        "recolour": [],
        "first_mb": [],
        "recolour_mb": [],
        "first_cpu": [],
        "recolour_cpu": [],
    }
    for i in range(repeat):
        c0 = time.process_time()
        with measure() as m:
            layer = viewer.add_points(
                yx,
                features=feats,
                size=size,
                face_color="G7",
                face_colormap="viridis",
                border_width=0,
            )
            viewer.reset_view()
            draw(viewer)
        out["first"].append(m.seconds)
        out["first_cpu"].append(time.process_time() - c0)
        out["first_mb"].append(m.delta_mb)
        _emit(out)
        c0 = time.process_time()
        with measure() as m:
            layer.face_color = "G8"
            draw(viewer)
        out["recolour"].append(m.seconds)
        out["recolour_cpu"].append(time.process_time() - c0)
        out["recolour_mb"].append(m.delta_mb)
        _emit(out)
        viewer.layers.clear()
        draw(viewer)
    viewer.close()
    return out


def worker_ours(path: str, repeat: int, backed: bool) -> dict:
    from napari_brainatlas.colors import continuous_colors
    from napari_brainatlas.io import gene_values, read_sections
    from napari_brainatlas.layers import section_layer_data
    from napari_brainatlas.widgets.fastpoints import (
        FastSections,
        fast_layer_kwargs,
        make_fast_layer,
        set_colors,
    )

    with measure() as m_read:
        (adata,) = read_sections(path, backed=backed)
    viewer = _viewer()
    fast = FastSections(viewer)
    out = {
        "first": [],
        "recolour": [],
        "first_mb": [],
        "recolour_mb": [],
        "zoom": [],
        "pan": [],
        "read": m_read.seconds,
        "read_mb": m_read.delta_mb,
        "drawn": [],
        "drawn_zoomed": [],
        "first_cpu": [],
        "recolour_cpu": [],
    }
    genes = ["G8", "G9", "G10", "G11", "G12"]
    for i in range(repeat):
        c0 = time.process_time()
        with measure() as m:
            data, kwargs, _ = section_layer_data(adata)
            data, kwargs = fast_layer_kwargs(data, kwargs)
            layer = make_fast_layer(data, kwargs)
            viewer.add_layer(layer)
            fast.track(layer)
            viewer.reset_view()
            fast.update_now()
            draw(viewer)
        out["first"].append(m.seconds)
        out["first_cpu"].append(time.process_time() - c0)
        out["first_mb"].append(m.delta_mb)
        out["drawn"].append(fast.drawn())
        _emit(out)
        c0 = time.process_time()
        with measure() as m:
            rgba, _ = continuous_colors(np.log1p(gene_values(adata, genes[i % len(genes)])))
            set_colors(layer, rgba)
            draw(viewer)
        out["recolour"].append(m.seconds)
        out["recolour_cpu"].append(time.process_time() - c0)
        out["recolour_mb"].append(m.delta_mb)
        _emit(out)
        # interaction: zoom in 4x, then pan by half a view
        t0 = time.perf_counter()
        viewer.camera.zoom = viewer.camera.zoom * 4
        fast.update_now()
        draw(viewer)
        out["zoom"].append(time.perf_counter() - t0)
        out["drawn_zoomed"].append(fast.drawn())
        t0 = time.perf_counter()
        c = np.asarray(viewer.camera.center, float)
        c[-1] += CANVAS[0] / 2 / viewer.camera.zoom
        viewer.camera.center = tuple(c)
        fast.update_now()
        draw(viewer)
        out["pan"].append(time.perf_counter() - t0)
        _emit(out)
        viewer.layers.clear()
        draw(viewer)
    viewer.close()
    return out


def _emit(out: dict) -> None:
    """Partial results on stdout (read back if the worker is stopped)."""
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- main
def _run_worker(kind: str, path: Path, repeat: int, timeout: float, backed: bool) -> tuple:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--file",
        str(path),
        "--repeat",
        str(repeat),
    ] + (["--backed"] if backed else [])
    t0 = time.perf_counter()
    last, timed_out = None, False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        stdout = proc.stdout
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        timed_out = True
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            last = json.loads(line[7:])
    return last or {}, timed_out, time.perf_counter() - t0


def _merge(into: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, list):
            into.setdefault(k, []).extend(v)
        else:
            into.setdefault(k, v)


def _med(v):
    return float(np.median(v)) if v else None


def _fmt(v, timed_out=False, limit=None):
    if v is None:
        return f"> {limit:.0f}" if timed_out and limit else "-"
    return f"{v:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000])
    ap.add_argument("--genes", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plain-timeout", type=float, default=420)
    ap.add_argument(
        "--backed-from",
        type=int,
        default=4_000_000,
        help="open files with at least this many cells backed (ours)",
    )
    ap.add_argument("--out", default=str(HERE / "RESULTS_viewer.md"))
    ap.add_argument("--worker", choices=["plain", "ours"])
    ap.add_argument("--file")
    ap.add_argument("--backed", action="store_true")
    args = ap.parse_args(argv)

    if args.worker == "plain":
        _emit(worker_plain(args.file, args.repeat))
        return 0
    if args.worker == "ours":
        _emit(worker_ours(args.file, args.repeat, args.backed))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            path = make_file(n, args.genes, Path(tmp) / f"cells_{n}.h5ad")
            mb = os.path.getsize(path) / 2**20
            backed = n >= args.backed_from
            # alternate the two paths, one run per process, so both see the same load
            ours, plain, to, took = {}, {}, False, 0.0
            for rep in range(args.repeat):
                o, _, _ = _run_worker("ours", path, 1, 1200, backed)
                _merge(ours, o)
                if rep == 0 or (n <= 1_000_000 and not to):
                    p, t_o, t = _run_worker("plain", path, 1, args.plain_timeout, False)
                    _merge(plain, p)
                    to, took = to or t_o, took + t
            rows.append((n, mb, backed, ours, plain, to))
            print(
                f"{n:,} cells: ours {json.dumps(ours)}\n   plain {json.dumps(plain)} "
                f"(timed out: {to}, {took:.0f} s)",
                flush=True,
            )

    lim = args.plain_timeout
    lines = [
        "# Viewer: plain napari vs the level-of-detail fast path (issue 6)",
        "",
        (
            f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} "
            "(the two paths ran alternately in the same run, so both saw the same load)."
        ),
        f'Command: `xvfb-run -a -s "-screen 0 1600x1200x24" {command_line()}`',
        (
            f"Canvas {CANVAS[0]}x{CANVAS[1]} window; medians of {args.repeat} runs, the two "
            f"paths alternating (plain 4M: one run, stopped after {lim:.0f} s)."
        ),
        "",
        (
            "| cells | path | first draw (s) | recolour by a gene (s) | CPU s: first draw / "
            "recolour | peak RSS above start: first draw / recolour (MB) | points drawn | "
            "zoom 4x / pan frame (s) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, mb, backed, ours, plain, to in rows:
        lines.append(
            f"| {n:,} | plain napari | {_fmt(_med(plain.get('first')), to, lim)} | "
            f"{_fmt(_med(plain.get('recolour')), to, lim)} | "
            f"{_fmt(_med(plain.get('first_cpu')))} / {_fmt(_med(plain.get('recolour_cpu')))} | "
            f"{_fmt(_med(plain.get('first_mb')))} / {_fmt(_med(plain.get('recolour_mb')))} | "
            f"{n:,} | - |"
        )
        lines.append(
            f"| {n:,} | ours{' (backed file)' if backed else ''} | "
            f"{_fmt(_med(ours.get('first')))} | {_fmt(_med(ours.get('recolour')))} | "
            f"{_fmt(_med(ours.get('first_cpu')))} / {_fmt(_med(ours.get('recolour_cpu')))} | "
            f"{_fmt(_med(ours.get('first_mb')))} / {_fmt(_med(ours.get('recolour_mb')))} | "
            f"{int(_med(ours.get('drawn')) or 0):,} (+ overview) | "
            f"{_fmt(_med(ours.get('zoom')))} / {_fmt(_med(ours.get('pan')))} |"
        )
    lines.append("")
    lines.append("Ratios, wall time (medians):")
    for n, mb, backed, ours, plain, to in rows:
        pf, pr = _med(plain.get("first")), _med(plain.get("recolour"))
        of, orc = _med(ours.get("first")), _med(ours.get("recolour"))
        f = f"{pf / of:.1f}x" if pf and of else (f"> {lim / of:.0f}x" if to and of else "-")
        r = f"{pr / orc:.1f}x" if pr and orc else (f"> {lim / orc:.0f}x" if to and orc else "-")
        pfc, prc = _med(plain.get("first_cpu")), _med(plain.get("recolour_cpu"))
        ofc, orcc = _med(ours.get("first_cpu")), _med(ours.get("recolour_cpu"))
        cpu = (
            f" (CPU time: {pfc / ofc:.1f}x, {prc / orcc:.1f}x)"
            if pfc and ofc and prc and orcc
            else ""
        )
        lines.append(
            f"- {n:,} cells ({mb:.0f} MB file): plain / ours: first draw {f}, "
            f"recolour {r}{cpu}; ours read the file in {ours.get('read', 0):.2f} s "
            f"(+{ours.get('read_mb', 0):.0f} MB{', X left on disk' if backed else ''})"
        )
    text = "\n".join(lines) + "\n" + NOTES
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
