"""Every ``astreg bench`` section resolves, and those that need no broker return the figures they
promise at a small size: keys present, counts and rates above zero. No figure is judged here
(that is what ``astreg bench`` itself is for)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from astreg.tools.bench import sections
from astreg.tools.bench.cli import SECTIONS, _load
from astreg.tools.bench.sinks import store_rate
from astreg.tools.bench.web import measure_row_index


def positive(figures: dict[str, Any], keys: list[str]) -> None:
    missing = [k for k in keys if k not in figures]
    assert not missing, f"missing {missing} in {figures}"
    for key in keys:
        assert isinstance(figures[key], int | float) and not isinstance(figures[key], bool), key
        assert figures[key] > 0, (key, figures[key])


@pytest.mark.parametrize("name", list(SECTIONS))
def test_section_resolves_to_a_coroutine_function(name: str) -> None:
    target = SECTIONS[name][0]
    fn = _load(target)
    assert inspect.iscoroutinefunction(fn), target
    assert {"quick", "work", "kafka"} <= set(inspect.signature(fn).parameters), target


async def test_simulator_section(tmp_path: Path) -> None:
    figures = await sections.simulator(quick=True, work=tmp_path)
    positive(figures, ["events_per_s", "events", "phones_for_memory", "rss_bytes_per_phone", "ratio_vs_target"])


async def test_alerting_section(tmp_path: Path) -> None:
    figures = await sections.alerting(quick=True, work=tmp_path)
    positive(figures, ["engine_records", "engine_endpoints", "engine_engine_records_per_s",
                       "engine_decode_and_engine_records_per_s", "rtcp_rtcp_messages", "rtcp_rtcp_messages_per_s"])
    assert figures["engine_alert_transitions"] >= 0


async def test_sinks_section_figures_on_sqlite() -> None:
    store = await store_rate("sqlite", rows=300, batch=100)
    assert store["rows"] == 300
    figures = sections.flatten_sinks({"sqlite": {"store": store}})
    positive(figures, ["sqlite_store_insert_rows_per_s", "sqlite_store_update_rows_per_s",
                       "sqlite_store_insert_client_cpu_us_per_row", "sqlite_store_update_client_cpu_us_per_row",
                       "sqlite_store_batch"])
    assert "sqlite_store_rows" not in figures and "sqlite_store_sink" not in figures


def test_sinks_section_names_postgresql_against_its_target() -> None:
    nested = {"postgresql": {"store": {"sink": "postgresql", "rows": 10, "insert_rows_per_s": 30_000},
                             "pipeline": {"sink": "postgresql", "rows": 10, "via": "kafka+runner", "rows_per_s": 900}}}
    assert sections.flatten_sinks(nested) == {
        "postgresql_store_insert_rows_per_s": 30_000, "postgresql_pipeline_rows_per_s": 900,
        "postgresql_ratio_vs_target_20k": 1.5}


def test_web_row_index_figures() -> None:
    figures = measure_row_index(5_000)
    assert figures["rows"] == 5_000
    # Building an index costs something; a question answered from the cache may round to 0.0 ms.
    positive(figures, ["node_counts_ms", "first_page_by_endpoint_ms", "first_search_ms", "first_sort_by_rtt_desc_ms"])
    for key in ("next_question_same_order_ms", "next_search_ms", "filter_node_ms"):
        assert figures[key] >= 0, key


async def test_ami_section(tmp_path: Path) -> None:
    run = _load(SECTIONS["ami"][0])
    figures = await run(quick=True, work=tmp_path)
    rates = [k for k, v in figures.items() if k.endswith("_per_s")]
    assert rates, figures
    positive(figures, rates)
