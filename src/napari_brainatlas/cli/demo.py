"""``napari-brainatlas demo`` (the main job on the demo) and ``demo-data`` (its files)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_parser", "run_demo", "run_demo_data"]


def add_parser(sub) -> None:
    q = sub.add_parser("demo", help="run the main job on the built-in demo")
    q.add_argument(
        "--headless",
        action="store_true",
        help="no window: run the pipeline and write results + QC picture",
    )
    q.add_argument("--out", type=Path, default=Path("demo_out"), help="results folder")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_demo)

    q = sub.add_parser("demo-data", help="write the demo atlas and demo sections as files")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n-sections", type=int, default=4)
    q.add_argument("--cells-per-mm2", type=float, default=400.0)
    q.set_defaults(func=run_demo_data)


def run_demo(args) -> int:
    from ..workflows import demo

    if args.headless or not demo.display_available():
        if not args.headless:
            print("no display found: running the demo headless", file=sys.stderr)

        def log(done, total, info):  # the demo's steps are its log: one line each
            if info.get("message"):
                print(info["message"], flush=True)

        res = demo.run_demo(args.out, seed=args.seed, progress=log)
        print(f"results in {res.out}")
        return 0
    from ..widgets.launch import launch_demo_viewer

    launch_demo_viewer(seed=args.seed)
    return 0


def run_demo_data(args) -> int:
    from ..workflows.demo import write_demo_files

    files = write_demo_files(
        args.out, seed=args.seed, n_sections=args.n_sections, cells_per_mm2=args.cells_per_mm2
    )
    for p in files["sections"]:
        print(f"section  {p}")
    print(f"atlas    {files['annotation']}")
    print(f"ontology {files['ontology']}")
    return 0
