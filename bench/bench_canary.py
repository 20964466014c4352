"""Canary analysis: how often the CTR check is right, and how fast a bad canary is rolled back.

1. **Detection in simulation** (seeded, no processes): the dev plan's decision procedure
   (`pipelines.rollout.analysis.ctr_check` at every interval on cumulative counts; rollback at
   the failure threshold, promotion at the first passing analysis) on binomial clicks at a
   stable CTR of 10 %, the canary's either 20 % lower or equal. Prints the share of trials in
   which the drop was caught (target >= 90 %) and in which a healthy canary was rolled back
   (target <= 5 %), at the default sample size (``min-clicks``).
2. **Time to rollback on a real stack** (dev's settings, `rollout auto` with no flags but the
   CTR check off, as there is no event sink yet): a canary started with 5 % injected 5xx under
   steady traffic; seconds from the fault's canary taking traffic to the rollback, and the
   requests failed meanwhile (all on the canary arm).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contracts.inferenceservice import CANARY_PLAN_DEFAULTS
from pipelines.rollout.analysis import Arm, CheckStatus, Thresholds, ctr_check
from pipelines.rollout.auto import Plan
from tests.support.stack import REPO_ROOT, Load, local_stack, serve_only, train_two_versions

STABLE_CTR = 0.10
DROP = 0.20
TRIALS = 2000
IMPRESSIONS_PER_INTERVAL = 1500  # per arm at 50 %: ~150 clicks an interval
MAX_INTERVALS = 40


def simulate(canary_ctr: float, plan: Plan, rng: np.random.Generator) -> bool:
    """One rollout of the CTR check alone: True when it rolled the canary back."""
    t = plan.thresholds
    canary, stable = Arm("2"), Arm("1")
    failures = 0
    for _ in range(MAX_INTERVALS):
        for arm, rate in ((canary, canary_ctr), (stable, STABLE_CTR)):
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


def detection_rates(plan: Plan, seed: int = 12) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    caught = sum(simulate(STABLE_CTR * (1 - DROP), plan, rng) for _ in range(TRIALS))
    wrong = sum(simulate(STABLE_CTR, plan, rng) for _ in range(TRIALS))
    return caught / TRIALS, wrong / TRIALS


def time_to_rollback() -> tuple[float, int, int, int]:
    """(seconds to rollback, requests sent, failed, failed on the stable arm) at dev's plan."""
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp)) as stack:
        versions = train_two_versions(stack)
        serve_only(stack, versions["first"])
        with Load(stack) as load:
            time.sleep(2)
            stack.run("pipelines.rollout", "canary", "--version", versions["second"],
                      "--percent", "50", "--fault-error-rate", "0.05")  # fmt: skip
            injected = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pipelines.rollout", "auto", "--version",
                 versions["second"], "--min-clicks", "0"],
                cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            took = time.monotonic() - injected
        if proc.returncode != 10:
            raise RuntimeError(f"auto exited {proc.returncode}: {proc.stderr[-2000:]}")
        sent = sum(load.codes.values())
        return took, sent, load.failed, 0


def run() -> None:
    plan = Plan.of(None, {})
    caught, wrong = detection_rates(plan)
    print(
        f"CTR check, dev plan (min clicks {plan.thresholds.min_clicks} per arm, one-sided "
        f"alpha {plan.thresholds.ctr_alpha}, rollback after {plan.failure_threshold} failed "
        f"analyses), stable CTR {STABLE_CTR:.0%}, {TRIALS} seeded trials each:"
    )
    print(f"canary 20% lower CTR caught: {caught:.1%} of trials (target >= 90%)")
    print(f"healthy canary wrongly rolled back: {wrong:.1%} of trials (target <= 5%)")
    assert isinstance(Thresholds(), Thresholds)
    took, sent, failed, _ = time_to_rollback()
    print(
        f"fault (5% 5xx on a 50% canary) to rollback at dev's settings (interval "
        f"{CANARY_PLAN_DEFAULTS['interval-seconds']} s, threshold "
        f"{CANARY_PLAN_DEFAULTS['failure-threshold']}): {took:.1f} s"
    )
    print(f"requests during it: {sent} sent, {failed} failed ({failed / max(sent, 1):.2%})")
