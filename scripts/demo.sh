#!/usr/bin/env bash
# The main job: installs the package and runs it on the built-in demo.
# With a display: opens napari with the plugin docked and the demo loaded.
# With --headless (or no display): runs the pipeline without a window and writes the
# results and a QC picture to --out (default ./demo_out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PY" -m pip install -q --disable-pip-version-check -e ".[qt]"
exec "$PY" -m napari_brainatlas demo "$@"
