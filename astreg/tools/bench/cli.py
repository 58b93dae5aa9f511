"""``astreg bench``: every speed figure of SPEC.md in one run, side by side with baselines.

Sections (each also runnable alone with ``--only``): simulator generation rate, producer
throughput + RSS, stream throughput (astreg worker vs a naive Faust app vs raw aiokafka
consume+decode, same broker, same run), sink upserts/s, query latency under 50 clients,
end-to-end AMI event → row latency in every store (SQLite, Redis, each node's AstDB) at 2,000 AMI
events/s beside the broker's own produce → consume latency, storm convergence (every store),
worker recovery. One broker serves the whole run: Apache Kafka
(``--kafka apache``, the reference, started from Maven Central's jars by :mod:`astreg.kafka`), the
embedded one (``--kafka embedded``), or both one after the other (``--kafka both``: every
section on each, then a table of the figures side by side with their ratio). Prints
a table with ratios, writes JSON (``--json``) and plots (``--plot``). ``--quick`` keeps the
whole run under two minutes on a 2-core machine (~100 s; its sizes are printed, QUICK_SIZES),
with e2e and storm on one shared pipeline. Figures go to docs/benchmarks.md.

Each benchmark also runs alone, with more options than its section, as a command of the same
group (``astreg bench stream --events 20000``, ``astreg bench sinks --kind sqlite``...): it
prints its figures as JSON. Commands are imported on first use, so ``astreg bench --help``
imports no part of the pipeline.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from astreg.auth import ensure_cluster_key
from astreg.broker import EmbeddedBroker
from astreg.settings import KafkaSettings

__all__ = [
    "bench", "BenchGroup", "SECTIONS", "COMMANDS", "HIDDEN_COMMANDS", "run_sections", "failures", "render", "plot",
    "render_side_by_side",
]

logger = logging.getLogger(__name__)

# name -> (module:function, description). Each function:
#   async def f(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict
# ``kafka``: the run's one broker (every section that needs Kafka uses it, with its own topics).
SECTIONS: dict[str, tuple[str, str]] = {
    "simulator": ("astreg.tools.bench.sections:simulator", "AMI events/s generated, bytes per phone"),
    "ami": ("astreg.tools.bench.ami:run", "AMI frames parsed/s; a 1 MiB frame in 4 KiB chunks"),
    "producer": ("astreg.tools.bench.sections:producer", "AMI events/s parsed+mapped+encoded+sent, RSS"),
    "stream": ("astreg.tools.bench.sections:stream", "events/s per worker vs naive Faust vs raw aiokafka"),
    "sinks": ("astreg.tools.bench.sections:sinks", "upserts/s per store"),
    "web": ("astreg.tools.bench.sections:web", "/node lookup latency, 50 concurrent clients"),
    "e2e": ("astreg.tools.bench.e2e:run_latency", "AMI event → every store's row at 2,000 events/s"),
    "storm": ("astreg.tools.bench.e2e:run_storm", "convergence after a node's phones re-register elsewhere"),
    "scale": ("astreg.tools.bench.e2e:run_scale", "one, two, three workers: latency and CPU per record"),
    "recovery": ("astreg.tools.bench.sections:recovery",
                 "restarted worker serving a large table; its RSS, RocksDB and row-cache bytes per endpoint"),
    "alerting": ("astreg.tools.bench.sections:alerting", "alert engine records/s, RTCP mapping/s"),
}


# name -> ("module:attribute" of a click command, its short help): each benchmark alone, with
# more options than its section, printing its figures as JSON. Imported on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "alerting": ("astreg.tools.bench.alerts:main", "Alert engine and RTCP mapping records/s, as JSON."),
    "e2e": ("astreg.tools.bench.e2e:main", "AMI event to every store's row latency, or storm convergence, as JSON."),
    "producer": ("astreg.tools.bench.producer:main", "Producer AMI events/s and RSS, as JSON."),
    "simulator": ("astreg.tools.bench.simulator:main", "Simulator events/s and RSS per phone, as JSON."),
    "sinks": ("astreg.tools.bench.sinks:main", "Upserts/s of each sink, as JSON lines."),
    "stream": ("astreg.tools.bench.stream:main", "Worker events/s vs baselines, and recovery, as JSON."),
    "web": ("astreg.tools.bench.web:main", "Node lookup latency under concurrent clients, as JSON."),
}
# Started by the stream benchmark as a child process, never by hand: not listed in --help.
HIDDEN_COMMANDS: dict[str, str] = {"naive-worker": "astreg.tools.bench.stream:naive_main"}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class BenchGroup(click.Group):
    """``astreg bench``: commands imported on first use; the sections listed after them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS[cmd_name][0] if cmd_name in COMMANDS else HIDDEN_COMMANDS.get(cmd_name)
        if target is None:
            return None
        try:
            return _load(target)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            if ctx.resilient_parsing:
                return None
            raise click.ClickException(f"benchmark {cmd_name!r} is not available: {exc}") from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every benchmark (and the pipeline parts they measure).
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Sections (--only)"):
            formatter.write_dl([(name, what) for name, (_target, what) in SECTIONS.items()])
        super().format_epilog(ctx, formatter)


QUICK_SIZES = (
    "simulator 2 s of 3 nodes x 10,000 phones, RSS at 100,000 phones; producer 20,000 AMI events; "
    "stream 10,000 churn events on 2,500 endpoints (astreg, naive Faust, raw aiokafka); sinks 4,000 rows "
    "(AstDB 400); web 2,000 endpoints, 2 workers, 50 clients, 2,000 requests; e2e + storm on one "
    "pipeline: 900 phones, every store loaded, 3 s of moves at 2,000 AMI events/s, then node1's ~300 phones re-register elsewhere; "
    "scale 900 phones, 3 s of moves at 500 AMI events/s through 1, 2, 3 workers; recovery 2,000 rows; "
    "alerting 10,000 records"
)
FULL_SIZES = (
    "simulator 10 s, RSS at 1,000,000 phones; producer 200,000 AMI events; stream 200,000 churn + "
    "200,000 steady events; sinks 50,000 rows (AstDB 5,000); web 10,000 endpoints, 20,000 requests; "
    "e2e 3,000 phones, 20 s of moves at 200 then 2,000 AMI events/s; storm 100,000 phones (33,334 re-register); scale 3,000 phones, "
    "15 s at 1,000 AMI events/s through 1, 2, 3 workers; recovery "
    "1,000,000 rows; alerting 100,000 records"
)
NO_BROKER = {"simulator", "ami", "alerting"}
PAIRED = {"e2e": "storm", "storm": "e2e"}  # --quick runs these two on one pipeline




async def run_sections(names: list[str], quick: bool, work: Path, console: Console,
                       progress_path: Path | None = None, kafka: KafkaSettings | None = None,
                       broker_kind: str = "embedded") -> dict[str, Any]:
    """Run each section on one broker (``kafka``, else one started here for the whole run:
    ``broker_kind`` "apache" or "embedded"); with ``progress_path`` the figures so far are
    rewritten after every section, so a long run that is stopped keeps what it measured."""
    stop: Callable[[], Any] | None = None
    if kafka is None and any(n not in NO_BROKER for n in names):
        work.mkdir(parents=True, exist_ok=True)
        if broker_kind == "apache":
            from astreg.tools.bench.broker import apache_broker

            cluster = apache_broker(work)
            await asyncio.to_thread(cluster.start)
            kafka, stop = cluster.client_settings(embedded=False), cluster.stop
        else:
            broker = await asyncio.to_thread(EmbeddedBroker(log_file=work / "broker.log").start)
            kafka, stop = KafkaSettings(bootstrap=broker.bootstrap, embedded=True), broker.stop
    try:
        return await _run_sections(names, quick, work, console, progress_path, kafka)
    finally:
        if stop is not None:
            await asyncio.to_thread(stop)


async def _run_sections(names: list[str], quick: bool, work: Path, console: Console,
                        progress_path: Path | None, kafka: KafkaSettings | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for name in names:
        target, what = SECTIONS[name]
        if name in shared:  # measured together with an earlier section
            results[name] = shared.pop(name)
            console.print(f"[bold]▶ {name}[/]: {what} … (on the pipeline of {PAIRED[name]})")
            if "error" not in results[name]:
                console.print(f"  done in {results[name].get('elapsed_s')} s")
            continue
        if quick and name in PAIRED and PAIRED[name] in names:
            # --quick: e2e and storm share one pipeline (start-up is most of their time).
            other = PAIRED[name]
            console.print(f"[bold]▶ {name}[/]: {what} … (then {other} on the same pipeline)")
            try:
                from astreg.tools.bench.e2e import run_latency_and_storm

                both = await run_latency_and_storm(quick=quick, work=work / f"{name}+{other}", kafka=kafka)
                results[name], shared[other] = both[name], both[other]
                console.print(f"  done in {results[name]['elapsed_s']} s")
            except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
                logger.debug("sections %s+%s failed", name, other, exc_info=True)
                err = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
                results[name], shared[other] = err, dict(err)
                console.print(f"  [red]failed[/]: {type(exc).__name__}: {exc}")
            if progress_path is not None:
                progress_path.write_text(json.dumps({"partial": True, "results": results}, indent=2, default=str))
            continue
        console.print(f"[bold]▶ {name}[/]: {what} …")
        t0 = time.monotonic()
        try:
            fn: Callable[..., Awaitable[dict[str, Any]]] = _load(target)
            figures = await fn(quick=quick, work=work / name, kafka=kafka)
            figures["elapsed_s"] = round(time.monotonic() - t0, 1)
            results[name] = figures
            console.print(f"  done in {figures['elapsed_s']} s")
        except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
            logger.debug("section %s failed", name, exc_info=True)
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            console.print(f"  [red]failed[/]: {type(exc).__name__}: {exc}")
        if progress_path is not None:
            progress_path.write_text(json.dumps({"partial": True, "results": results}, indent=2, default=str))
    return results


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(results: dict[str, Any], console: Console, title: str = "astreg bench") -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("section")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for section, figures in results.items():
        if "error" in figures:
            table.add_row(section, "error", figures["error"][:80])
            continue
        for key, value in figures.items():
            if key in ("timeline", "series", "trace") or isinstance(value, (list, dict)):
                continue
            table.add_row(section, key, _fmt(value))
            section = ""
    console.print(table)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    e2e = results.get("e2e", {})
    if e2e.get("timeline"):
        xs, ys = zip(*e2e["timeline"], strict=True)
        axes[0].plot(xs, [y * 1000 for y in ys], ".", markersize=3)
        axes[0].set_title(f"AMI event → every store (p50 {e2e.get('every_store_p50_ms')} ms, "
                          f"p99 {e2e.get('every_store_p99_ms')} ms)")
        axes[0].set_xlabel("s since start")
        axes[0].set_ylabel("ms")
    stream = results.get("stream", {})
    for key, label in (("astreg_series", "astreg worker"), ("naive_series", "naive Faust"), ("raw_series", "raw aiokafka")):
        series = stream.get(key)
        if series:
            xs, ys = zip(*series, strict=True)
            axes[1].plot(xs, ys, label=label)
    axes[1].set_title("throughput over time (events/s)")
    axes[1].set_xlabel("s since start")
    axes[1].legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.group(cls=BenchGroup, invoke_without_command=True,
             context_settings={"auto_envvar_prefix": "ASTREG_BENCH"})
@click.option("--quick", is_flag=True, envvar="ASTREG_BENCH_QUICK", show_envvar=True,
              help="Small sizes: the whole run in under two minutes.")
@click.option("--only", default=",".join(SECTIONS), envvar="ASTREG_BENCH_ONLY", show_envvar=True,
              help=f"Comma separated sections: {', '.join(SECTIONS)}.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, envvar="ASTREG_BENCH_JSON",
              show_envvar=True, help="Write all figures as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, envvar="ASTREG_BENCH_PLOT",
              show_envvar=True, help="Plot latency and throughput over time to this PNG.")
@click.option("--kafka", "kind", type=click.Choice(["apache", "embedded", "both"]), default="apache",
              envvar="ASTREG_BENCH_KAFKA", show_envvar=True,
              help="Broker of the run: Apache Kafka (the reference), the embedded one, or both side by side.  "
              "[default: apache]")
@click.pass_context
def bench(ctx: click.Context, quick: bool, only: str, json_path: Path | None, plot_path: Path | None,
          kind: str) -> None:
    """Measure astreg against its baselines on this machine.

    Without a command: the sections (all, or those of --only) on one broker, a table of their
    figures, exit status 1 when a section failed. With a command: that benchmark alone, with
    its own options, its figures printed as JSON.
    """
    # Pipelines of the bench sign and check every record like a deployment (the stream section
    # counts the check's cost): one cluster secret for the run, unless one is given.
    keys = Path(tempfile.mkdtemp(prefix="astreg-bench-keys-"))
    ctx.call_on_close(lambda: shutil.rmtree(keys, ignore_errors=True))
    ensure_cluster_key(keys)
    if ctx.invoked_subcommand is not None:
        given = [param.opts[0] for param in ctx.command.params if param.name is not None
                 and ctx.get_parameter_source(param.name) is click.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} run the sections: give them without a command, or give "
                                   f"the options of `astreg bench {ctx.invoked_subcommand}` after it")
        return
    console = Console()
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise click.UsageError(f"unknown sections: {', '.join(unknown)}")
    console.print(f"sizes ({'--quick' if quick else 'full'}): {QUICK_SIZES if quick else FULL_SIZES}")
    kinds = ["apache", "embedded"] if kind == "both" else [kind]
    t0 = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    for k in kinds:
        console.print(f"[bold]broker: {k}[/]")
        progress = json_path.with_suffix(f".{k}.partial.json") if json_path and len(kinds) > 1 else json_path
        with tempfile.TemporaryDirectory(prefix="astreg-bench-") as tmp:
            runs[k] = asyncio.run(run_sections(names, quick, Path(tmp), console, progress, broker_kind=k))
        if progress is not None and progress != json_path:
            progress.unlink(missing_ok=True)
    meta = {"quick": quick, "sizes": QUICK_SIZES if quick else FULL_SIZES, "total_s": round(time.monotonic() - t0, 1),
            "python": platform.python_version(), "brokers": kinds,
            "machine": f"{platform.machine()} {platform.node()}", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for k, results in runs.items():
        render(results, console, title=f"astreg bench — {k}")
    if len(runs) == 2:
        render_side_by_side(runs["apache"], runs["embedded"], console)
    console.print(f"total {meta['total_s']} s")
    if json_path:
        json_path.write_text(json.dumps({"meta": meta, "results": runs[kinds[0]], "runs": runs}, indent=2, default=str))
    if plot_path:
        plot(runs[kinds[0]], plot_path)
    failed = [f"{k}: {line}" if len(runs) > 1 else line for k, results in runs.items() for line in failures(results)]
    for line in failed:
        console.print(f"[red]failed[/]: {line}")
    if failed:
        raise SystemExit(1)


def render_side_by_side(apache: dict[str, Any], embedded: dict[str, Any], console: Console) -> None:
    """Every numeric figure measured on both brokers, with the ratio Apache Kafka / embedded."""
    table = Table(title="Apache Kafka vs embedded (same run)", show_lines=False)
    for col, justify in (("section", "left"), ("figure", "left"), ("apache", "right"), ("embedded", "right"),
                         ("apache/embedded", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for section, figures in apache.items():
        other = embedded.get(section, {})
        label = section
        for key, value in figures.items():
            twin = other.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not isinstance(twin, int | float):
                continue
            ratio = f"{value / twin:.2f}" if twin else "-"
            table.add_row(label, key, _fmt(value), _fmt(twin), ratio)
            label = ""
    console.print(table)


def failures(results: dict[str, Any]) -> list[str]:
    """What makes a run fail: a section that raised, or one that measured a failure (a storm
    that did not converge, e2e moves lost): figures that look like numbers but are not results."""
    out = []
    for name, figures in results.items():
        if "error" in figures:
            out.append(f"{name}: {figures['error']}")
        if figures.get("converged") is False:
            out.append(f"{name}: did not converge")
        for key in sorted(k for k in figures if k == "lost" or k.endswith("_lost")):
            if figures[key]:
                out.append(f"{name}: {figures[key]} lost" + ("" if key == "lost" else f" ({key})"))
    return out
