"""The canary analysis's arithmetic: the two-proportion test, minimum samples, checks, the plan.

Numbers are checked against values computed by hand (and scipy-free formulas): these are the
figures a rollback is decided on.
"""

from __future__ import annotations

import json
import math

import pytest

from contracts.inferenceservice import CANARY_PLAN_DEFAULTS
from pipelines.errors import ConfigError
from pipelines.rollout.analysis import (
    Analysis,
    Arm,
    CheckStatus,
    Thresholds,
    Verdict,
    _normal_ppf,
    ctr_check,
    evaluate,
    queries,
    two_proportion_test,
)
from pipelines.rollout.auto import Plan


def test_two_proportion_test_matches_hand_computed_values() -> None:
    # canary 80 clicks / 1000, stable 100 / 1000: pooled p = 0.09
    t = two_proportion_test(80, 1000, 100, 1000, alpha=0.05)
    se_pooled = math.sqrt(0.09 * 0.91 * (2 / 1000))
    assert t.z == pytest.approx(-0.02 / se_pooled)  # -1.5627
    assert t.z == pytest.approx(-1.5627, abs=1e-4)
    assert t.p_worse == pytest.approx(0.0591, abs=1e-4)  # Phi(-1.5627)
    se = math.sqrt(0.08 * 0.92 / 1000 + 0.1 * 0.9 / 1000)
    assert t.high == pytest.approx(-0.02 + 1.6449 * se, abs=1e-5)
    assert t.low == pytest.approx(-0.02 - 1.6449 * se, abs=1e-5)
    assert t.relative == pytest.approx(-0.2)


def test_the_normal_quantile_is_exact_enough() -> None:
    assert _normal_ppf(0.95) == pytest.approx(1.644854, abs=1e-6)
    assert _normal_ppf(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert _normal_ppf(0.5) == pytest.approx(0.0, abs=1e-9)


def test_a_twenty_percent_drop_at_the_minimum_exposure_fails_and_equal_rates_pass() -> None:
    t = Thresholds(min_impressions=4000)
    worse = ctr_check(
        Arm("2", impressions=4000, clicks=416), Arm("1", impressions=4000, clicks=520), t
    )
    assert worse[0].status is CheckStatus.FAIL, worse[0].detail
    assert "-20.0%" in worse[0].detail
    same = ctr_check(
        Arm("2", impressions=4000, clicks=525), Arm("1", impressions=4000, clicks=520), t
    )
    assert same[0].status is CheckStatus.PASS, same[0].detail


def test_ctr_waits_for_min_impressions_on_both_arms_and_is_skipped_at_zero() -> None:
    t = Thresholds(min_impressions=4000)
    few = ctr_check(
        Arm("2", impressions=3999, clicks=10), Arm("1", impressions=9000, clicks=1200), t
    )
    assert few[0].status is CheckStatus.INSUFFICIENT  # a huge drop, but not enough exposure yet
    assert few[1] is None and "need 4000 each" in few[0].detail
    off = ctr_check(Arm("2"), Arm("1"), Thresholds(min_impressions=0))
    assert off[0].status is CheckStatus.SKIPPED


def test_a_canary_that_earns_almost_no_clicks_is_judged_on_exposure() -> None:
    # 2 % vs 13 % CTR: 80 clicks where a click minimum (500) would wait for ever
    t = Thresholds(min_impressions=4000)
    check, test = ctr_check(
        Arm("2", impressions=4000, clicks=80), Arm("1", impressions=4000, clicks=520), t
    )
    assert check.status is CheckStatus.FAIL, check.detail
    assert test is not None and test.p_worse < 1e-9


def _analysis(canary: Arm, **thresholds: float) -> Analysis:
    return evaluate(Analysis(canary, Arm("1"), 10, 10, Thresholds(min_impressions=0, **thresholds)))


def test_checks_need_min_requests_then_judge_errors_and_p99() -> None:
    waiting = _analysis(Arm("2", requests=49, errors=49, p99=9.0), min_requests=50)
    assert waiting.verdict is Verdict.WAIT  # never fail (or pass) on too few samples
    bad = _analysis(Arm("2", requests=200, errors=10, p99=0.05), min_requests=50)
    assert bad.verdict is Verdict.FAIL
    assert [c.name for c in bad.failed] == ["error-rate"]
    assert "5.00%" in bad.failed[0].detail
    slow = _analysis(Arm("2", requests=200, errors=0, p99=0.8), max_p99_seconds=0.5)
    assert [c.name for c in slow.failed] == ["latency-p99"]
    good = _analysis(Arm("2", requests=200, errors=2, p99=0.1), max_error_rate=0.01)
    assert good.verdict is Verdict.PASS, good.checks


def test_queries_select_both_versions_and_the_5xx_class() -> None:
    q = queries(("7", "6"), 30, 120)
    assert q["errors"] == (
        "sum by (model_version) (increase(movie_recommender_responses_total"
        '{model_version=~"7|6",code="5xx"}[30s]))'
    )
    assert "histogram_quantile(0.99" in q["p99"] and "_bucket" in q["p99"]
    assert 'movie_mlops_feedback_total{event="click",model_version=~"7|6"}[120s]' in q["clicks"]


def test_the_plan_comes_from_annotations_with_flags_on_top(caplog) -> None:
    isvc = {
        "metadata": {
            "annotations": {
                "movie-mlops.io/canary-steps": "5,10,25,50,100",
                "movie-mlops.io/canary-interval-seconds": "300",
                "movie-mlops.io/canary-step-percent": "5",  # not part of the plan
                "movie-mlops.io/canary-min-clicks": "50",  # the old name: not read, said so
            }
        }
    }
    plan = Plan.of(isvc, {"interval-seconds": "2", "max-p99-ms": "250"})
    assert plan.steps == (5, 10, 25, 50, 100)
    assert plan.interval == 2
    assert plan.thresholds.max_p99_seconds == 0.25
    assert plan.failure_threshold == int(CANARY_PLAN_DEFAULTS["failure-threshold"])
    assert plan.thresholds.min_impressions == int(CANARY_PLAN_DEFAULTS["min-impressions"])
    assert "canary-min-clicks is not a rollout setting" in caplog.text
    assert "step-percent" not in caplog.text
    assert Plan.of(None, {}).steps == (50, 100)  # the local stack: dev's plan


@pytest.mark.parametrize("steps", ["50", "50,40,100", "0,100", "a,100", "50,150"])
def test_a_bad_plan_is_a_usage_error(steps: str) -> None:
    with pytest.raises(ConfigError, match="canary-steps"):
        Plan.parse({"steps": steps})


def test_the_local_prometheus_scrapes_revisions_ingress_and_sink(tmp_path) -> None:
    from contracts.layout import StackLayout
    from localstack import prometheus

    layout = StackLayout(tmp_path)
    path = prometheus.prepare(layout, "127.0.0.1:8080", "http://127.0.0.1:8070")
    config = json.loads(path.read_text())  # JSON is YAML: what Prometheus reads
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    revisions = jobs["model-server"]
    assert revisions["honor_labels"] is True  # the series' own model_version wins
    (sd,) = revisions["file_sd_configs"]
    assert sd["files"] == [str(layout.revision_targets.resolve())]
    assert json.loads(layout.revision_targets.read_text()) == []  # exists before any revision
    assert jobs["ingress"]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert jobs["ingress"]["metrics_path"] == "/__local/metrics"
    assert jobs["event-sink"]["metrics_path"] == "/metrics"
    assert jobs["event-sink"]["static_configs"] == [{"targets": ["127.0.0.1:8070"]}]
    assert config["global"]["scrape_interval"] == "2s"
