"""W&B (issue 19): after generate -> analyse -> re-run -> re-run with a new seed -> analyse
again, the sweep's ``wandb/`` holds one offline folder per run: one run per configuration with
its config, every invocation's timing (history) and their sum (summary), one samples table and
the analysis's metrics with intervals, Δs and Holm p; and one analyze run in the same group.
Checked by parsing the ``.wandb`` files that ``wandb sync`` would upload."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY
from tests.wandb_files import read_runs

pytestmark = pytest.mark.slow  # five processes, two of them analyses: about 4 minutes

SWEEP = [*[a for a in TINY if a != "wandb=disabled"], "wandb=offline", "dataset.limit=4",
         "selector=top_k,top_p", "hydra/launcher=fused", "sweep=named",
         "hydra.sweep.dir=elsewhere", "hydra.job.chdir=true"]
ANALYSIS = ["elsewhere", "metrics.coherence.scorer=tiny", "metrics.mauve.kmeans_seeds=1",
            "bootstrap.samples=1000"]


def run(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "wandb").glob("offline-run-*"))


def test_one_complete_run_per_configuration_through_reruns(tmp_path):
    out = tmp_path / "elsewhere"
    run("harness", "-m", *SWEEP, "generation.seeds=[0]", cwd=tmp_path)
    run("analysis", *ANALYSIS, cwd=tmp_path)
    analysed = folders(out)
    run("harness", "-m", *SWEEP, "generation.seeds=[0]", cwd=tmp_path)
    assert folders(out) == analysed  # nothing new written: no duplicate, nothing emptied
    run("harness", "-m", *SWEEP, "generation.seeds=[0,1]", cwd=tmp_path)  # one more seed
    run("analysis", *ANALYSIS, cwd=tmp_path)

    jobs = sorted(p for p in out.iterdir() if (p / "job.yaml").exists())
    assert len(jobs) == 2
    assert not [p for p in out.rglob("wandb") if p != out / "wandb"]  # chdir=true scatters none
    runs = read_runs(out / "wandb")
    ids = [r.id for r in runs]
    assert len(ids) == len(set(ids)) == 3  # one folder per run id
    analyze = [r for r in runs if r.job_type == "analyze"]
    assert len(analyze) == 1 and analyze[0].group == "named"  # cfg.sweep, not the dir name
    assert (out / "wandb_analyze_run_id").read_text() == analyze[0].id
    generate = {r.id: r for r in runs if r.job_type == "generate"}
    for job in jobs:
        r = generate[(job / "wandb_run_id").read_text()]
        assert r.group == "named" and r.name == job.name
        assert r.config["selector"]["method"] == job.name.split(",")[0]
        assert r.config["selector"]["top_k" if "top_k" in job.name else "top_p"] is not None
        invocations = [json.loads(line) for line in
                       (job / "timing_history.jsonl").read_text().splitlines()]
        timing = [h for h in r.history if "generate_seconds" in h]
        assert [h["records"] for h in timing] == [i["records"] for i in invocations] == [4, 4]
        assert r.summary["invocations"] == 2 and r.summary["records"] == 8
        assert r.summary["generate_seconds"] == pytest.approx(
            sum(i["generate_seconds"] for i in invocations))
        tables = [h for h in r.history if h.get("samples/_type") == "table-file"]
        assert len(tables) == 1
        (table,) = (r.folder / "files").glob(tables[0]["samples/path"])
        samples = json.loads(table.read_text())
        assert samples["columns"] == ["prompt_id", "seed", "prompt", "continuation", "reference"]
        assert len(samples["data"]) == 8
        for key in ("perplexity", "perplexity_lo", "perplexity_hi", "coherence", "n", "seeds"):
            assert key in r.summary, key
        assert r.summary["seeds"] == 2
        for key in ("seed", "top_k", "top_p", "alpha", "temperature", "method"):
            assert key not in r.summary, key  # configuration, not metrics
    top_p = next(r for r in generate.values() if r.config["selector"]["method"] == "top_p")
    for key in ("delta_perplexity", "delta_perplexity_lo", "p_perplexity", "p_perplexity_holm"):
        assert key in top_p.summary, key
