"""``astreg --help``: one line per command, the command's own short help, no import of the parts."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from astreg.tools.cli import SUBCOMMANDS


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_listed_line_is_the_commands_own_short_help(name: str) -> None:
    target, line = SUBCOMMANDS[name]
    module, _, attr = target.partition(":")
    command = getattr(importlib.import_module(module), attr)
    assert command.get_short_help_str(limit=200) == line


def test_help_lists_one_line_per_command_in_80_columns() -> None:
    out = subprocess.run([sys.executable, "-m", "astreg.tools.cli", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"}).stdout
    commands = out.split("Commands:\n", 1)[1].splitlines()
    assert [row.split()[0] for row in commands] == sorted(SUBCOMMANDS)  # no continuation lines
    for row in commands:
        name, text = row.split(None, 1)
        assert text == SUBCOMMANDS[name][1]
        assert "." not in text.rstrip(".").split()[0], row  # a sentence, not a module path


def test_help_imports_no_part_of_the_pipeline() -> None:
    code = ("import sys; from click.testing import CliRunner; from astreg.tools.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('producers', 'streams', 'sinks', 'faust')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
