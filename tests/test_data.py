"""Documents -> prompts and references."""

import json

import pytest

from harness.data import DatasetConfig, load_prompts, paragraphs
from harness.models import tiny_tokenizer


def test_wrapped_lines_become_blank_line_separated_paragraphs():
    lines = ["CHAPTER I", "", "It is a truth universally", "acknowledged.", "", "", "Next one."]
    assert paragraphs(lines) == ["CHAPTER I", "It is a truth universally acknowledged.",
                                 "Next one."]


def test_prompts_and_references_have_exact_token_lengths(tmp_path):
    docs = ["a" * 10, "b" * 30 + "c" * 20, "short", "d" * 60]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    cfg = DatasetConfig(name="local", data_files=str(path), text_field="body")
    prompts = load_prompts(cfg, tiny_tokenizer(), prompt_tokens=30, new_tokens=20)
    assert [p.prompt_id for p in prompts] == [1, 3]  # documents with >= 50 tokens
    assert prompts[0].prompt == "b" * 30 and prompts[0].reference == "c" * 20
    assert all(len(p.input_ids) == 30 for p in prompts)


def test_a_missing_text_field_names_the_key_and_the_columns(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"dataset.text_field='text'.*\['body'\]"):
        load_prompts(DatasetConfig(data_files=str(path)), tiny_tokenizer(), 4, 4)
