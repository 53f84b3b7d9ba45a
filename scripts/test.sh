#!/usr/bin/env bash
# The test command: installs what the tests need, then runs pytest under Xvfb.
# On a fresh Debian machine as root it apt-installs Xvfb, Mesa OpenGL and the Qt xcb
# libraries; then pip installs torch==2.13.0 (CPU wheel) and the package with its test
# extras; checks the formatting and lint with ruff. Extra arguments go to pytest. Exits non-zero when a test fails or none ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

APT_PKGS="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "apt-get install:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

"$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"

# style and lint first (seconds): the same checks a developer runs before committing
"$PY" -m ruff format --check --quiet src tests benchmarks
"$PY" -m ruff check --quiet src tests benchmarks

export QT_QPA_PLATFORM=xcb MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
exec xvfb-run -a -s "-screen 0 1600x1200x24" "$PY" -m pytest -p no:cacheprovider "$@"
