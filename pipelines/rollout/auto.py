"""``rollout auto --version N``: a progressive rollout judged by measurement, step by step.

The plan comes from the InferenceService's annotations (``movie-mlops.io/canary-*``, set per
overlay: dev ``50,100`` fast, staging ``10,50,100``, prod ``5,10,25,50,100`` slow; the local
stack uses dev's), each value overridable by a flag. Then, as Flagger's canary analysis does:

1. refuse a version whose quality gate failed (unless ``--force``; `steps.canary`'s check) and
   a stack whose Prometheus cannot be asked — nothing is changed then;
2. at each step: `steps.canary` to that percent (the last step, 100, is `steps.promote`), wait
   the interval, analyse canary vs the ``champion`` (`analysis.measure`) over the time since
   the step began (CTR: since the rollout began);
3. every check passes: next step. A check fails: one more failure; at ``failure-threshold``
   failures `steps.rollback` (``canaryTrafficPercent: 0``: the stable revision takes all
   traffic at once) and exit 10 naming the check. Too few samples: wait another interval, up
   to the step's deadline, then roll back (never promote blind);
4. the decision and its evidence (the last analysis, thresholds, step, history) are written to
   the model version as ``rollout.*`` tags, so the registry shows why it was promoted or not.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from contracts.credentials import ROLLOUT
from contracts.inferenceservice import (
    CANARY_ANNOTATION_PREFIX,
    CANARY_PLAN_DEFAULTS,
    STEP_ANNOTATION,
)
from contracts.names import CHAMPION
from pipelines import registry
from pipelines.errors import ConfigError, PipelineError, RolloutError
from pipelines.rollout import document
from pipelines.rollout.analysis import (
    Analysis,
    MetricsUnavailableError,
    Prometheus,
    Thresholds,
    Verdict,
    measure,
    table,
    wait_until,
)
from pipelines.rollout.backends import Backend
from pipelines.rollout.steps import (
    RolloutSettings,
    canary,
    check_servable,
    parse_version,
    promote,
    rollback,
)

log = logging.getLogger(__name__)

DECISION_TAG = "rollout.decision"  # promoted | rolled_back
PROMOTED, ROLLED_BACK = "promoted", "rolled_back"
STEP_KEY = STEP_ANNOTATION.removeprefix(CANARY_ANNOTATION_PREFIX)  # `canary`'s, not the plan's


class CanaryRolledBackError(RolloutError):
    """The analysis rolled the canary back (a check failed, or too few samples by the deadline)."""


@dataclass(frozen=True)
class Plan:
    """Steps, timing and thresholds of one automated rollout."""

    steps: tuple[int, ...] = (50, 100)
    interval: float = 30.0
    failure_threshold: int = 2
    deadline: float = 600.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def parse(cls, values: dict[str, str]) -> Plan:
        """A plan from annotation values (suffix -> text); ConfigError names a bad one."""

        def num(key: str, kind: type = float) -> Any:
            text = values.get(key, CANARY_PLAN_DEFAULTS[key])
            try:
                value = kind(text)
            except ValueError:
                raise ConfigError(
                    f"{CANARY_ANNOTATION_PREFIX}{key}={text!r} is not a number"
                ) from None
            if value < 0:
                raise ConfigError(f"{CANARY_ANNOTATION_PREFIX}{key}={text!r} is negative")
            return value

        text = values.get("steps", CANARY_PLAN_DEFAULTS["steps"])
        try:
            steps = tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"{CANARY_ANNOTATION_PREFIX}steps={text!r}: not percents") from None
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps):
            raise ConfigError(
                f"{CANARY_ANNOTATION_PREFIX}steps={text!r}: percents in 1..100 ending with 100"
            )
        if list(steps) != sorted(set(steps)):
            raise ConfigError(f"{CANARY_ANNOTATION_PREFIX}steps={text!r}: must increase")
        plan = cls(
            steps=steps,
            interval=num("interval-seconds"),
            failure_threshold=max(1, num("failure-threshold", int)),
            deadline=num("deadline-seconds"),
            thresholds=Thresholds(
                max_error_rate=num("max-error-rate"),
                max_p99_seconds=num("max-p99-ms") / 1000.0,
                min_requests=num("min-requests", int),
                min_impressions=num("min-impressions", int),
                ctr_alpha=num("ctr-alpha"),
            ),
        )
        if plan.interval <= 0:
            raise ConfigError(f"{CANARY_ANNOTATION_PREFIX}interval-seconds must be positive")
        return plan

    @classmethod
    def of(cls, isvc: dict[str, Any] | None, overrides: dict[str, str]) -> Plan:
        """The overlay's plan (annotations), with ``overrides`` (flags) on top."""
        annotations = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
        values = {
            key.removeprefix(CANARY_ANNOTATION_PREFIX): str(value)
            for key, value in annotations.items()
            if key.startswith(CANARY_ANNOTATION_PREFIX)
        }
        for key in sorted(set(values) - set(CANARY_PLAN_DEFAULTS) - {STEP_KEY}):
            # e.g. canary-min-clicks, replaced by canary-min-impressions: say it is not used
            log.warning(
                "annotation %s%s is not a rollout setting: ignored", CANARY_ANNOTATION_PREFIX, key
            )
        values = {k: v for k, v in values.items() if k in CANARY_PLAN_DEFAULTS}
        return cls.parse({**values, **{k: v for k, v in overrides.items() if v is not None}})

    def describe(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "interval_seconds": self.interval,
            "failure_threshold": self.failure_threshold,
            "deadline_seconds": self.deadline,
            **asdict(self.thresholds),
        }


@dataclass
class Outcome:
    decision: str
    reason: str
    version: str
    stable: str
    step: int
    analysis: Analysis | None
    history: list[dict[str, Any]]
    plan: Plan

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "version": self.version,
            "stable_version": self.stable,
            "step_percent": self.step,
            "plan": self.plan.describe(),
            "analysis": None if self.analysis is None else self.analysis.to_json(),
            "history": self.history,
        }


def _record(settings: RolloutSettings, client: Any, outcome: Outcome) -> None:
    """The decision and its evidence as tags of the model version (a failure is logged only).

    Three tags (each is one authenticated call): ``rollout.decision`` (``promoted`` |
    ``rolled_back``), ``rollout.reason`` and ``rollout.evidence`` — JSON holding the step, the
    thresholds, the last analysis with its table, and the history of analyses.
    """
    evidence = outcome.to_json()
    evidence["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    evidence["table"] = table(outcome.analysis) if outcome.analysis else ""
    text = json.dumps(evidence, sort_keys=True)
    while len(text) > registry.TAG_VALUE_LIMIT and evidence["history"]:
        evidence["history"] = evidence["history"][1:]  # the oldest analyses go first
        evidence["history_truncated"] = True
        text = json.dumps(evidence, sort_keys=True)
    tags = {DECISION_TAG: outcome.decision, "rollout.reason": outcome.reason}
    tags["rollout.evidence"] = text
    try:
        with registry.mlflow_errors("tagging the version", settings.tracking_uri):
            registry.tag_version(client, settings.model_name, outcome.version, tags)
    except PipelineError as err:
        log.error("the decision could not be written to the registry: %s", err)


Echo = Callable[[str], None]


def run(
    settings: RolloutSettings,
    backend: Backend,
    prometheus: Prometheus,
    version: str,
    overrides: dict[str, str],
    *,
    force: bool = False,
    faults: dict[str, str] | None = None,
    echo: Echo = print,
) -> Outcome:
    """Roll ``version`` out step by step; promote it, or roll it back and raise.

    ``faults`` (tests and demos only): start the canary with the predictor's test faults;
    without them the canary starts clean (a revision of this version left with faults by an
    earlier command is replaced).
    """
    version = parse_version(version)
    plan = Plan.of(backend.get(), overrides)
    backend.status()  # the local stack down: fails here, nothing changed
    client = registry.connect(settings.tracking_uri, settings.connect_retries, identity=ROLLOUT)
    with registry.mlflow_errors(f"reading version {version}", settings.tracking_uri):
        mv = client.get_model_version(settings.model_name, version)
        stable = registry.alias_version(client, settings.model_name, CHAMPION)
    check_servable(settings, mv, force)
    if stable is None:
        raise RolloutError(
            f"no version is {CHAMPION} yet: an automated rollout compares a canary with the "
            "served version; roll the first one out with `rollout canary --version N`"
        )
    if stable == version:
        raise RolloutError(f"version {version} is already {CHAMPION}; nothing to roll out")
    if not prometheus.ready():
        raise MetricsUnavailableError(
            f"Prometheus at {prometheus.url} is not ready: a canary cannot be judged, so none "
            "is started (start it with `make up`; `make prometheus` installs it as root)"
        )
    echo(
        f"rolling out version {version} against {CHAMPION} {stable}: steps "
        f"{', '.join(f'{s}%' for s in plan.steps)}, every {plan.interval:g} s, rollback after "
        f"{plan.failure_threshold} failed analysis(es), step deadline {plan.deadline:g} s"
    )
    started = time.monotonic()
    failures = 0
    history: list[dict[str, Any]] = []
    last: Analysis | None = None
    outcome = Outcome("", "", version, stable, 0, None, history, plan)

    def roll_back(step: int, reason: str) -> CanaryRolledBackError:
        rollback(settings, backend)
        done = replace(outcome, decision=ROLLED_BACK, reason=reason, step=step, analysis=last)
        _record(settings, client, done)
        echo(f"rolled back version {version} at {step}%: {reason}")
        return CanaryRolledBackError(f"version {version} rolled back at {step}%: {reason}")

    for step in plan.steps:
        if step == 100:
            promote(settings, backend)
            reason = f"every check passed at {', '.join(f'{s}%' for s in plan.steps[:-1])}"
            done = replace(outcome, decision=PROMOTED, reason=reason, step=100, analysis=last)
            _record(settings, client, done)
            echo(f"promoted version {version}: {reason}")
            return done
        first = step == plan.steps[0]
        canary(
            settings, backend, version, step, force=force, faults=(faults or {}) if first else None
        )
        step_started = time.monotonic()
        echo(f"step {step}%: canary serving; first analysis in {plan.interval:g} s")
        next_at = step_started + plan.interval
        while True:
            wait_until(next_at)
            next_at += plan.interval
            now = time.monotonic()
            try:
                last = measure(
                    prometheus, version, stable, now - step_started, now - started, plan.thresholds
                )
            except MetricsUnavailableError as err:
                log.warning("analysis not possible now: %s", err)
                verdict, failed = Verdict.WAIT, []
            else:
                verdict, failed = last.verdict, last.failed
                echo(f"step {step}%, {now - step_started:.0f} s:\n{table(last)}")
            history.append(
                {
                    "step_percent": step,
                    "seconds": round(now - started, 1),
                    "verdict": verdict.value,
                    "failed": [c.name for c in failed],
                }
            )
            if verdict is Verdict.FAIL:
                failures += 1
                named = "; ".join(f"{c.name}: {c.detail}" for c in failed)
                if failures >= plan.failure_threshold:
                    raise roll_back(step, f"check failed ({failures}/{plan.failure_threshold}) "
                                          f"— {named}")  # fmt: skip
                echo(f"  failed analysis {failures}/{plan.failure_threshold}: {named}")
                continue
            if verdict is Verdict.WAIT:
                if now - step_started >= plan.deadline:
                    waiting = "; ".join(
                        f"{c.name}: {c.detail}"
                        for c in (last.checks if last else [])
                        if c.status.value == "insufficient"
                    )
                    raise roll_back(
                        step,
                        f"too few samples after the {plan.deadline:g} s deadline"
                        + (f" — {waiting}" if waiting else " (Prometheus unavailable)"),
                    )
                continue
            break
    raise RolloutError("the plan has no 100 % step")  # Plan.parse prevents it


def served_canary(isvc: dict[str, Any] | None) -> str | None:
    """The canary's version when a canary is running (``canaryTrafficPercent`` 1..99)."""
    if isvc is None:
        return None
    percent = isvc["spec"]["predictor"].get("canaryTrafficPercent")
    if percent is None or not 0 < int(percent) < 100:
        return None
    return document.served_version(isvc)
