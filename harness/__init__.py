"""Decoding-methods experiment harness: selectors, models, data and the resumable runner."""

import os
from pathlib import Path

# Offline by default: the bundled model and corpora need no hub, so nothing may wait on one.
# Set HF_HUB_OFFLINE=0 (and HF_DATASETS_OFFLINE=0) to use hub models or datasets.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def cache_dir() -> Path:
    """Root of the built assets and analysis caches: ``$HARNESS_CACHE``, else
    ``~/.cache/decoding-harness``."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "decoding-harness"))
