"""One definition of a configuration (harness.identity) and what derives from it: the runner's
hash and grouping, the analysis's rows, Hydra's dir names; the model cache's key."""

import hashlib
import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from harness import identity
from harness.records import RECORDS, parse
from harness.runner import config_hash, run_job, shared_settings
from harness.sampling import SAMPLER_VERSION
from tests.conftest import ROOT, TINY, compose

HYDRA_ONLY = {"hydra.sweep.dir", "hydra.run.dir", "hydra/launcher"}


def test_hydra_dir_names_leave_out_exactly_what_records_do_not_depend_on():
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    excluded = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    # selector: the dir name starts with selector.method instead; shards keep their own dirs.
    assert set(excluded) - HYDRA_ONLY == {*identity.UNHASHED, "selector"}
    assert not set(identity.SHARDING) & set(excluded)


def test_the_config_hash_is_unchanged_so_existing_job_dirs_resume():
    cfg = compose(*TINY, "selector=top_k")
    content = OmegaConf.to_container(cfg, resolve=True)
    for dotted in ("sweep", "wandb", "generation.seeds", "generation.samples_to_log",
                   "generation.batch_size", "generation.compile", "model.device",
                   "dataset.limit"):
        *parents, leaf = dotted.split(".")
        node = content
        for key in parents:
            node = node[key]
        node.pop(leaf)
    before = hashlib.sha1(json.dumps({**content, "sampler": SAMPLER_VERSION},
                                     sort_keys=True).encode()).hexdigest()[:12]
    assert config_hash(cfg) == before


def job_yaml(*overrides: str) -> dict:
    cfg = compose(*TINY, "selector=top_k", *overrides)
    return {**OmegaConf.to_container(cfg, resolve=True), "sampler": SAMPLER_VERSION,
            "config_hash": config_hash(cfg), "prompts": 6}


def test_a_configuration_is_what_its_records_are_a_function_of():
    base = identity.configuration(job_yaml())
    for same in ("generation.compile=true", "generation.batch_size=2", "dataset.limit=3",
                 "generation.seeds=[5]", "dataset.shard=1", "dataset.num_shards=2",
                 "model.device=cpu", "wandb=offline", "sweep=other"):
        assert identity.configuration(job_yaml(same)) == base, same
    for other in ("generation.prompt_tokens=16", "dataset.data_files=other.json",
                  "model.dtype=bfloat16", "model.source=other", "model.eos_token_ids=[3]",
                  "selector.top_k=20", "generation.max_new_tokens=20"):
        assert identity.configuration(job_yaml(other)) != base, other
    # the runner: a hashed key changes the hash; compile does not, nor does it split a group
    assert config_hash(compose(*TINY, "generation.compile=true")) == config_hash(compose(*TINY))
    assert shared_settings(compose(*TINY, "selector=top_k")) == shared_settings(
        compose(*TINY, "selector=greedy", "generation.seeds=[4]"))
    assert shared_settings(compose(*TINY)) != shared_settings(compose(*TINY, "dataset.limit=3"))


def test_references_depend_on_tokenizer_documents_and_lengths_only():
    base = identity.references(job_yaml())
    for same in ("selector.top_k=20", "model.dtype=bfloat16", "dataset.shard=1",
                 "dataset.limit=2", "model.name=renamed"):
        assert identity.references(job_yaml(same)) == base, same
    for other in ("generation.prompt_tokens=16", "generation.max_new_tokens=20",
                  "dataset.data_files=other.json", "model.source=other"):
        assert identity.references(job_yaml(other)) != base, other


def eos_records(job_dir: Path) -> list[tuple]:
    return [(r["prompt_id"], r["seed"], r["continuation"], r["finish_reason"])
            for r in parse(job_dir / RECORDS).records]


def test_the_model_cache_never_serves_another_jobs_eos_list(tmp_path):
    from harness import models

    args = [*TINY, "selector=top_k", "generation.max_new_tokens=16", "dataset.limit=8",
            "generation.seeds=[0,1]"]
    run_job(compose(*args), tmp_path / "default_eos")
    run_job(compose(*args, "model.eos_token_ids=[76]"), tmp_path / "after")
    models._CACHE.clear()
    run_job(compose(*args, "model.eos_token_ids=[76]"), tmp_path / "alone")
    after, alone = eos_records(tmp_path / "after"), eos_records(tmp_path / "alone")
    assert after == alone
    assert any(r[3] == "eos" for r in alone)  # byte 76 ('L'-ish) ends some texts


def test_a_non_ascii_byte_is_corrupt_even_where_it_decodes(tmp_path):
    good = {"prompt_id": 0, "seed": 0, "prompt": "a", "continuation": "b", "reference": "c",
            "num_tokens": 1, "finish_reason": "length", "config_hash": "x"}
    path = tmp_path / RECORDS
    corrupted = json.dumps({**good, "prompt_id": 1}).replace('"b"', '"\xe9"').encode("latin-1")
    path.write_bytes(json.dumps(good).encode() + b"\n" + corrupted + b"\n")
    parsed = parse(path)
    assert [r["prompt_id"] for r in parsed.records] == [0]
    assert [(n, why) for n, _, why in parsed.rejected] == [(2, "non-ASCII byte")]
