"""Built assets (the bundled model and corpora), built once per cache by whichever process needs
them first, safely when many do at once: the array tasks of a cluster study on a shared home
with an empty cache all start the same build together.

``python -m harness.assets``: build the bundled model and corpora into the cache, once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import cache_dir

log = logging.getLogger(__name__)


def build_once(target: Path, write: Callable[[Path], None]) -> Path:
    """``target`` (a file or a folder), built by ``write(path)`` unless it exists.

    ``write`` writes into a unique temporary dir in ``target``'s parent, which is renamed to
    ``target`` in one step: a reader sees no target or a complete one. Builders in other
    processes wait on a lock of the parent dir and then find it built; where that lock is not
    available (a file system without ``flock``), each builds its own copy and the first rename
    wins: "already built by another process" is a success. The temporary dir goes on every
    outcome, and the files get the modes the umask allows (a group-shared cache stays readable:
    some writers, safetensors' among them, create their files 0600)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with parent_lock(target.parent):
        if target.exists():
            log.info("%s was built by another process meanwhile", target)
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                        dir=target.parent))
        try:
            built = scratch / target.name
            write(built)
            respect_umask(built)
            try:
                os.rename(built, target)  # atomic; replaces a file, never a non-empty folder
            except OSError:
                if not target.exists():
                    raise
                log.info("%s was built by another process meanwhile", target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextmanager
def parent_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself (no lock file is left behind); held by
    the kernel, so a killed builder releases it. Without flock support: no lock."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that builds into %s", folder)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # no flock here (some network file systems): the rename still decides
            pass
        yield
    finally:
        os.close(descriptor)  # releases the lock


def respect_umask(path: Path) -> None:
    """Files ``0o666 & ~umask``, folders ``0o777 & ~umask``, under ``path`` (and ``path``)."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


if __name__ == "__main__":
    from harness.data import build_austen, build_tiny
    from harness.models import build_smollm2

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for build in (build_smollm2, build_austen, build_tiny):
        print(f"{build.__name__}: {build()}")
    print(f"assets ready under {cache_dir()}")
