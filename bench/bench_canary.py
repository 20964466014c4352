"""Canary analysis: how often the CTR check is right, and how fast a bad canary is rolled back.

1. **Detection in simulation** (seeded, no processes): the dev plan's decision procedure
   (`pipelines.rollout.analysis.ctr_check` at every interval on cumulative counts; rollback at
   the failure threshold, promotion at the first passing analysis) on binomial clicks, the
   canary's CTR either 20 % lower than stable's or equal, at stable CTRs of 13 %, 15 % and
   10 % (`pipelines.traffic`'s users give ~11-15 % at k=10). Prints the share of trials in
   which the drop was caught (target >= 90 %) and in which a healthy canary was rolled back
   (target <= 5 %), at the default sample size (``min-impressions`` per arm).
2. **Time to rollback on a real stack** (dev's settings: `rollout auto` with only the CTR check
   off, as this load posts no feedback): a canary started with 5 % injected 5xx
   (``--fault-error-rate``) under steady traffic; seconds from its first answer to its last
   (the rollback), and the requests failed meanwhile (on which arm).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contracts.inferenceservice import CANARY_PLAN_DEFAULTS
from pipelines.rollout.analysis import Arm, CheckStatus, ctr_check
from pipelines.rollout.auto import Plan
from tests.support.stack import (
    REPO_ROOT,
    PredictLoad,
    local_stack,
    serve_only,
    train_two_versions,
)

STABLE_CTRS = (0.13, 0.15, 0.10)  # pipelines.traffic at k=10: ~11-15 %; lower is harder
DROP = 0.20
TRIALS = 2000
# per arm and interval: fine enough that the first judgement falls near the minimum (a coarser
# interval only adds exposure beyond it, so this is the harder case)
IMPRESSIONS_PER_INTERVAL = 500
MAX_INTERVALS = 200


def simulate(stable_ctr: float, canary_ctr: float, plan: Plan, rng: np.random.Generator) -> bool:
    """One rollout of the CTR check alone: True when it rolled the canary back."""
    t = plan.thresholds
    canary, stable = Arm("2"), Arm("1")
    failures = 0
    for _ in range(MAX_INTERVALS):
        for arm, rate in ((canary, canary_ctr), (stable, stable_ctr)):
            arm.impressions += IMPRESSIONS_PER_INTERVAL
            arm.clicks += int(rng.binomial(IMPRESSIONS_PER_INTERVAL, rate))
        check, _ = ctr_check(canary, stable, t)
        if check.status is CheckStatus.FAIL:
            failures += 1
            if failures >= plan.failure_threshold:
                return True
        elif check.status is CheckStatus.PASS:
            return False
    return True  # never enough samples: the deadline rolls back


def detection_rates(plan: Plan, stable_ctr: float, seed: int = 12) -> tuple[float, float]:
    """(share of 20 %-worse canaries rolled back, share of healthy canaries rolled back)."""
    rng = np.random.default_rng(seed)
    caught = sum(simulate(stable_ctr, stable_ctr * (1 - DROP), plan, rng) for _ in range(TRIALS))
    wrong = sum(simulate(stable_ctr, stable_ctr, plan, rng) for _ in range(TRIALS))
    return caught / TRIALS, wrong / TRIALS


def time_to_rollback() -> tuple[float, int, int, int]:
    """(seconds the faulty canary took traffic, requests sent, failed, failed on stable)."""
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp)) as stack:
        versions = train_two_versions(stack)
        stable, bad = versions["first"], versions["second"]
        serve_only(stack, stable)
        with PredictLoad(stack.predict_url) as load:
            proc = subprocess.run(
                [sys.executable, "-m", "pipelines.rollout", "auto", "--version", bad,
                 "--fault-error-rate", "0.05", "--min-impressions", "0"],
                cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            time.sleep(1)
        if proc.returncode != 10:
            raise RuntimeError(f"auto exited {proc.returncode}: {proc.stderr[-2000:]}")
        on_canary = [t for t, version, _ in load.answers if version == bad]
        took = max(on_canary) - min(on_canary)  # first to last answer of the faulty canary
        failed = [(v, code) for _, v, code in load.answers if code != 200]
        return took, len(load.answers), len(failed), sum(1 for v, _ in failed if v == stable)


def run() -> None:
    plan = Plan.of(None, {})
    print(
        f"CTR check, dev plan (min impressions {plan.thresholds.min_impressions} per arm, "
        f"one-sided alpha {plan.thresholds.ctr_alpha}, rollback after "
        f"{plan.failure_threshold} failed analyses, {IMPRESSIONS_PER_INTERVAL} impressions per "
        f"arm an interval), {TRIALS} seeded trials each:"
    )
    for stable_ctr in STABLE_CTRS:
        caught, wrong = detection_rates(plan, stable_ctr)
        print(
            f"stable CTR {stable_ctr:.0%}: canary 20% lower caught in {caught:.1%} of trials "
            f"(target >= 90%); healthy canary wrongly rolled back in {wrong:.1%} (target <= 5%)"
        )
    took, sent, failed, on_stable = time_to_rollback()
    print(
        f"fault (5% 5xx on a 50% canary) to rollback at dev's settings (interval "
        f"{CANARY_PLAN_DEFAULTS['interval-seconds']} s, threshold "
        f"{CANARY_PLAN_DEFAULTS['failure-threshold']}): {took:.1f} s of faulty canary traffic"
    )
    print(
        f"requests meanwhile: {sent} sent, {failed} failed ({failed / max(sent, 1):.2%}), "
        f"{on_stable} of them on the stable arm"
    )
