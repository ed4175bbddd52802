"""An analysis's outputs as one set: written into a staging dir inside the output dir, then
renamed over the previous ones together, so that a failed analysis leaves the previous complete
set (never new tables beside an old plan or report) and no temporary file."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STAGING = ".analysis-new-"  # prefix of the staging dirs in the output dir


@contextmanager
def output_set(out: Path) -> Iterator[Path]:
    """A dir to write every output of ``out`` into (named like ``out``, for the writers that
    title their output with its dir's name); on a clean exit each file and dir in it replaces
    its namesake in ``out`` (a dir whole, so stale files in it go too); on any error, Ctrl-C
    included, it is removed and ``out`` is as it was. A staging dir an earlier, killed run left
    behind is removed first."""
    for stale in out.glob(f"{STAGING}*"):
        log.warning("removing %s, the unfinished outputs of an earlier analysis", stale)
        shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    staging = root / out.name
    staging.mkdir()
    try:
        yield staging
        replace_all(staging, out, root / "previous")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def replace_all(staging: Path, out: Path, previous: Path) -> None:
    """Rename every entry of ``staging`` into ``out``: dirs first moved aside into
    ``previous`` (a dir is not renamed over a non-empty one), files replaced in one rename
    each. All renames are within one file system, so none copies anything."""
    previous.mkdir()
    entries = sorted(staging.iterdir())
    for entry in entries:
        target = out / entry.name
        if entry.is_dir() and target.is_dir():
            os.replace(target, previous / entry.name)
    for entry in entries:
        os.replace(entry, out / entry.name)
