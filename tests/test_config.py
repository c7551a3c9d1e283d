"""The settings' one declaration: the README's configuration table and the CLI follow it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, check_whole, env_name

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> dict[str, str]:
    """Each variable of the README's Configuration table and its default, backticks dropped."""
    text = README.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        defaults = cells[1].split(", ") if len(names) > 1 else [cells[1]]
        if len(defaults) == 1:
            # One default said once for several variables that go together.
            defaults *= len(names)
        assert len(defaults) == len(names), line
        for name, default in zip(names, defaults, strict=True):
            table[name] = default.replace("`", "")
    return table


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def declared() -> dict[str, str]:
    """Each declared variable and the default the README should show for it."""
    return {
        field.metadata["env"]: (field.metadata["shown"] or shown(field.default)).replace("`", "")
        for field in fields(Settings)
    }


def test_the_readme_configuration_table_lists_every_declared_setting_and_no_other():
    assert sorted(readme_table()) == sorted(declared())


def test_the_readme_configuration_table_shows_each_declared_default():
    table = readme_table()
    assert {name: table.get(name) for name in declared()} == declared()


def test_the_declared_defaults_are_what_an_empty_environment_gives():
    assert Settings.from_env({}) == Settings()


def test_the_cli_checks_workers_against_the_same_bounds_as_the_environment():
    assert env_name("workers") == "GATEWAY_WORKERS"
    with pytest.raises(ConfigError, match="--workers must be between 1 and 64"):
        check_whole("workers", 65, "--workers")
    with pytest.raises(ConfigError, match="GATEWAY_WORKERS must be between 1 and 64"):
        Settings.from_env({"GATEWAY_WORKERS": "65"})
