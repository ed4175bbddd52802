"""Bad input at every entry point (issue 16): exit != 0, one line naming the key or file, the
value and what to do; no traceback; nothing written changed; and, where the check needs neither,
no model and no dataset loaded. Each case runs the entry point in this process (Hydra's own
error handling included), so the table stays fast; ``test_the_real_command_lines`` runs one
case of each entry point as a process."""

import hashlib
import json
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
    good = '{"text": "A document."}\n'
    (out / "number.jsonl").write_text(good * 2 + '{"text": 42}\n')
    (out / "list.jsonl").write_text(good + '{"text": ["a", "b"]}\n')
    (out / "otherkey.jsonl").write_text(good + '{"body": "A document."}\n')
    (out / "typo.yaml").write_text("grids:\n  - selector: top_p\n  - selectr: top_k\n")
    (out / "typo_key.yaml").write_text("grids:\n  - {selector: top_k, selector.topk: [5, 10]}\n")
    (out / "nucleus.yaml").write_text("grids:\n  - selector: [top_k, nucleus]\n")
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
    ("broken-json", "harness", ["dataset=local", "dataset.data_files={files}/broken.jsonl"], 1,
     "broken.jsonl', line 2: not valid JSON", False),
    ("json-text-a-number", "harness", ["dataset=local",
                                       "dataset.data_files={files}/number.jsonl"], 1,
     "number.jsonl', line 3: dataset.text_field='text' holds a number, not a text", False),
    ("json-text-a-list", "harness", ["dataset=local", "dataset.data_files={files}/list.jsonl"], 1,
     "list.jsonl', line 2: dataset.text_field='text' holds a list, not a text", False),
    ("json-text-under-another-key", "harness", ["dataset=local",
                                                "dataset.data_files={files}/otherkey.jsonl"], 1,
     "otherkey.jsonl', line 2 has no 'text' field (dataset.text_field='text'; its keys: "
     "['body']): set dataset.text_field to the field holding the text", False),
    ("run-dir-in-proc", "harness", ["hydra.run.dir=/proc/harness-job"], 1,
     "hydra.run.dir: the job dir /proc/harness-job cannot be written", False),
    ("run-dir-under-a-file", "harness", ["hydra.run.dir={files}/empty.jsonl/job"], 1,
     "empty.jsonl/job cannot be written", False),
    ("sweep-dir-in-proc", "harness", ["-m", "selector=top_k", "selector.top_k=3,5",
                                      "hydra.sweep.dir=/proc/harness-sweep"], 1,
     "hydra.sweep.dir: the job dir /proc/harness-sweep/top_k", False),
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
    ("sweep-group-typo", "sweep", ["{files}/typo.yaml", "hydra.sweep.dir={fresh}"], 1,
     "typo.yaml, grid 2: key 'selectr' is not known; did you mean 'selector'?", False),
    ("sweep-key-typo", "sweep", ["{files}/typo_key.yaml", "hydra.sweep.dir={fresh}"], 1,
     "typo_key.yaml, grid 1: key 'selector.topk' is not known; did you mean 'selector.top_k'?",
     False),
    ("sweep-unknown-selector", "sweep", ["{files}/nucleus.yaml", "hydra.sweep.dir={fresh}"], 1,
     "nucleus.yaml, grid 1: selector=nucleus is not an option of selector", False),
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
    ("analysis-samples-floor", "analysis", ["{done}/..", "bootstrap.samples=3"], 1,
     "bootstrap.samples=3 is below 1000, the fewest for a 95% interval", False),
    ("analysis-samples-floor-99", "analysis",
     ["{done}/..", "bootstrap.samples=1000", "bootstrap.level=0.99"], 1,
     "bootstrap.samples=1000 is below 5000, the fewest for a 99% interval", False),
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
    with pytest.raises(SystemExit, match=r"model\.source is required"):
        harness_entry.main()
    assert "Traceback" in capfd.readouterr().err
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


def tree(root: Path) -> dict[str, str]:
    """Every file and dir under ``root`` (Hydra's .hydra/, logs and locks included), by content."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file()
            else "dir" for p in root.rglob("*")}


def test_a_rejected_command_writes_nothing(tmp_path, monkeypatch, capfd):
    """The job dir of a rejected run already exists, written by Hydra (.hydra/, the log, the
    sweep's multirun.yaml): every file stays byte-identical, and no outputs/ dir appears."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    job = [*SMALL, "selector=top_k", "selector.top_k=5"]
    assert invoke("harness", ["-m", *job, f"hydra.sweep.dir={sweep}"], monkeypatch) == 0
    assert invoke("harness", [*job, f"hydra.run.dir={single}"], monkeypatch) == 0
    written = tree(tmp_path)
    assert "sweep/multirun.yaml" in written and any(".hydra/config.yaml" in f for f in written)
    assert any(f.startswith("single/.hydra") for f in written)
    for bad in (["generation.seeds=[]"], ["dataset.limit=-5"], ["selector.top_k=0,-1"]):
        for where in ([f"hydra.run.dir={single}"], ["-m", f"hydra.sweep.dir={sweep}"]):
            if "," in bad[0] and "-m" not in where:
                continue
            args = [*where[:1 if "-m" in where else 0], *job, *bad,
                    *[w for w in where if w != "-m"]]
            capfd.readouterr()
            started = time.perf_counter()
            assert invoke("harness", args, monkeypatch) == 1, args
            text = capfd.readouterr().err
            assert "Traceback" not in text and "job " in text, text
            assert tree(tmp_path) == written, args
            print(f"{' '.join(bad + where)}: refused in {time.perf_counter() - started:.1f} s")
    # the default run dir: nothing made under outputs/ either
    assert invoke("harness", [*SMALL, "generation.seeds=[]"], monkeypatch) == 1
    assert tree(tmp_path) == written


@pytest.fixture
def mount(tmp_path):
    """``mount(options)``: a fresh tmpfs at a new dir (root and CAP_SYS_ADMIN needed, else the
    test is skipped), unmounted afterwards."""
    points = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): "
                        "the read-only and full-disk cases need one")
        points.append(point)
        return point

    yield make
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_an_unwritable_dir_is_one_line_naming_it(mount, tmp_path, monkeypatch, capfd):
    readonly = mount("ro,size=1m")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for args, key in ((["hydra.run.dir=" + str(readonly / "job")], "hydra.run.dir"),
                      (["-m", "selector=top_k", "selector.top_k=3,5",
                        f"hydra.sweep.dir={readonly}/sweep"], "hydra.sweep.dir")):
        capfd.readouterr()
        assert invoke("harness", [*args[:1 if "-m" in args else 0], *SMALL,
                                  *[a for a in args if a != "-m"]], monkeypatch) == 1
        text = capfd.readouterr().err
        (line,) = [line for line in text.splitlines() if "cannot be written" in line]
        assert f"{key}: the job dir {readonly}" in line and "Read-only file system" in line
        assert "Traceback" not in text
    assert list(readonly.iterdir()) == [] and not (tmp_path / "outputs").exists()


@pytest.mark.slow  # make test-slow: three jobs in a process, about half a minute
def test_a_full_disk_names_each_failed_job_and_sums_them_up(mount, tmp_path):
    """64 KiB: the first job or two fit, the others fail on the full disk, in the job (its
    records) or in Hydra's .hydra/ writes; each failure has one line, the multirun ends with the
    summary, and logging's own tracebacks ("--- Logging error ---") stay away."""
    full = mount("size=64k")
    top_k = (3, 5, 7)
    done = cli("harness", "-m", *SMALL, "dataset.limit=20", "generation.seeds=[0,1]",
               "selector=top_k", f"selector.top_k={','.join(map(str, top_k))}",
               f"hydra.sweep.dir={full}", cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Logging error" not in text and "Traceback" not in text, text
    complete = {k for k in top_k
                if len(next(full.glob(f"top_k,*selector.top_k={k}"), full / "none").joinpath(
                    RECORDS).read_text().splitlines() if list(full.glob(
                        f"top_k,*selector.top_k={k}/{RECORDS}")) else []) == 40}
    failed = set(top_k) - complete
    assert failed, "the disk never filled: make the tmpfs smaller"
    (summary,) = [line for line in text.splitlines() if "jobs failed" in line]
    assert summary.startswith(f"{len(failed)} of 3 jobs failed")
    for k in failed:
        assert len([line for line in text.splitlines() if f"selector.top_k={k}:" in line
                    and "jobs failed" not in line]) == 1, k
        assert "No space left on device" in summary


def test_skipped_documents_are_counted_and_too_few_prompts_warned(tmp_path, caplog):
    """8 documents: 2 empty, 1 whitespace, 2 too short, 3 long enough; dataset.limit=5."""
    from omegaconf import OmegaConf

    from harness.data import DatasetConfig, load_prompts
    from harness.models import load_model

    tokenizer = load_model(OmegaConf.to_object(compose(*TINY).model)).tokenizer
    long, short = "The captain walked to the garden. " * 8, "A letter."
    texts = ["", long, "  \n ", short, long + "Again.", "", short, long + "Once more."]
    needed = len(tokenizer(short, add_special_tokens=False).input_ids) + 1
    assert len(tokenizer(long, add_special_tokens=False).input_ids) >= needed
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(f'{{"text": {json.dumps(t)}}}\n' for t in texts))
    cfg = DatasetConfig(name="docs", data_files=str(data), limit=5)
    with caplog.at_level(logging.INFO, logger="harness.data"):
        prompts = load_prompts(cfg, tokenizer, needed - 1, 1)
    assert [p.prompt_id for p in prompts] == [1, 4, 7]
    assert ("dataset 'docs': 3 prompts; 5 documents skipped before them (3 empty or whitespace, "
            f"2 shorter than {needed} tokens") in caplog.text
    assert "dataset.limit=5, but dataset 'docs' has only 3 documents of at least" in caplog.text


@pytest.mark.slow  # make test-slow: several analysis processes, stopped early
def test_ctrl_c_early_in_the_analysis_always_exits_130_with_one_line(done, tmp_path):
    """Ctrl-C at several moments of the analysis's start (its imports, the config, the first
    features): exit 130 and the one line, never "Exception ignored" and a finished run."""
    for delay in (0.3, 1.0, 2.0, 4.0, 8.0):
        job = subprocess.Popen([sys.executable, "-m", "analysis", str(done.parent),
                                "wandb=disabled"], cwd=tmp_path, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(delay)
        job.send_signal(signal.SIGINT)
        text = job.communicate(timeout=300)[0]
        if job.returncode == 0:
            continue  # finished before the signal (a fast machine): nothing to see
        assert job.returncode == 130, (delay, text[-2000:])
        assert "Traceback" not in text and "Exception ignored" not in text, (delay, text[-2000:])
        assert len([line for line in text.splitlines() if "interrupted: the job dirs are "
                    "untouched" in line]) == 1, (delay, text[-2000:])


@pytest.mark.slow  # make test-slow: two processes importing the analysis, about 15 s
def test_faiss_loader_lines_are_silenced(tmp_path):
    """mauve-text imports faiss, whose loader logs a traceback for each optimised build it
    cannot load: the analysis's logging setup keeps them out."""
    script = ("import logging, sys\n"
              "import analysis.__main__ as entry\n"
              "if sys.argv[1] == 'analysis':\n"
              "    try:\n"
              "        entry.main(['/no/such/sweep'])\n"
              "    except SystemExit:\n"
              "        pass\n"
              "else:\n"
              "    logging.basicConfig(level=logging.INFO)\n"
              "import faiss\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {how: subprocess.run([sys.executable, "-c", script, how], capture_output=True,
                                text=True, cwd=tmp_path, env=env)
            for how in ("plain", "analysis")}
    if "faiss.loader" not in runs["plain"].stderr:
        pytest.skip("this faiss loads its first build without a word: nothing to silence")
    assert runs["analysis"].returncode == 0, runs["analysis"].stderr
    assert "faiss" not in runs["analysis"].stderr
    assert "sweep dir /no/such/sweep does not exist" in runs["analysis"].stderr


def test_a_long_run_says_its_size_and_time_before_it_starts():
    from harness.estimate import Rate, long_run_warning

    rate = Rate(100.0, Path("sweep/top_k/timing.json"))
    # 1,000 rows x 64 tokens at 100 tokens/s: 640 s, over the 600 s line; 64 s is not
    line = long_run_warning(1000, 64, "smollm2", "cpu, 2 threads", rate)
    assert line.startswith("64,000 new tokens to generate (1,000 rows x 64 tokens): about 11 min "
                           "at 100 tokens/s, the rate last measured for model 'smollm2' on cpu, "
                           "2 threads (sweep/top_k/timing.json)")
    assert long_run_warning(100, 64, "smollm2", "cpu, 2 threads", rate) is None
    # no rate: silent up to 100,000 tokens, then the size and "no rate known"
    assert long_run_warning(1000, 64, "smollm2", "cpu, 2 threads", None) is None
    assert "no rate known for model 'smollm2' on cpu, 2 threads" in long_run_warning(
        2000, 64, "smollm2", "cpu, 2 threads", None)
    # the README's Daily loop grid at full size: 2,400 paragraphs x 3 seeds x 12 jobs
    assert "about 30.7 h at 50 tokens/s" in long_run_warning(  # 5,529,600 / 50 = 110,592 s
        2400 * 3 * 12, 64, "smollm2", "cpu", Rate(50.0, Path()))


def test_the_rate_is_the_newest_of_the_same_model_and_device(tmp_path):
    from harness.estimate import measured_rate

    for number, (model, device, rate) in enumerate([
            ("tiny", "cpu, 2 threads", 50.0), ("tiny", "cpu, 2 threads", 80.0),
            ("tiny", "NVIDIA H100", 999.0), ("smollm2", "cpu, 2 threads", 5.0)]):
        job = tmp_path / f"job{number}"
        job.mkdir()
        (job / "job.yaml").write_text(f"model:\n  name: {model}\n")
        (job / "timing.json").write_text(json.dumps({"tokens_per_s": rate, "device": device}))
        os.utime(job / "timing.json", (1000 + number, 1000 + number))
    (tmp_path / "half-written").mkdir()
    (tmp_path / "half-written" / "timing.json").write_text("{")
    found = measured_rate([tmp_path / "new-job"], "tiny", "cpu, 2 threads")
    assert found.tokens_per_s == 80.0 and found.source == tmp_path / "job1" / "timing.json"
    assert measured_rate([tmp_path / "new-job"], "tiny", "cpu, 4 threads") is None


def test_the_estimate_is_printed_before_generating(tmp_path, caplog):
    """A sibling job measured 0.02 tokens/s for this model on this device: 2 prompts x 12
    tokens are then 20 minutes, so the run says so before it starts."""
    import torch

    from harness.estimate import device_kind

    sibling = tmp_path / "earlier"
    sibling.mkdir()
    (sibling / "job.yaml").write_text("model:\n  name: tiny\n")
    (sibling / "timing.json").write_text(json.dumps(
        {"tokens_per_s": 0.02, "device": device_kind(torch.device("cpu"))}))
    with caplog.at_level(logging.WARNING, logger="harness.estimate"):
        run_job(compose(*SMALL, "model.device=cpu"), tmp_path / "job")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "harness.estimate"]
    assert line.startswith("24 new tokens to generate (2 rows x 12 tokens): about 20 min at "
                           "0.02 tokens/s")
