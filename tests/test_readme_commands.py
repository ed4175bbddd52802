"""Every ``python -m harness|harness.sweep|analysis`` command the README shows parses, composes
and passes validation for every job it would launch, so a documented command can never fail
to parse (issue 16). Running them at tiny size: the README's grid and a killed job in
test_runner.py, ``harness.sweep seed_comparison`` fused and unfused in test_runner.py and
test_integrity.py, the analysis in test_analysis.py."""

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

import analysis.__main__ as analysis_entry
import harness.__main__  # noqa: F401  (the job schema and the job_dirname resolver)
from harness.runner import validate
from harness.sweep import load_sweep
from tests.conftest import ROOT

CONF = ROOT / "conf"
PLACEHOLDERS = {"NAME": "seed_comparison", "dataset.limit=N": "dataset.limit=64"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")  # continued lines joined
    found = re.findall(r"`(python -m [^`]+)`", text) + re.findall(r"^(python -m .+)$", text,
                                                                    re.MULTILINE)
    commands = {" ".join(command.split()) for command in found}
    return sorted(c for c in commands if c.split()[2] in ("harness", "harness.sweep", "analysis")
                  and "..." not in c)


def jobs_of(overrides: list[str]) -> list[list[str]]:
    """The jobs a multirun of ``overrides`` launches, as the basic sweeper expands them."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def compose_and_validate(overrides: list[str]) -> int:
    jobs = jobs_of(overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in jobs:
            validate(compose("config", overrides=job))
    return len(jobs)


def test_the_readme_shows_commands_of_every_entry_point():
    entries = {c.split()[2] for c in readme_commands()}
    assert entries == {"harness", "harness.sweep", "analysis"}


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_parses_composes_and_validates(command, tmp_path):
    _, _, entry, *args = shlex.split(command, comments=True)  # a trailing # comment
    args = [PLACEHOLDERS.get(a, a) for a in args]
    if entry == "harness":
        assert compose_and_validate([a for a in args if a not in ("-m", "--multirun")]) >= 1
    elif entry == "harness.sweep":
        name, *extra = args
        assert sum(compose_and_validate([*grid, *extra]) for grid in load_sweep(name)) >= 1
    else:
        overrides = [a for a in args if "=" in a]
        analysis_entry.validate([tmp_path], analysis_entry.load_config(overrides))
