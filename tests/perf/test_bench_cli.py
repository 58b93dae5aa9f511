"""``astreg bench``: one click group, its benchmarks as commands, the sections when none is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from astreg.proc import astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.bench.cli import COMMANDS, HIDDEN_COMMANDS, SECTIONS, bench
from astreg.tools.cli import main

# The options each benchmark takes (their names are what docs and scripts call).
OPTIONS = {
    "alerting": ["--records", "--endpoints"],
    "e2e": ["--quick", "--storm", "--kafka", "--rate", "--seconds"],
    "producer": ["--events", "--phones", "--bootstrap", "--compression"],
    "simulator": ["--phones", "--nodes", "--seconds"],
    "sinks": ["--rows", "--kind"],
    "stream": ["--bootstrap", "--events", "--endpoints", "--partitions", "--recovery-endpoints", "--mix",
               "--series", "--astreg-bench", "--quick"],
    "web": ["--endpoints", "--clients", "--requests", "--max-seconds", "--workers", "--bare", "--index-only"],
    "naive-worker": ["--bootstrap", "--topics-suffix", "--partitions", "--app-id", "--data-dir", "--web-port",
                     "--embedded"],
}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, terminal_width=200, prog_name="astreg")
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed_with_its_options() -> None:
    assert set(OPTIONS) == set(COMMANDS) | set(HIDDEN_COMMANDS)


def test_bench_help_lists_commands_and_sections() -> None:
    out = invoke("bench", "--help")
    commands = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    assert [row.split()[0] for row in commands.splitlines()] == sorted(COMMANDS)
    sections = out.split("Sections (--only):\n", 1)[1]
    assert [row.split(None, 1) for row in sections.splitlines() if row] == [
        [name, what] for name, (_target, what) in SECTIONS.items()]
    assert "naive-worker" not in out  # started by the stream benchmark, not by hand
    for option in ("--quick", "--only", "--json", "--plot", "--kafka"):
        assert option in out


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_command_help_lists_its_options(name: str) -> None:
    out = invoke("bench", name, "--help")
    assert out.startswith(f"Usage: astreg bench {name} [OPTIONS]")
    listed = [row.split()[0] for row in out.split("Options:\n", 1)[1].splitlines() if row.startswith("  -")]
    assert listed == [*OPTIONS[name], "-h,"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_listed_line_is_the_commands_own_short_help(name: str) -> None:
    command = bench.get_command(bench.make_context("bench", []), name)
    assert command is not None
    assert command.get_short_help_str(limit=200) == COMMANDS[name][1]


def test_command_options_are_settable_from_the_environment() -> None:
    out = invoke("bench", "stream", "--help")
    assert "ASTREG_BENCH_STREAM_RECOVERY_ENDPOINTS" in out
    result = CliRunner().invoke(main, ["bench", "web"], env={"ASTREG_BENCH_WEB_INDEX_ONLY": "300"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 300


def test_bench_help_imports_no_part_of_the_pipeline() -> None:
    code = ("import sys; from click.testing import CliRunner; from astreg.tools.cli import main; "
            "r = CliRunner().invoke(main, ['bench', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('producers', 'streams', 'sinks', 'faust')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_section_options_with_a_command_are_refused() -> None:
    result = CliRunner().invoke(main, ["bench", "--only", "simulator", "simulator", "--seconds", "1"])
    assert result.exit_code == 2
    assert "--only" in result.output and "astreg bench simulator" in result.output


def test_unknown_section_is_refused() -> None:
    result = CliRunner().invoke(main, ["bench", "--only", "alerting,nosuch"])
    assert result.exit_code == 2
    assert "unknown sections: nosuch" in result.output


def test_without_a_command_the_sections_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--only", "alerting", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "astreg bench — apache" in result.output  # the table
    written = json.loads(out.read_text())
    assert written["meta"]["quick"] is True
    assert list(written["results"]) == ["alerting"]
    assert written["results"]["alerting"]["engine_engine_records_per_s"] > 0


def test_naive_worker_argv_is_the_hidden_command(tmp_path: Path) -> None:
    """What the stream benchmark spawns parses as ``astreg --log-level WARNING bench naive-worker ...``."""
    from astreg.tools.bench.stream import _naive_argv, naive_main

    kafka = KafkaSettings(bootstrap="127.0.0.1:9092", embedded=True)
    topics = TopicSettings(partitions=3).with_suffix("benchnaive1")
    argv = _naive_argv(kafka, topics, tmp_path / "naive", 6123, "bench-naive-1")
    prefix = astreg_argv()
    assert argv[: len(prefix)] == prefix
    args = argv[len(prefix):]
    at = args.index("bench")
    assert main.make_context("astreg", args[:at]).params == {"log_level": "WARNING"}
    assert args[at + 1] == "naive-worker"
    group_ctx = bench.make_context("bench", [])
    assert bench.get_command(group_ctx, "naive-worker") is naive_main
    params = naive_main.make_context("naive-worker", args[at + 2:]).params
    assert params == {"bootstrap": "127.0.0.1:9092", "topics_suffix": "benchnaive1", "partitions": 3,
                      "app_id": "bench-naive-1", "data_dir": tmp_path / "naive", "web_port": 6123,
                      "embedded": True}
    assert topics.topic_registrations.endswith(".benchnaive1")
