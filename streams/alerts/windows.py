"""Windowed call-quality figures per endpoint: last, mean and p95 jitter and loss, RTT trend.

Pure and clock-free: :class:`QualityWindow` is fed ``(time_ms, QualitySample)`` pairs and asked
for a :class:`QualitySummary` at a given ``now_ms``; samples older than the window are dropped
on the way. The alerter (``streams/alerts/engine.py``) keeps one window per endpoint and node to
decide HIGH_JITTER / HIGH_LOSS, and the same summary shape is what the API and the page show
(see docs/quality.md).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from schemas.quality import QualityKind, QualitySample

__all__ = ["QualitySummary", "QualityWindow", "p95"]


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (the max for fewer than 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class QualitySummary:
    """Media and signalling figures of one endpoint over the window (None = no data)."""

    endpoint: str
    window_ms: int
    samples: int
    node: str | None = None
    jitter_last_ms: float | None = None
    jitter_mean_ms: float | None = None
    jitter_p95_ms: float | None = None
    loss_last: float | None = None
    loss_mean: float | None = None
    loss_p95: float | None = None
    rtt_last_ms: float | None = None
    rtt_mean_ms: float | None = None
    rtt_trend_ms_per_min: float | None = None
    mes_last: float | None = None
    qualify_rtt_ms: float | None = None
    qualify_jitter_ms: float | None = None
    last_sample_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class QualityWindow:
    """The samples of one endpoint within ``window_ms``, bounded to ``max_samples``.

    Keeps running sums of the RTCP jitter and loss so the alerter's per-sample check is O(1);
    the full :meth:`summary` (p95, RTT trend) is computed only when asked for.
    """

    def __init__(self, endpoint: str, window_ms: int, max_samples: int = 2000) -> None:
        self.endpoint = endpoint
        self.window_ms = window_ms
        self.max_samples = max_samples
        self._rtcp: deque[tuple[int, QualitySample]] = deque()
        self._qualify: deque[tuple[int, QualitySample]] = deque(maxlen=max_samples)
        self._jitter_sum = 0.0
        self._jitter_n = 0
        self._loss_sum = 0.0
        self._loss_n = 0

    def add(self, t_ms: int, sample: QualitySample) -> None:
        if sample.kind is QualityKind.QUALIFY:
            self._qualify.append((t_ms, sample))
            return
        # Samples of one endpoint arrive in partition order; a late one still belongs in the window.
        self._rtcp.append((t_ms, sample))
        self._count(sample, +1)
        if len(self._rtcp) > self.max_samples:
            self._count(self._rtcp.popleft()[1], -1)

    def _count(self, s: QualitySample, sign: int) -> None:
        if s.jitter_ms is not None:
            self._jitter_sum += sign * s.jitter_ms
            self._jitter_n += sign
        if s.fraction_lost is not None:
            self._loss_sum += sign * s.fraction_lost
            self._loss_n += sign

    def evict(self, now_ms: int) -> None:
        cutoff = now_ms - self.window_ms
        rtcp = self._rtcp
        while rtcp and rtcp[0][0] < cutoff:
            self._count(rtcp.popleft()[1], -1)
        if not rtcp:  # no drift left behind by float sums
            self._jitter_sum = self._loss_sum = 0.0
            self._jitter_n = self._loss_n = 0
        while self._qualify and self._qualify[0][0] < cutoff:
            self._qualify.popleft()

    def empty(self) -> bool:
        return not self._rtcp and not self._qualify

    def rtcp_samples(self) -> int:
        return len(self._rtcp)

    def jitter_mean(self) -> float | None:
        return self._jitter_sum / self._jitter_n if self._jitter_n else None

    def loss_mean(self) -> float | None:
        return self._loss_sum / self._loss_n if self._loss_n else None

    def points(self, now_ms: int, limit: int = 120) -> list[dict[str, float | int | None]]:
        """The RTCP samples of the window for a chart: time, jitter, loss, RTT (newest last)."""
        self.evict(now_ms)
        return [
            {"t": t, "jitter_ms": s.jitter_ms, "loss": s.fraction_lost, "rtt_ms": s.rtt_ms}
            for t, s in list(self._rtcp)[-limit:]
        ]

    def summary(self, now_ms: int) -> QualitySummary:
        self.evict(now_ms)
        rtcp = [s for _, s in self._rtcp]
        jitter = [s.jitter_ms for s in rtcp if s.jitter_ms is not None]
        loss = [s.fraction_lost for s in rtcp if s.fraction_lost is not None]
        rtt = [(t, s.rtt_ms) for t, s in self._rtcp if s.rtt_ms is not None]
        qual = [s for _, s in self._qualify]
        last_times = [dq[-1][0] for dq in (self._rtcp, self._qualify) if dq]
        return QualitySummary(
            endpoint=self.endpoint,
            window_ms=self.window_ms,
            samples=len(rtcp),
            node=rtcp[-1].node if rtcp else (qual[-1].node if qual else None),
            jitter_last_ms=jitter[-1] if jitter else None,
            jitter_mean_ms=statistics.fmean(jitter) if jitter else None,
            jitter_p95_ms=p95(jitter) if jitter else None,
            loss_last=loss[-1] if loss else None,
            loss_mean=statistics.fmean(loss) if loss else None,
            loss_p95=p95(loss) if loss else None,
            rtt_last_ms=rtt[-1][1] if rtt else None,
            rtt_mean_ms=statistics.fmean(v for _, v in rtt) if rtt else None,
            rtt_trend_ms_per_min=_trend(rtt),
            mes_last=next((s.mes for s in reversed(rtcp) if s.mes is not None), None),
            qualify_rtt_ms=qual[-1].rtt_ms if qual else None,
            qualify_jitter_ms=qual[-1].jitter_ms if qual else None,
            last_sample_ms=max(last_times) if last_times else None,
        )


def _trend(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of RTT over time in ms per minute; None below 3 points or one instant."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return None
    slope, _ = statistics.linear_regression([t / 60_000 for t, _ in points], [v for _, v in points])
    return slope
