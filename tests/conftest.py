import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Assets go to a per-session cache; the tiny model and dataset build in seconds.
os.environ.setdefault("HARNESS_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = ["model=tiny", "dataset=tiny", "wandb=disabled", "generation.max_new_tokens=12",
        "generation.batch_size=4"]


def compose(*overrides: str):
    """The job config as ``python -m harness`` composes it (config tree + schema)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import harness.__main__ as entry

    with initialize_config_dir(config_dir=str(entry.CONF), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg():
    def make(*overrides: str):
        return compose(*TINY, *overrides)

    return make


