"""Documents -> (prompt, reference) pairs, all through ``datasets.load_dataset``.

``data_files`` may name a bundled corpus, built once into the cache by ``make setup``:
- ``bundled:austen`` — Jane Austen's six novels (public domain), from Debian's package
  ``r-cran-janeaustenr`` (R lazy-load data read with ``rdata``): paragraphs of >= 100 words.
- ``bundled:tiny`` — 120 short generated documents, for tests and CI.
- ``bundled:synthetic`` — 512 long generated documents (~2,000 characters), enough for 32 + 256
  byte tokens: for GPU benchmarks on random weights, with nothing to download.
Anything else is passed to ``load_dataset`` as is: local json/jsonl/parquet/text files, or a hub
dataset by ``path``/``name`` for users with network.
"""

from __future__ import annotations

import codecs
import json
import logging
import random
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from omegaconf import MISSING
from transformers import PreTrainedTokenizerBase

from harness import cache_dir
from harness.assets import build_once

log = logging.getLogger(__name__)

AUSTEN_PACKAGE = "r-cran-janeaustenr"
AUSTEN_MIN_WORDS = 100


@dataclass
class DatasetConfig:
    """``conf/dataset/*.yaml``."""

    name: str = "austen"
    path: str = "json"  # a datasets builder (json, parquet, text) or a hub dataset name
    data_files: str | None = MISSING  # required (null for a hub dataset): no silent corpus
    config_name: str | None = None  # the hub dataset's configuration, e.g. wikitext-103-raw-v1
    split: str = "train"
    text_field: str = "text"
    limit: int | None = None  # number of prompts (the first eligible documents)
    shard: int = 0
    num_shards: int = 1


@dataclass(frozen=True)
class Prompt:
    prompt_id: int  # index of the document in the dataset split
    input_ids: tuple[int, ...]
    prompt: str
    reference: str


def build_austen(target: Path | None = None) -> Path:
    """Download the Debian package (not installed: it would pull R), read its R lazy-load data
    and write one JSON line per paragraph of >= 100 words (once per cache, ``build_once``)."""
    return build_once(target or cache_dir() / "data" / "austen.jsonl", write_austen)


def write_austen(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            download_deb(AUSTEN_PACKAGE, Path(tmp))
            deb = next(Path(tmp).glob("*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), "unpacked"], cwd=tmp, check=True)
        except (OSError, subprocess.CalledProcessError, StopIteration) as error:
            raise RuntimeError(
                f"could not fetch Debian's {AUSTEN_PACKAGE} ({error}); the Austen corpus needs "
                "apt-get and dpkg-deb with Debian's package index (`sudo apt-get update` once)."
            ) from error
        base = next(Path(tmp, "unpacked").rglob("janeaustenr/data/Rdata.rdx")).with_suffix("")
        books = read_r_lazyload(base)
    with out.open("w") as handle:
        for book, lines in books.items():
            for number, paragraph in enumerate(paragraphs(lines)):
                if len(paragraph.split()) >= AUSTEN_MIN_WORDS:
                    handle.write(json.dumps({"text": paragraph, "book": book,
                                             "paragraph": number}) + "\n")


def download_deb(package: str, directory: Path) -> None:
    """``apt-get download``; a fresh machine's empty package index is refreshed once first."""
    command = ["apt-get", "download", package]
    if subprocess.run(command, cwd=directory, capture_output=True).returncode != 0:
        log.info("apt-get could not find %s: refreshing the package index once", package)
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(command, cwd=directory, check=True, capture_output=True)


def read_r_lazyload(base: Path) -> dict[str, list[str]]:
    """Variables of an R lazy-load database (``base.rdx`` index + ``base.rdb`` zlib chunks)."""
    import rdata

    blob = base.with_suffix(".rdb").read_bytes()
    out = {}
    with warnings.catch_warnings():  # rdata warns that headerless serialized data is "assumed RDS"
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.read_rds(base.with_suffix(".rdx"))
        for name, (offset, length) in index["variables"].items():
            chunk = blob[int(offset) : int(offset) + int(length)]
            parsed = rdata.parser.parse_data(zlib.decompress(chunk[4:]))  # 4 bytes: raw length
            out[name] = [str(line) for line in rdata.conversion.convert(parsed)]
    return out


def paragraphs(lines: list[str]) -> list[str]:
    """Join wrapped lines into blank-line separated paragraphs."""
    out, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def build_tiny(target: Path | None = None, documents: int = 120,
               sentences: tuple[int, int] = (6, 12)) -> Path:
    """``documents`` documents of generated prose, the same on every machine (once per cache,
    ``build_once``)."""
    return build_once(target or cache_dir() / "data" / "tiny.jsonl",
                      lambda out: write_tiny(out, documents, sentences))


def write_tiny(out: Path, documents: int, sentences: tuple[int, int]) -> None:
    rng = random.Random(0)
    subjects = ["The captain", "A letter", "Her sister", "The old house", "My neighbour", "Nobody"]
    verbs = ["walked to", "wrote about", "remembered", "could not forgive", "described", "admired"]
    objects = ["the garden", "the long winter", "a quiet evening", "his brother", "the village"]
    with out.open("w") as handle:
        for _ in range(documents):
            text = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
                    for _ in range(rng.randint(*sentences))]
            handle.write(json.dumps({"text": " ".join(text)}) + "\n")


def build_synthetic() -> Path:
    return build_tiny(cache_dir() / "data" / "synthetic.jsonl", 512, (50, 70))


BUNDLED = {"bundled:austen": build_austen, "bundled:tiny": build_tiny,
           "bundled:synthetic": build_synthetic}


# datasets' builders that read local text files, which check_dataset reads ahead of them
TEXT_BUILDERS = ("json", "text", "csv")


def check_dataset(cfg: DatasetConfig) -> None:
    """Every check of ``dataset.*`` that needs neither the model nor ``datasets``: it runs before
    anything loads. A local file must exist, hold something, and (for the text builders) be
    UTF-8; each error names the key, the file and what to do."""
    if not 0 <= cfg.shard < cfg.num_shards:
        raise ValueError(f"dataset.shard={cfg.shard} must be in [0, dataset.num_shards="
                         f"{cfg.num_shards}); shards are numbered from 0.")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"dataset.limit={cfg.limit} must be >= 1 (or null for every document).")
    files = cfg.data_files
    if files is None or files in BUNDLED:
        return
    if files.startswith("bundled:"):
        raise ValueError(f"dataset.data_files={files!r} is not bundled; use one of "
                         f"{', '.join(BUNDLED)} or a file path.")
    if any(c in files for c in "*?[") or "://" in files:
        return  # a glob or a URL: datasets resolves it
    path = Path(files).expanduser()
    if not path.is_file():
        raise ValueError(f"dataset.data_files={files!r}: no such file ({path.absolute()}); give "
                         "the path of a local json/jsonl/text/parquet file.")
    stat = path.stat()
    if stat.st_size == 0 or (cfg.path in TEXT_BUILDERS and not _has_text(path, stat.st_size,
                                                                          stat.st_mtime_ns)):
        raise ValueError(f"dataset.data_files={files!r}: the file is empty; give a file with "
                         f"one document per line (a {cfg.text_field!r} field for json).")
    if cfg.path == "json":
        _check_json_lines(path, cfg.text_field, stat.st_size, stat.st_mtime_ns)


@cache  # by size and mtime, as _has_text
def _check_json_lines(path: Path, field: str, size: int, mtime_ns: int) -> None:
    """In a JSON Lines file (``.jsonl``, or a first line that is an object), every line must be
    an object whose ``field`` is a text: datasets' own errors name neither the file nor the
    line (a number is "Column() changed from object to string in row 0", a list a tokenizer
    traceback). A whole-file JSON document is left to datasets."""
    key = f"dataset.text_field={field!r}"
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"dataset.data_files={str(path)!r}, line {number}"
            try:
                document = json.loads(line)
            except json.JSONDecodeError as error:
                if number == 1 and path.suffix != ".jsonl":
                    return  # not JSON Lines: one JSON document over many lines
                raise ValueError(f"{where}: not valid JSON ({error.msg}, column {error.colno}); "
                                 f"give one object per line, e.g. {{\"{field}\": \"...\"}}."
                                 ) from None
            if not isinstance(document, dict):
                raise ValueError(f"{where}: a {json_type(document)}, not an object with a "
                                 f"{field!r} field ({key}).")
            if field not in document:
                raise ValueError(f"{where} has no {field!r} field ({key}; its keys: "
                                 f"{list(document)}): set dataset.text_field to the field holding "
                                 "the text, or fix the line.")
            if not isinstance(document[field], str):
                raise ValueError(f"{where}: {key} holds a {json_type(document[field])}, not a "
                                 "text; give every document its text as a string.")


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string"}.get(type(value), "number")


@cache  # by size and mtime: every job of a sweep checks the same file
def _has_text(path: Path, size: int, mtime_ns: int) -> bool:
    """Whether ``path`` holds anything but whitespace; raises if it is not UTF-8."""
    decoder, offset, found = codecs.getincrementaldecoder("utf-8")(), 0, False
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                found = bool(decoder.decode(chunk).strip()) or found
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"dataset.data_files={str(path)!r} is not UTF-8 (byte {offset + error.start}: "
                    f"{error.reason}); convert it, e.g. iconv -f latin1 -t utf-8."
                ) from None
            offset += len(chunk)
    decoder.decode(b"", final=True)
    return found


def load_documents(cfg: DatasetConfig):
    """The dataset split as a ``datasets.Dataset``."""
    import datasets

    check_dataset(cfg)
    data_files = cfg.data_files
    if data_files in BUNDLED:
        data_files = str(BUNDLED[data_files]())
    try:
        ds = datasets.load_dataset(cfg.path, name=cfg.config_name, data_files=data_files,
                                   split=cfg.split)
    except (FileNotFoundError, ValueError, ConnectionError,
            datasets.exceptions.DatasetGenerationError) as error:
        cause = error.__cause__ or error  # DatasetGenerationError wraps the parser's error
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ValueError(
            f"dataset {cfg.name!r} (dataset.path={cfg.path!r}, dataset.data_files={data_files!r}) "
            f"could not be loaded: {reason}"
        ) from error
    if cfg.text_field not in ds.column_names:
        raise ValueError(f"dataset.text_field={cfg.text_field!r} is not a column of {cfg.name!r}; "
                         f"its columns are {ds.column_names}.")
    return ds


def _tokenized(texts, tokenizer: PreTrainedTokenizerBase, cfg: DatasetConfig, batch: int = 256
               ) -> Iterator[tuple[int, str, list[int]]]:
    """(index, text, token ids) of every document, tokenized ``batch`` at a time."""
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        for index, text in enumerate(chunk, start):
            if not isinstance(text, str):
                raise ValueError(f"dataset {cfg.name!r}, document {index}: dataset.text_field="
                                 f"{cfg.text_field!r} holds {type(text).__name__} {text!r:.40}, "
                                 "not a text.")
        ids = tokenizer(chunk, add_special_tokens=False).input_ids
        yield from zip(range(start, start + len(chunk)), chunk, ids, strict=True)


@cache
def _eligible_prompts(cfg_key: tuple, tokenizer: PreTrainedTokenizerBase, prompt_tokens: int,
                      new_tokens: int, limit: int | None) -> tuple[Prompt, ...]:
    cfg = DatasetConfig(**dict(cfg_key))
    prompts: list[Prompt] = []
    blank = short = 0
    for index, text, ids in _tokenized(load_documents(cfg)[cfg.text_field], tokenizer, cfg):
        if len(ids) >= prompt_tokens + new_tokens:
            head, tail = ids[:prompt_tokens], ids[prompt_tokens : prompt_tokens + new_tokens]
            prompts.append(Prompt(index, tuple(head), tokenizer.decode(head),
                                  tokenizer.decode(tail)))
            if len(prompts) == limit:
                break
        elif text.strip():
            short += 1
        else:
            blank += 1
    needed = (f"{prompt_tokens + new_tokens} tokens (generation.prompt_tokens={prompt_tokens} + "
              f"generation.max_new_tokens={new_tokens})")
    if blank or short:
        log.info("dataset %r: %d prompts; %d documents skipped before them (%d empty or "
                 "whitespace, %d shorter than %s)", cfg.name, len(prompts), blank + short, blank,
                 short, needed)
    if prompts and limit is not None and len(prompts) < limit:
        log.warning("dataset.limit=%d, but dataset %r has only %d documents of at least %s: "
                    "running %d prompts.", limit, cfg.name, len(prompts), needed, len(prompts))
    return tuple(prompts)


def load_prompts(cfg: DatasetConfig, tokenizer: PreTrainedTokenizerBase, prompt_tokens: int,
                 new_tokens: int) -> list[Prompt]:
    """Prompts = the first ``prompt_tokens`` tokens of each document with at least
    ``prompt_tokens + new_tokens`` tokens; the next ``new_tokens`` are the human reference.
    ``limit`` keeps the first eligible documents; shard i of n takes every n-th of those."""
    check_dataset(cfg)
    unsharded = tuple(sorted((k, v) for k, v in vars(cfg).items()
                             if k not in ("shard", "num_shards")))  # one cache entry per shard set
    prompts = _eligible_prompts(unsharded, tokenizer, prompt_tokens, new_tokens, cfg.limit)
    if not prompts:
        raise ValueError(
            f"dataset {cfg.name!r} has no document of at least {prompt_tokens + new_tokens} tokens "
            f"(generation.prompt_tokens={prompt_tokens} + generation.max_new_tokens={new_tokens}); "
            "lower them or use a dataset with longer documents."
        )
    return list(prompts[cfg.shard :: cfg.num_shards])

