"""SIGTERM ends a command as Ctrl-C does (issue 28): exit code 130, one line, and no
partial output or temporary file left in the output folder."""

import os
import signal
import subprocess
import sys
import time

import pytest

from napari_brainatlas.fusemap import make_synthetic_sections


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_training_leaves_nothing(tmp_path):
    paths = []
    for a in make_synthetic_sections(n_sections=2, n_cells=[150, 120], n_genes=20, n_shared=10):
        p = tmp_path / f"{a.obs['section'].iloc[0]}.h5ad"
        a.write_h5ad(p)
        paths.append(str(p))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "napari_brainatlas", "embed", *paths, "--out", str(out)]
    argv += ["--epochs", "500", "--device", "cpu", "--threads", "1", "--verbose"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for the first epoch
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("embed ["):
            break
    assert proc.poll() is None, lines
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, (lines, rest)
    assert rest.strip().splitlines()[-1].endswith("interrupted")
    left = list(out.rglob("*")) if out.exists() else []
    assert left == [], left
