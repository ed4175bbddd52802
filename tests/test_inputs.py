"""Bad input at every entry point (issue 16): exit != 0, one line naming the key or file, the
value and what to do; no traceback; nothing written changed; and, where the check needs neither,
no model and no dataset loaded. Each case runs the entry point in this process (Hydra's own
error handling included), so the table stays fast; ``test_the_real_command_lines`` runs one
case of each entry point as a process."""

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import analysis.__main__ as analysis_entry
import harness.__main__ as harness_entry
import harness.sweep as sweep_entry
from harness.records import LOCK, RECORDS
from harness.runner import job_lock, run_job
from tests.conftest import ROOT, TINY, compose

SMALL = [*TINY, "dataset.limit=2", "generation.seeds=[0]"]
BEFORE_LOAD_S = 10.0  # a check that needs no model fails within this (it takes ~0.5 s)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A finished job dir: bad input pointed at it must leave it as it is."""
    job_dir = tmp_path_factory.mktemp("done") / "job"
    run_job(compose(*SMALL), job_dir)
    return job_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("files")
    (out / "empty.jsonl").write_text("")
    (out / "blank.txt").write_text("\n  \n")
    (out / "latin1.jsonl").write_bytes('{"text": "caf\xe9 au lait"}\n'.encode("latin-1"))
    (out / "broken.jsonl").write_text('{"text": "one"}\n{"text": \n')
    (out / "novalue.yaml").write_text("grids: [\n  selector: top_k\n")
    (out / "nogrids.yaml").write_text("sweeps:\n  - selector: top_k\n")
    (out / "scalars.yaml").write_text("grids: [1, 2]\n")
    (out / "nested.yaml").write_text("grids:\n  - selector: {method: top_k}\n")
    return out


# (id, entry point, arguments, exit code, fragment of the one line, loads a model or dataset)
# {done}: the finished job dir; {files}: the bad files above; {fresh}: an empty dir.
CASES = [
    ("hub-without-source", "harness", ["model=hub"], 1,
     "model.source is required and was not given; e.g. model=hub model.source=gpt2-large", False),
    ("local-without-files", "harness", ["dataset=local"], 1,
     "dataset.data_files is required and was not given; e.g. dataset=local "
     "dataset.data_files=my.jsonl", False),
    ("wandb-mode", "harness", ["wandb.mode=bogus"], 1,
     "wandb.mode='bogus' is not known; use offline, online, disabled", False),
    ("wandb-timeout", "harness", ["wandb.init_timeout=0"], 1, "wandb.init_timeout=0", False),
    ("selector-range", "harness", ["selector=top_k", "selector.top_k=0"], 1,
     "top_k=0 is out of range", False),
    ("selector-infinite", "harness", ["selector=locally_typical", "selector.alpha=inf"], 1,
     "locally_typical: selector.alpha=inf must be finite; alpha must be a float >= 0.", False),
    ("selector-nan-temperature", "harness", ["selector=top_k", "selector.temperature=nan"], 1,
     "top_k: selector.temperature=nan must be finite", False),
    ("batch-size", "harness", ["generation.batch_size=0"], 1, "generation.batch_size=0 must be",
     False),
    ("no-seeds", "harness", ["generation.seeds=[]"], 1, "generation.seeds=[] must be", False),
    ("same-seed-twice", "harness", ["generation.seeds=[0,0]"], 1, "generation.seeds=[0, 0]",
     False),
    ("limit", "harness", ["dataset.limit=0"], 1, "dataset.limit=0 must be >= 1", False),
    ("shard", "harness", ["dataset.shard=2", "dataset.num_shards=2"], 1,
     "dataset.shard=2 must be in [0, dataset.num_shards=2)", False),
    ("dtype", "harness", ["model.dtype=float8"], 1, "model.dtype='float8' is not known", False),
    ("device", "harness", ["model.device=banana"], 1, "model.device='banana' is not a device",
     False),
    ("missing-model-folder", "harness", ["model=hub", "model.source=/no/such/model"], 1,
     "model.source='/no/such/model' could not be loaded: no such folder", False),
    ("missing-data-file", "harness", ["dataset=local", "dataset.data_files=/no/such.jsonl"], 1,
     "dataset.data_files='/no/such.jsonl': no such file", False),
    ("empty-json", "harness", ["dataset=local", "dataset.data_files={files}/empty.jsonl"], 1,
     "empty.jsonl': the file is empty", False),
    ("blank-text", "harness", ["dataset=local", "dataset.path=text",
                               "dataset.data_files={files}/blank.txt"], 1,
     "blank.txt': the file is empty", False),
    ("not-utf8", "harness", ["dataset=local", "dataset.data_files={files}/latin1.jsonl"], 1,
     "latin1.jsonl' is not UTF-8 (byte 13", False),
    ("unknown-bundle", "harness", ["dataset.data_files=bundled:nope"], 1,
     "dataset.data_files='bundled:nope' is not bundled", False),
    ("unknown-group-option", "harness", ["selector=nucleus"], 1,
     "Could not find 'selector/nucleus'", False),
    ("parameter-of-another-method", "harness", ["selector=top_k", "selector.alpha=0.5"], 1,
     "Key 'alpha' is not in struct", False),
    ("not-an-integer", "harness", ["generation.max_new_tokens=many"], 1,
     "Value 'many' of type 'str' could not be converted to Integer", False),
    ("override-syntax", "harness", ["generation.seeds=[0,"], 1,
     "override 'generation.seeds=[0,' does not parse", False),
    ("broken-json", "harness", ["dataset=local", "dataset.data_files={files}/broken.jsonl",
                                "hydra.run.dir={fresh}"], 1,
     "could not be loaded", True),
    ("text-field", "harness", ["dataset.text_field=body", "hydra.run.dir={fresh}"], 1,
     "dataset.text_field='body' is not a column", True),
    ("longer-than-the-model", "harness", ["generation.prompt_tokens=100000",
                                          "hydra.run.dir={fresh}"], 1,
     "exceeds the context of model 'tiny'", True),
    ("another-config-in-the-dir", "harness", ["selector=top_p"], 1,
     "holds records of a different config", False),
    ("held-lock", "harness", ["LOCKED"], 1, "is being written by host", False),
    ("shared-dir", "harness", ["-m", "dataset.limit=1,2", "hydra.sweep.dir={fresh}"], 1,
     "2 jobs of this multirun would write one job dir", False),
    ("unknown-sweep", "sweep", ["nope"], 1, "sweep 'nope' not found", False),
    ("sweep-not-yaml", "sweep", ["{files}/novalue.yaml"], 1,
     "novalue.yaml is not valid YAML at line", False),
    ("sweep-without-grids", "sweep", ["{files}/nogrids.yaml"], 1, "nogrids.yaml has no `grids:`",
     False),
    ("grids-of-scalars", "sweep", ["{files}/scalars.yaml"], 1,
     "`grids:` must be a non-empty list of mappings", False),
    ("grid-of-a-mapping", "sweep", ["{files}/nested.yaml"], 1,
     "nested.yaml, grid 1: 'selector'", False),
    ("analysis-no-dir", "analysis", ["/no/such/sweep"], 1,
     "sweep dir /no/such/sweep does not exist", False),
    ("analysis-empty-dir", "analysis", ["{fresh}", "wandb=disabled"], 1,
     "no job with generations under", False),
    ("analysis-wandb-mode", "analysis", ["{done}/..", "wandb.mode=bogus"], 1,
     "wandb.mode='bogus' is not known", False),
    ("analysis-level", "analysis", ["{done}/..", "bootstrap.level=1.5"], 1,
     "bootstrap.level=1.5 must be in (0, 1)", False),
    ("analysis-samples", "analysis", ["{done}/..", "bootstrap.samples=0"], 1,
     "bootstrap.samples=0 must be >= 1", False),
    ("analysis-featurizer", "analysis", ["{done}/..", "metrics.mauve.featurizer=bert"], 1,
     "metrics.mauve.featurizer='bert' is not known", False),
    ("analysis-unknown-key", "analysis", ["{done}/..", "metrics.mauve.k=3"], 1,
     "analysis overrides metrics.mauve.k=3: Could not override 'metrics.mauve.k'", False),
    ("analysis-not-a-number", "analysis", ["{done}/..", "bootstrap.samples=many"], 1,
     "Value 'many' of type 'str' could not be converted to Integer", False),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file the harness writes (Hydra's own .hydra/ and logs aside), by content."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and ".hydra" not in p.parts
            and p.suffix != ".log" and p.name != LOCK}


def invoke(entry: str, args: list[str], monkeypatch) -> int:
    """``python -m <entry> args`` in this process; its exit code."""
    root = logging.getLogger()  # an earlier case's console handler writes to a closed capture
    root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    try:
        if entry == "harness":
            monkeypatch.setattr(sys, "argv", ["harness", *args])
            harness_entry.cli()
        elif entry == "sweep":
            sweep_entry.main(args)
        else:
            analysis_entry.main(args)
    except SystemExit as stop:
        if isinstance(stop.code, int):
            return stop.code
        print(stop.code, file=sys.stderr)  # as the interpreter does with SystemExit("...")
        return 1
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_any_work(case, done, files, tmp_path, monkeypatch, capfd,
                                               caplog):
    name, entry, args, code, fragment, loads = case
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fill = {"done": done, "files": files, "fresh": fresh}
    args = [a.format(**fill) for a in args]
    loaded = []
    if not loads:
        monkeypatch.setattr("harness.runner.load_model", lambda *a: loaded.append("model"))
        monkeypatch.setattr("harness.data.load_documents", lambda *a: loaded.append("data"))
    if entry == "harness":
        args = [*[a for a in args if a == "-m"], *SMALL, *[a for a in args if a != "-m"]]
        if not any(a.startswith("hydra.run.dir") for a in args):
            args.append(f"hydra.run.dir={done}")
    before = snapshot(done.parent)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    started = time.perf_counter()
    if "LOCKED" in args:
        args.remove("LOCKED")
        with job_lock(done):  # another open file description: this process is "another writer"
            returned = invoke(entry, args, monkeypatch)
    else:
        returned = invoke(entry, args, monkeypatch)
    seconds = time.perf_counter() - started
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert returned == code, text
    assert fragment in text
    assert "Traceback" not in text
    error_lines = [line for line in text.splitlines() if fragment.split(":")[0] in line]
    assert len({" ".join(line.split()[-12:]) for line in error_lines}) == 1, error_lines
    assert snapshot(done.parent) == before
    assert not loaded, f"{name}: {loaded} loaded before the check"
    if not loads:
        assert seconds < BEFORE_LOAD_S, f"{name} took {seconds:.1f} s"
    assert not (fresh / RECORDS).exists()


def test_full_error_shows_the_traceback_for_debugging(done, monkeypatch, capfd):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["harness", *SMALL, "model=hub", f"hydra.run.dir={done}"])
    with pytest.raises(ValueError, match=r"model\.source is required"):
        harness_entry.main()
    with pytest.raises(ValueError, match=r"bootstrap\.level"):
        analysis_entry.main([str(done.parent), "bootstrap.level=2", "--debug"])


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow  # make test-slow (CI): about a minute or more
def test_the_real_command_lines(tmp_path, files):
    """As a user types them: one line on stderr, exit 1, no traceback."""
    for args, fragment in [
        (["harness", *SMALL, "model=hub"], "model.source is required"),
        (["harness.sweep", f"{files}/nogrids.yaml"], "has no `grids:`"),
        (["analysis", str(tmp_path), "wandb.mode=bogus"], "wandb.mode='bogus'"),
    ]:
        started = time.perf_counter()
        done = cli(*args, cwd=tmp_path)
        seconds = time.perf_counter() - started
        assert done.returncode == 1, done.stderr
        assert fragment in done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert len([line for line in (done.stdout + done.stderr).splitlines()
                    if fragment in line]) == 1
        print(f"{args[0]}: failed in {seconds:.1f} s (process start and imports included)")


@pytest.mark.slow  # make test-slow (CI): about a minute or more
def test_ctrl_c_finishes_the_batch_says_one_line_and_resumes(tmp_path):
    args = ["harness", *TINY, "dataset.limit=16", "generation.seeds=[0]",
            "generation.batch_size=1", "generation.max_new_tokens=12", "hydra.run.dir=job"]
    job = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = tmp_path / "job" / RECORDS
    while job.poll() is None and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.02)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=120) == 130
    text = job.stdout.read()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "stopped by signal SIGINT" in text and "re-running the same command" in text
    written = out.read_text()
    assert written.endswith("\n") and len(written.splitlines()) < 16
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert len(out.read_text().splitlines()) == 16
    assert out.read_text().startswith(written)
