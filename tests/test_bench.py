"""The GPU benchmark script must not rot: its --smoke mode runs the same code on CPU (the
study mode of issue 13 included: a fused group, eager then compiled twice, tiny model)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_gpu_bench_smoke_runs_and_reports_ratios():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, env={"PY": sys.executable,
                                                               "PATH": "/usr/bin:/bin",
                                                               "HOME": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x bare" in done.stdout and "x typical" in done.stdout
    assert "% of a" in done.stdout
    assert "min / median / max" in done.stdout  # fusion: spreads over interleaved repeats
    assert "compiled, steady" in done.stdout and "20 M-token study" in done.stdout
    assert "profile, compiled, steady" in done.stdout and "Self CPU" in done.stdout


@pytest.mark.slow
def test_analysis_scale_bench_smoke_runs_every_stage():
    done = subprocess.run([sys.executable, "-m", "bench.analysis_scale", "--smoke"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("| load |", "| table |", "| reference |", "| mauve_swap |"):
        assert stage in done.stdout
    assert "table / reference CPU time" in done.stdout and "CPU s (user + sys)" in done.stdout
    assert "11 rows" in done.stdout and "B = 300" in done.stdout
