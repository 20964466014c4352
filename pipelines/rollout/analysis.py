"""Canary analysis: canary vs stable, measured by Prometheus, judged by thresholds.

Every figure is a PromQL query through Prometheus's HTTP API (``PROMETHEUS_URL``), the same on
one machine (the local Prometheus) and in a cluster (the monitoring component's):

============== =================================================================================
figure         source (per ``model_version``, over the window)
============== =================================================================================
requests       ``increase(movie_recommender_responses_total[w])`` (the predictor, every status)
error rate     the ``code="5xx"`` share of them
p50/p95/p99    ``histogram_quantile`` of ``movie_recommender_request_seconds_bucket``
fallback share ``movie_recommender_fallbacks_total`` / ``movie_recommender_predictions_total``
impressions,   ``movie_mlops_feedback_total{event="impression"|"click"}`` (the event sink); CTR
clicks, CTR    = clicks / impressions, with a two-proportion z-test of canary vs stable
============== =================================================================================

The checks (`evaluate`) and what each needs before it can judge:

- ``requests``: the canary served at least ``min_requests`` in the window (else *insufficient*);
- ``error-rate``: the canary's 5xx share at most ``max_error_rate``;
- ``latency-p99``: the canary's p99 at most ``max_p99_seconds``;
- ``ctr``: once both arms have ``min_impressions`` impressions, the canary fails when it is
  worse than stable at one-sided significance ``ctr_alpha`` (`two_proportion_test`);
  ``min_impressions 0`` skips it (a stack without the event sink). The sample size is
  exposure, not outcomes: a canary whose CTR collapsed collects few clicks, and a minimum of
  clicks would keep exactly that canary from ever being judged.

An analysis *fails* when a check with enough samples fails, *waits* when a check lacks samples,
and *passes* when every check passes (or is skipped). `pipelines.rollout.auto` acts on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import requests

from contracts.monitoring import (
    FALLBACKS,
    FEEDBACK,
    PREDICTIONS,
    REQUEST_SECONDS,
    RESPONSES,
)
from pipelines.errors import RolloutError

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


class MetricsUnavailableError(RolloutError):
    """Prometheus could not be asked (unreachable, or it refused a query): nothing was judged."""


# -- statistics ---------------------------------------------------------------------------------


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _normal_ppf(p: float) -> float:
    """The standard normal quantile (bisection on erf: exact enough, standard library only)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _normal_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class ProportionTest:
    """Canary vs stable click-through: the difference, its interval, the one-sided p-value."""

    canary_rate: float
    stable_rate: float
    difference: float  # canary - stable
    low: float  # the two-sided (1 - 2 alpha) interval of the difference (unpooled)
    high: float
    z: float  # pooled z statistic; negative: the canary is worse
    p_worse: float  # one-sided p-value of "the canary's CTR is lower"

    @property
    def relative(self) -> float:
        """The difference relative to stable (-0.2: 20 % lower)."""
        return self.difference / self.stable_rate if self.stable_rate else 0.0


def two_proportion_test(
    clicks_canary: float,
    impressions_canary: float,
    clicks_stable: float,
    impressions_stable: float,
    alpha: float = 0.05,
) -> ProportionTest:
    """The two-proportion z-test of canary vs stable CTR.

    z uses the pooled rate (the null: equal CTR); the interval of the difference uses each
    arm's own rate (Wald), at two-sided level 1 - 2 alpha, i.e. its upper end is the one-sided
    1 - alpha bound: the canary is judged worse exactly when ``high < 0`` (up to the pooling).
    Raises ValueError without impressions on either arm.
    """
    if impressions_canary <= 0 or impressions_stable <= 0:
        raise ValueError("a two-proportion test needs impressions on both arms")
    p1, p2 = clicks_canary / impressions_canary, clicks_stable / impressions_stable
    pooled = (clicks_canary + clicks_stable) / (impressions_canary + impressions_stable)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / impressions_canary + 1 / impressions_stable))
    diff = p1 - p2
    z = diff / se_pooled if se_pooled > 0 else 0.0
    se = math.sqrt(p1 * (1 - p1) / impressions_canary + p2 * (1 - p2) / impressions_stable)
    half = _normal_ppf(1 - alpha) * se
    return ProportionTest(p1, p2, diff, diff - half, diff + half, z, _normal_cdf(z))


# -- thresholds and checks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """What a canary must show at every step (defaults: the dev overlay's)."""

    max_error_rate: float = 0.01
    max_p99_seconds: float = 0.5
    min_requests: int = 50
    min_impressions: int = 4000
    ctr_alpha: float = 0.05


class CheckStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INSUFFICIENT = "insufficient"  # too few samples to judge
    SKIPPED = "skipped"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str


@dataclass
class Arm:
    """One version's figures over the window (None: no data)."""

    version: str
    requests: float = 0.0
    errors: float = 0.0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    predictions: float = 0.0
    fallbacks: float = 0.0
    impressions: float = 0.0
    clicks: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def fallback_share(self) -> float | None:
        return self.fallbacks / self.predictions if self.predictions > 0 else None

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions > 0 else None


@dataclass
class Analysis:
    canary: Arm
    stable: Arm
    window_seconds: float
    ctr_window_seconds: float
    thresholds: Thresholds
    checks: list[Check] = field(default_factory=list)
    ctr_test: ProportionTest | None = None

    @property
    def verdict(self) -> Verdict:
        statuses = {c.status for c in self.checks}
        if CheckStatus.FAIL in statuses:
            return Verdict.FAIL
        if CheckStatus.INSUFFICIENT in statuses:
            return Verdict.WAIT
        return Verdict.PASS

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status is CheckStatus.FAIL]

    def to_json(self) -> dict[str, Any]:
        def arm(a: Arm) -> dict[str, Any]:
            return {
                **asdict(a),
                "error_rate": a.error_rate,
                "fallback_share": a.fallback_share,
                "ctr": a.ctr,
            }

        return {
            "verdict": self.verdict.value,
            "window_seconds": round(self.window_seconds, 1),
            "ctr_window_seconds": round(self.ctr_window_seconds, 1),
            "canary": arm(self.canary),
            "stable": arm(self.stable),
            "ctr_test": None if self.ctr_test is None else asdict(self.ctr_test),
            "thresholds": asdict(self.thresholds),
            "checks": [asdict(c) | {"status": c.status.value} for c in self.checks],
        }


def ctr_check(canary: Arm, stable: Arm, t: Thresholds) -> tuple[Check, ProportionTest | None]:
    """The CTR check alone (also what `bench` simulates)."""
    if t.min_impressions <= 0:
        return Check("ctr", CheckStatus.SKIPPED, "min impressions 0: not judged"), None
    fewest = min(canary.impressions, stable.impressions)
    if fewest < t.min_impressions or fewest <= 0:
        return (
            Check(
                "ctr",
                CheckStatus.INSUFFICIENT,
                f"impressions canary {canary.impressions:.0f}, stable {stable.impressions:.0f}; "
                f"need {t.min_impressions} each",
            ),
            None,
        )
    test = two_proportion_test(
        canary.clicks, canary.impressions, stable.clicks, stable.impressions, t.ctr_alpha
    )
    detail = (
        f"CTR {test.canary_rate:.4f} vs {test.stable_rate:.4f} ({test.relative:+.1%}), "
        f"difference {1 - 2 * t.ctr_alpha:.0%} CI [{test.low:+.4f}, {test.high:+.4f}], "
        f"p(worse) {test.p_worse:.4f} (fail below {t.ctr_alpha})"
    )
    worse = test.p_worse < t.ctr_alpha
    return Check("ctr", CheckStatus.FAIL if worse else CheckStatus.PASS, detail), test


def evaluate(analysis: Analysis) -> Analysis:
    """Fill in the checks of an analysis from its figures and thresholds."""
    c, t = analysis.canary, analysis.thresholds
    checks: list[Check] = []
    enough = c.requests >= t.min_requests
    checks.append(
        Check(
            "requests",
            CheckStatus.PASS if enough else CheckStatus.INSUFFICIENT,
            f"{c.requests:.0f} canary requests in {analysis.window_seconds:.0f} s "
            f"(need {t.min_requests})",
        )
    )
    rate = c.error_rate
    if not enough or rate is None:
        checks.append(Check("error-rate", CheckStatus.INSUFFICIENT, "too few requests"))
    else:
        bad = rate > t.max_error_rate
        checks.append(
            Check(
                "error-rate",
                CheckStatus.FAIL if bad else CheckStatus.PASS,
                f"5xx {rate:.2%} ({c.errors:.0f}/{c.requests:.0f}), max {t.max_error_rate:.2%}",
            )
        )
    if not enough or c.p99 is None or math.isnan(c.p99):
        checks.append(Check("latency-p99", CheckStatus.INSUFFICIENT, "too few requests"))
    else:
        bad = c.p99 > t.max_p99_seconds
        checks.append(
            Check(
                "latency-p99",
                CheckStatus.FAIL if bad else CheckStatus.PASS,
                f"p99 {c.p99 * 1000:.0f} ms, max {t.max_p99_seconds * 1000:.0f} ms",
            )
        )
    check, test = ctr_check(c, analysis.stable, t)
    checks.append(check)
    analysis.checks, analysis.ctr_test = checks, test
    return analysis


# -- Prometheus ---------------------------------------------------------------------------------


class Prometheus:
    """Instant queries through ``/api/v1/query``; a vector result as {label value: number}."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def query(self, promql: str, by: str = "model_version") -> dict[str, float]:
        try:
            response = self._session.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout
            )
        except requests.RequestException as err:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} cannot be reached ({type(err).__name__}); start the "
                "local stack (`make up`, with `make prometheus` as root) or set PROMETHEUS_URL"
            ) from err
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} refused {promql!r}: HTTP {response.status_code} "
                f"{body.get('error', response.text[:200])}"
            )
        out: dict[str, float] = {}
        for item in body["data"]["result"]:
            value = float(item["value"][1])
            out[item["metric"].get(by, "")] = value
        return out

    def ready(self) -> bool:
        try:
            return self._session.get(f"{self.url}/-/ready", timeout=self.timeout).ok
        except requests.RequestException:
            return False


def _range(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def queries(versions: tuple[str, ...], window: float, ctr_window: float) -> dict[str, str]:
    """figure -> PromQL, each answering one number per ``model_version``."""
    sel = "|".join(versions)
    w, cw = _range(window), _range(ctr_window)
    by = "sum by (model_version)"
    promql = {
        "requests": f'{by} (increase({RESPONSES}{{model_version=~"{sel}"}}[{w}]))',
        "errors": f'{by} (increase({RESPONSES}{{model_version=~"{sel}",code="5xx"}}[{w}]))',
        "predictions": f'{by} (increase({PREDICTIONS}{{model_version=~"{sel}"}}[{w}]))',
        "fallbacks": f'{by} (increase({FALLBACKS}{{model_version=~"{sel}"}}[{w}]))',
        "impressions": (
            f'{by} (increase({FEEDBACK}{{event="impression",model_version=~"{sel}"}}[{cw}]))'
        ),
        "clicks": f'{by} (increase({FEEDBACK}{{event="click",model_version=~"{sel}"}}[{cw}]))',
    }
    for name, q in QUANTILES.items():
        promql[name] = (
            f"histogram_quantile({q}, sum by (model_version, le) "
            f'(increase({REQUEST_SECONDS}_bucket{{model_version=~"{sel}"}}[{w}])))'
        )
    return promql


def measure(
    prometheus: Prometheus,
    canary: str,
    stable: str,
    window: float,
    ctr_window: float | None = None,
    thresholds: Thresholds | None = None,
) -> Analysis:
    """Ask Prometheus for both arms' figures and judge them."""
    ctr_window = window if ctr_window is None else ctr_window
    arms = {canary: Arm(canary), stable: Arm(stable)}
    for figure, promql in queries((canary, stable), window, ctr_window).items():
        for version, value in prometheus.query(promql).items():
            if version in arms and not math.isnan(value):
                setattr(arms[version], figure, value)
    return evaluate(
        Analysis(
            canary=arms[canary],
            stable=arms[stable],
            window_seconds=window,
            ctr_window_seconds=ctr_window,
            thresholds=thresholds or Thresholds(),
        )
    )


# -- the table ----------------------------------------------------------------------------------


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "ms":
        return f"{value * 1000:.1f} ms"
    if kind == "%":
        return f"{value:.2%}"
    if kind == "ctr":
        return f"{value:.4f}"
    return f"{value:.0f}"


def table(analysis: Analysis) -> str:
    """Canary vs stable, then the checks, as the CLI prints them."""
    c, s = analysis.canary, analysis.stable
    rows = [
        ("requests", c.requests, s.requests, "n"),
        ("5xx error rate", c.error_rate, s.error_rate, "%"),
        ("latency p50", c.p50, s.p50, "ms"),
        ("latency p95", c.p95, s.p95, "ms"),
        ("latency p99", c.p99, s.p99, "ms"),
        ("fallback share", c.fallback_share, s.fallback_share, "%"),
        ("impressions", c.impressions, s.impressions, "n"),
        ("clicks", c.clicks, s.clicks, "n"),
        ("CTR", c.ctr, s.ctr, "ctr"),
    ]
    head = f"  {'':<16} {'canary v' + c.version:>14} {'stable v' + s.version:>14}"
    lines = [
        f"  window {analysis.window_seconds:.0f} s (CTR: {analysis.ctr_window_seconds:.0f} s)",
        head,
    ]
    lines += [f"  {n:<16} {_fmt(a, k):>14} {_fmt(b, k):>14}" for n, a, b, k in rows]
    lines.append(f"  verdict: {analysis.verdict.value}")
    lines += [f"    {ch.status.value:<12} {ch.name:<12} {ch.detail}" for ch in analysis.checks]
    return "\n".join(lines)


def wait_until(deadline: float, step: float = 0.5) -> None:
    """Sleep until ``deadline`` (``time.monotonic``), in short naps."""
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step, left))
