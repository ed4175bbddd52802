"""``python -m harness.assets``: build the bundled model and corpus into the cache, once."""

import logging

from harness import cache_dir
from harness.data import build_austen, build_tiny
from harness.models import build_smollm2

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for build in (build_smollm2, build_austen, build_tiny):
        print(f"{build.__name__}: {build()}")
    print(f"assets ready under {cache_dir()}")
