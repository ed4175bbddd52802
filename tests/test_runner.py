"""The runner on the tiny model: what it writes, how it resumes, what it refuses."""

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.data import DatasetConfig, load_prompts
from harness.decode import generation_config
from harness.models import ModelConfig, load_model
from harness.runner import JobError, run_job
from harness.sampling import KeyedSampler, row_keys
from harness.selectors import SELECTORS, make_selector
from harness.sweep import load_sweep
from tests.conftest import ROOT, TINY, compose

CONF = ROOT / "conf"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tiny_cfg, tmp_path: Path, *overrides: str, name: str = "job") -> list[dict]:
    return records(run_job(tiny_cfg(*overrides), tmp_path / name))


@pytest.mark.parametrize("method", sorted(SELECTORS))
def test_every_selector_yaml_composes_and_mirrors_the_class_defaults(method):
    cfg = compose(f"selector={method}")
    params = OmegaConf.to_container(cfg.selector)
    assert params.pop("method") == method
    signature = inspect.signature(SELECTORS[method].__init__).parameters
    defaults = {n: p.default for n, p in signature.items() if n != "self"}
    assert params == defaults


def test_a_parameter_the_method_does_not_take_is_refused_by_struct_mode():
    with pytest.raises(Exception, match="alpha"):
        compose("selector=top_k", "selector.alpha=0.5")


def test_out_of_range_values_fail_before_the_model_loads(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("harness.runner.load_model", lambda cfg: pytest.fail("model loaded"))
    with pytest.raises(JobError, match="top_k=0"):
        run_job(tiny_cfg("selector=top_k", "selector.top_k=0"), tmp_path / "a")
    with pytest.raises(JobError, match=r"generation.batch_size=0"):
        run_job(tiny_cfg("generation.batch_size=0"), tmp_path / "b")


def test_generate_keeps_exactly_what_the_selector_keeps():
    """No transformers default (top_k=50, ...) trims the kept set; all tokens' ids > 50."""
    loaded = load_model(ModelConfig(source="tiny", dtype="float32"))
    selector = make_selector("ancestral")
    prompts = load_prompts(DatasetConfig(data_files="bundled:tiny", limit=3), loaded.tokenizer,
                           8, 6)
    ids = torch.tensor([list(p.input_ids) for p in prompts])
    config = generation_config(loaded, 6)
    config.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
    sampler = KeyedSampler([(selector, slice(0, 3))], row_keys(torch.zeros(3), torch.arange(3)),
                           ids.shape[1])
    out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                generation_config=config, logits_processor=[sampler])
    for raw, processed in zip(out.logits, out.scores, strict=True):
        assert torch.equal(processed > -torch.inf, selector.keep_mask(raw))
        assert (processed > -torch.inf).sum(-1).min() > 50


def test_a_job_writes_one_complete_record_per_prompt_and_seed(tiny_cfg, tmp_path):
    rows = run(tiny_cfg, tmp_path, "dataset.limit=6", "generation.seeds=[0,1]")
    assert sorted((r["prompt_id"], r["seed"]) for r in rows) == [
        (p, s) for p in range(6) for s in (0, 1)]
    for row in rows:
        assert set(row) >= {"prompt_id", "seed", "prompt", "continuation", "reference",
                            "num_tokens", "finish_reason", "kept_mean", "mass_mean",
                            "rank_mean", "topk_identical_rate"}
        assert row["finish_reason"] in ("eos", "length")
        assert row["kept_mean"] == 1.0 or row["kept_mean"] > 0
    job = OmegaConf.load(tmp_path / "job" / "job.yaml")
    assert job.selector.method == "locally_typical_distance" and job.prompts == 6


def test_greedy_runs_once_and_is_deterministic(tiny_cfg, tmp_path):
    rows = run(tiny_cfg, tmp_path, "selector=greedy", "dataset.limit=4", "generation.seeds=[3,4]")
    assert {r["seed"] for r in rows} == {0}  # one canonical seed, whatever the list
    assert all(r["kept_mean"] == 1.0 and r["topk_identical_rate"] == 1.0 for r in rows)


def test_same_config_and_seed_give_the_same_text(tiny_cfg, tmp_path):
    first = run(tiny_cfg, tmp_path, "dataset.limit=5", name="a")
    second = run(tiny_cfg, tmp_path, "dataset.limit=5", name="b")
    assert [r["continuation"] for r in first] == [r["continuation"] for r in second]
    other_seed = run(tiny_cfg, tmp_path, "dataset.limit=5", "generation.seeds=[7]", name="c")
    assert [r["continuation"] for r in other_seed] != [r["continuation"] for r in first[:5]]


def test_selectors_with_the_same_seed_draw_the_same_random_numbers(tiny_cfg, tmp_path):
    """Paired comparisons: where the kept sets agree the texts coincide."""
    common = ("dataset.limit=4", "generation.seeds=[0]")
    everything = run(tiny_cfg, tmp_path, *common, "selector=top_k", "selector.top_k=100000",
                     name="k_all")
    ancestral = run(tiny_cfg, tmp_path, *common, "selector=ancestral", name="ancestral")
    assert [r["continuation"] for r in everything] == [r["continuation"] for r in ancestral]
    one = run(tiny_cfg, tmp_path, *common, "selector=top_k", "selector.top_k=1", name="k1")
    greedy = run(tiny_cfg, tmp_path, *common, "selector=greedy", name="greedy")
    assert [r["continuation"] for r in one] == [r["continuation"] for r in greedy]


def test_resume_after_a_torn_write_completes_without_duplicates(tiny_cfg, tmp_path):
    overrides = ("dataset.limit=10", "generation.seeds=[0,1]")
    complete = run(tiny_cfg, tmp_path, *overrides, name="complete")
    path = tmp_path / "torn" / "generations.jsonl"
    run(tiny_cfg, tmp_path, *overrides, name="torn")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][:30])  # a batch, then half a record
    resumed = run(tiny_cfg, tmp_path, *overrides, name="torn")
    key = lambda r: (r["seed"], r["prompt_id"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(complete, key=key)


def test_adding_a_seed_resumes_into_the_same_job(tiny_cfg, tmp_path):
    first = run(tiny_cfg, tmp_path, "dataset.limit=3", "generation.seeds=[0]")
    both = run(tiny_cfg, tmp_path, "dataset.limit=3", "generation.seeds=[0,1]")
    assert both[:3] == first and {r["seed"] for r in both[3:]} == {1}


def test_a_job_dir_of_another_config_is_refused_and_kept(tiny_cfg, tmp_path):
    before = run(tiny_cfg, tmp_path, "dataset.limit=3")
    with pytest.raises(JobError, match="different config"):
        run(tiny_cfg, tmp_path, "dataset.limit=3", "selector.alpha=0.5")
    assert records(tmp_path / "job" / "generations.jsonl") == before


def test_nan_logits_stop_the_job_and_keep_earlier_records(tiny_cfg, tmp_path):
    before = run(tiny_cfg, tmp_path, "dataset.limit=4", "generation.seeds=[0]")
    loaded = load_model(ModelConfig(source="tiny", dtype="float32"))
    weight = loaded.model.lm_head.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="NaN logits"):
            run(tiny_cfg, tmp_path, "dataset.limit=4", "generation.seeds=[0,1]", name="job")
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert records(tmp_path / "job" / "generations.jsonl") == before


def test_too_long_prompts_and_empty_datasets_are_clear_errors(tiny_cfg, tmp_path):
    with pytest.raises(JobError, match="exceeds the context"):
        run(tiny_cfg, tmp_path, "generation.prompt_tokens=600")
    with pytest.raises(ValueError, match="no document of at least"):
        run(tiny_cfg, tmp_path, "generation.prompt_tokens=400", "generation.max_new_tokens=100")


def test_shards_partition_the_prompts(tiny_cfg, tmp_path):
    whole = run(tiny_cfg, tmp_path, "dataset.limit=7", "generation.seeds=[0]", name="whole")
    shards = [run(tiny_cfg, tmp_path, "dataset.limit=7", "generation.seeds=[0]",
                  f"dataset.shard={i}", "dataset.num_shards=3", name=f"s{i}") for i in range(3)]
    assert sorted(r["prompt_id"] for s in shards for r in s) == [r["prompt_id"] for r in whole]


def test_named_sweeps_expand_to_the_notes_test_plan():
    grids = load_sweep("seed_comparison")
    assert grids[0] == ["selector=locally_typical_distance", "selector.alpha=1.0,0.7,0.5,0.2",
                        "selector.top_k=10"]
    methods = [g[0].removeprefix("selector=") for g in grids]
    assert methods == ["locally_typical_distance", "locally_typical", "top_k", "top_p",
                       "typical", "min_p", "greedy"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_cli_errors_name_the_key_and_exit_non_zero(tmp_path):
    bad = cli("harness", *TINY, "selector=top_k", "selector.top_k=0", cwd=tmp_path)
    assert bad.returncode != 0 and "top_k=0" in bad.stderr + bad.stdout
    unknown = cli("harness", *TINY, "selector=nucleus", cwd=tmp_path)
    assert unknown.returncode != 0 and "nucleus" in unknown.stderr


def test_the_readme_multirun_example_and_a_killed_job_resume(tmp_path):
    example = cli("harness", "-m", *TINY, "dataset.limit=2", "generation.seeds=[0]",
                  "selector=locally_typical,locally_typical_distance",
                  "selector.alpha=0.2,0.5,1.0", "selector.top_k=5,10", cwd=tmp_path)
    assert example.returncode == 0, example.stderr
    assert len(list((tmp_path / "multirun" / "adhoc").glob("*/generations.jsonl"))) == 12

    args = ["harness", *TINY, "dataset.limit=100", "generation.seeds=[0,1]",
            "generation.batch_size=2", "hydra.run.dir=killed"]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "killed" / "generations.jsonl"
    while job.poll() is None and (not out.exists() or len(out.read_text().splitlines()) < 20):
        time.sleep(0.05)
    job.kill()
    job.wait()
    assert len(out.read_text().splitlines()) < 200, "the job finished before it was killed"
    assert cli(*args, cwd=tmp_path).returncode == 0
    reference = cli(*args[:-1], "hydra.run.dir=reference", cwd=tmp_path)
    assert reference.returncode == 0
    key = lambda r: (r["seed"], r["prompt_id"])  # noqa: E731
    resumed = records(out)
    assert len({key(r) for r in resumed}) == len(resumed) == 200
    assert sorted(resumed, key=key) == sorted(records(tmp_path / "reference" /
                                                      "generations.jsonl"), key=key)


def test_submitit_local_launcher_runs_a_grid(tmp_path):
    done = cli("harness", "-m", "hydra/launcher=submitit_local", *TINY, "dataset.limit=2",
               "generation.seeds=[0]", "selector=top_k", "selector.top_k=3,5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = sorted((tmp_path / "multirun" / "adhoc").glob("*/generations.jsonl"))
    assert [len(records(j)) for j in jobs] == [2, 2]


def test_an_unknown_model_source_is_a_clear_error(tmp_path):
    bad = cli("harness", *TINY, "model=hub", "model.source=/no/such/model", cwd=tmp_path)
    assert bad.returncode == 1
    assert "model.source='/no/such/model' could not be loaded" in bad.stdout + bad.stderr


def test_the_slurm_preset_asks_one_gpu_per_job_on_the_plugins_schema():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import harness.__main__ as entry

    with initialize_config_dir(config_dir=str(entry.CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=submitit_slurm"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.max_num_timeout == 3  # a requeued job resumes


def texts(rows: list[dict]) -> dict:
    return {(r["prompt_id"], r["seed"]): (r["continuation"], r["num_tokens"], r["finish_reason"],
                                          r["kept_mean"]) for r in rows}


def test_records_do_not_depend_on_batch_size_limit_or_shards(tiny_cfg, tmp_path):
    common = ("generation.seeds=[0,3]", "selector=top_p", "selector.top_p=0.9")
    one = texts(run(tiny_cfg, tmp_path, *common, "dataset.limit=9", "generation.batch_size=1",
                    name="one"))
    seven = texts(run(tiny_cfg, tmp_path, *common, "dataset.limit=9", "generation.batch_size=7",
                      name="seven"))
    assert one == seven
    shards = {}
    for i in range(2):
        shards.update(texts(run(tiny_cfg, tmp_path, *common, "dataset.limit=9",
                                f"dataset.shard={i}", "dataset.num_shards=2", name=f"s{i}")))
    assert shards == one
    more = texts(run(tiny_cfg, tmp_path, *common, "dataset.limit=12", name="one"))
    assert {k: v for k, v in more.items() if k[0] in {p for p, _ in one}} == one  # resumed


def test_an_old_samplers_records_are_refused(tiny_cfg, tmp_path):
    before = run(tiny_cfg, tmp_path, "dataset.limit=2")
    path = tmp_path / "job" / "generations.jsonl"
    path.write_text("".join(json.dumps({**r, "config_hash": "0ld5amp1er00"}) + "\n"
                            for r in before))
    with pytest.raises(JobError, match="older sampler"):
        run(tiny_cfg, tmp_path, "dataset.limit=2")


@pytest.mark.slow  # make test-slow (CI): about a minute or more
def test_a_fused_sweep_writes_what_one_job_at_a_time_writes(tmp_path):
    args = ["harness.sweep", "seed_comparison", *TINY, "dataset.limit=5", "generation.seeds=[0,1]"]
    fused = cli(*args, "hydra.sweep.dir=fused", cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    basic = cli(*args, "hydra.sweep.dir=basic", "hydra/launcher=basic", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr
    jobs = sorted(p.name for p in (tmp_path / "basic").iterdir() if p.is_dir())
    assert len(jobs) == 11 and jobs == sorted(
        p.name for p in (tmp_path / "fused").iterdir() if p.is_dir())
    for job in jobs:
        a, b = (records(tmp_path / d / job / "generations.jsonl") for d in ("fused", "basic"))
        assert texts(a) == texts(b) and len(a) == (5 if job.startswith("greedy") else 10)
        for name in ("job.yaml", "timing.json", ".hydra/overrides.yaml"):
            assert (tmp_path / "fused" / job / name).exists()
        timing = json.loads((tmp_path / "fused" / job / "timing.json").read_text())
        assert timing["fused_jobs"] == 11 and timing["records"] == len(a)
