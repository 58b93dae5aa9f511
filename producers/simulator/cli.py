"""``astreg simulate``: run N simulated Asterisk nodes (AMI over TCP) until SIGINT/SIGTERM.

    astreg simulate --nodes 3 --phones 1000 --ami-port 5038 --scenario churn,calls --rate 200

Prints ``ami=nodeI@HOST:PORT`` per node and ``control=http://HOST:PORT`` on start. Every option
is also an ``ASTREG_*`` environment variable (see ``--help``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click

from astreg.options import build, settings_options

from .config import SimConfig
from .control import ControlServer
from .core import Simulator
from .scenarios import run_scenario

logger = logging.getLogger(__name__)

__all__ = ["simulate", "run"]


async def run(config: SimConfig, stop: asyncio.Event | None = None) -> None:
    """Start the simulator and its control server, loop the configured scenarios, stop on signal."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    sim = Simulator(config)
    await sim.start()
    control = ControlServer(sim, config.host, config.control_port)
    try:
        await control.start()
        for name, port in sim.ports.items():
            click.echo(f"ami={name}@{config.host}:{port}")
        click.echo(f"control={control.url}")
        sys.stdout.flush()  # parents (tests, demo) read these lines through a pipe
        names = [n.strip() for n in config.scenario.split(",") if n.strip()]
        runner = loop.create_task(_loop_scenarios(sim, names, stop))
        await stop.wait()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    finally:
        await control.stop()
        await sim.stop()


async def _loop_scenarios(sim: Simulator, names: list[str], stop: asyncio.Event) -> None:
    # crash/restart/storm are events, not load: run them once, loop the others.
    once = [n for n in names if n in ("crash", "restart", "storm")]
    looped = [n for n in names if n not in once]
    for name in once:
        try:
            await run_scenario(sim, name)
        except Exception:
            logger.exception("scenario %s failed", name)
    if not looped:
        return
    while not stop.is_set():
        for name in looped:
            try:
                await run_scenario(sim, name)
            except Exception:
                logger.exception("scenario %s failed", name)
                await asyncio.sleep(1.0)
        if sim.config.rate is None:
            await asyncio.sleep(0.01)  # let clients breathe between steps


@click.command("simulate")
@settings_options(SimConfig)
def simulate(**kw: object) -> None:
    """Run simulated Asterisk 22 nodes speaking AMI.

    For tests, demos and load tests."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = build(kw, SimConfig)
    asyncio.run(run(config))
