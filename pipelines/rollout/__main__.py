"""``python -m pipelines.rollout canary|promote|rollback|status|analyze|auto`` — the rollout CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.credentials import ROLLOUT
from contracts.inferenceservice import traffic_table
from contracts.names import CHAMPION
from contracts.settings import (
    FAULT_ERROR_RATE,
    FAULT_LATENCY_MS,
    LOCAL_ROOT,
    MLFLOW_TRACKING_URI,
    PROMETHEUS_URL,
)
from pipelines import cli, registry
from pipelines.errors import ConfigError, RolloutError
from pipelines.rollout import analysis, auto
from pipelines.rollout.backends import make_backend
from pipelines.rollout.steps import (
    RolloutSettings,
    Target,
    canary,
    parse_version,
    promote,
    rollback,
)

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Canary, promote and roll back model versions of the InferenceService.",
)

TargetOpt = Annotated[
    Target, typer.Option("--target", envvar="ROLLOUT_TARGET", help="local stack or cluster.")
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="POD_NAMESPACE",
        help="Namespace (cluster target; default: the pod's own, else 'default').",
    ),
]
TrackingOpt = Annotated[
    str, typer.Option("--tracking-uri", envvar=MLFLOW_TRACKING_URI.name, help="MLflow server.")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for ready.")]
PrometheusOpt = Annotated[
    str,
    typer.Option("--prometheus-url", envvar=PROMETHEUS_URL.name, help="Prometheus (analysis)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
FaultRateOpt = Annotated[
    float | None,
    typer.Option(
        "--fault-error-rate",
        min=0.0,
        max=1.0,
        help="TESTS/DEMOS ONLY (local stack): the canary answers this share with 500.",
    ),
]
FaultLatencyOpt = Annotated[
    float | None,
    typer.Option(
        "--fault-latency-ms",
        min=0.0,
        help="TESTS/DEMOS ONLY (local stack): the canary adds this delay to every request.",
    ),
]


def _faults(error_rate: float | None, latency_ms: float | None) -> dict[str, str]:
    """The predictor's test-fault environment from the flags (empty: none)."""
    pairs = ((FAULT_ERROR_RATE.name, error_rate), (FAULT_LATENCY_MS.name, latency_ms))
    return {name: f"{value:g}" for name, value in pairs if value}


def _namespace(given: str | None) -> str:
    if given:
        return given
    try:  # inside a pod: the namespace of its service account
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def _backend(settings: RolloutSettings) -> Any:
    return make_backend(
        settings.target,
        namespace=settings.namespace,
        name=settings.isvc_name,
        local_root=settings.local_root,
    )


def _run(settings: RolloutSettings, step: str, fn: Any) -> None:
    cli.configure_logging(False)
    status = cli.run(lambda: fn(_backend(settings)))
    typer.echo(f"{step} done; traffic:\n{traffic_table(status)}")


@app.callback()
def _options(
    ctx: typer.Context,
    target: TargetOpt = Target.LOCAL,
    namespace: NamespaceOpt = None,
    tracking_uri: TrackingOpt = MLFLOW_TRACKING_URI.default,
    timeout: TimeoutOpt = 300.0,
    prometheus_url: PrometheusOpt = PROMETHEUS_URL.default,
) -> None:
    """Options every step shares (also read from the environment)."""
    ctx.obj = RolloutSettings(
        target=target,
        namespace=_namespace(namespace),
        tracking_uri=tracking_uri,
        local_root=LOCAL_ROOT.path(),
        timeout=timeout,
        prometheus_url=prometheus_url,
    )


@app.command("canary")
def canary_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Option("--version", help="Registered model version.")],
    percent: Annotated[
        int | None,
        typer.Option(
            "--percent",
            envvar="CANARY_PERCENT",
            help="Canary share 1..100 (default: the environment's canary-step-percent).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Roll out a version whose quality gate failed.")
    ] = False,
    fault_error_rate: FaultRateOpt = None,
    fault_latency_ms: FaultLatencyOpt = None,
) -> None:
    """Start a canary of a registered version (or the first rollout, at 100 %)."""
    settings: RolloutSettings = ctx.obj
    faults = _faults(fault_error_rate, fault_latency_ms)
    _run(
        settings,
        "canary",
        lambda backend: canary(settings, backend, version, percent, force=force, faults=faults),
    )


@app.command("promote")
def promote_cmd(ctx: typer.Context) -> None:
    """Give the canary all traffic and make it `champion`."""
    settings: RolloutSettings = ctx.obj
    _run(settings, "promote", lambda backend: promote(settings, backend))


@app.command("rollback")
def rollback_cmd(ctx: typer.Context) -> None:
    """Undo the last step: pin a running canary to 0 %, or restore the `previous` version."""
    settings: RolloutSettings = ctx.obj
    _run(settings, "rollback", lambda backend: rollback(settings, backend))


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Show the InferenceService's traffic split."""
    settings: RolloutSettings = ctx.obj
    status = cli.run(lambda: _backend(settings).status())
    if not status or "components" not in status:
        typer.echo(f"InferenceService {settings.isvc_name}: nothing rolled out yet")
        raise typer.Exit(1)
    typer.echo(traffic_table(status))
    ready = {c.get("type"): c for c in status.get("conditions", [])}.get("Ready", {})
    if ready.get("status") != "True":
        typer.echo(f"  not ready: {ready.get('message') or 'unknown'}")


def _opt(help_text: str, kind: type = float) -> Any:
    return Annotated[kind | None, typer.Option(help=help_text)]


def _overrides(**values: Any) -> dict[str, str]:
    """Flags -> plan overrides (annotation suffix -> text); unset flags are left out."""
    return {key.replace("_", "-"): str(v) for key, v in values.items() if v is not None}


@app.command("analyze")
def analyze_cmd(
    ctx: typer.Context,
    canary_version: Annotated[
        str | None, typer.Option(help="Canary version (default: the running canary's).")
    ] = None,
    stable_version: Annotated[
        str | None, typer.Option(help=f"Stable version (default: the {CHAMPION}).")
    ] = None,
    window: Annotated[float, typer.Option(min=1, help="Seconds of data to compare.")] = 60.0,
    max_error_rate: _opt("Canary 5xx share at most (default: the overlay's).") = None,
    max_p99_ms: _opt("Canary p99 latency at most, ms.") = None,
    min_requests: _opt("Canary requests needed to judge.", int) = None,
    min_impressions: _opt(
        "Impressions per arm before the CTR test judges (0: no CTR check).", int
    ) = None,
    ctr_alpha: _opt("One-sided significance of 'the canary's CTR is lower'.") = None,
    as_json: JsonOpt = False,
) -> None:
    """Canary vs stable over a window: requests, 5xx, latency, fallbacks, CTR — and the checks."""
    settings: RolloutSettings = ctx.obj
    cli.configure_logging(False)

    def go() -> analysis.Analysis:
        backend = _backend(settings)
        isvc = backend.get()
        plan = auto.Plan.of(
            isvc,
            _overrides(
                max_error_rate=max_error_rate,
                max_p99_ms=max_p99_ms,
                min_requests=min_requests,
                min_impressions=min_impressions,
                ctr_alpha=ctr_alpha,
            ),
        )
        canary_v = parse_version(canary_version) if canary_version else auto.served_canary(isvc)
        stable_v = parse_version(stable_version) if stable_version else None
        if stable_v is None:
            client = registry.connect(
                settings.tracking_uri, settings.connect_retries, identity=ROLLOUT
            )
            with registry.mlflow_errors("reading the aliases", settings.tracking_uri):
                stable_v = registry.alias_version(client, settings.model_name, CHAMPION)
        if canary_v is None or stable_v is None:
            raise RolloutError(
                "no canary is running (or no champion): name the versions to compare with "
                "--canary-version and --stable-version"
            )
        if canary_v == stable_v:
            raise ConfigError(f"canary and stable are both version {canary_v}")
        prometheus = analysis.Prometheus(settings.prometheus_url)
        return analysis.measure(prometheus, canary_v, stable_v, window, window, plan.thresholds)

    result = cli.run(go)
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else analysis.table(result))


@app.command("auto")
def auto_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Option("--version", help="Registered model version.")],
    force: Annotated[
        bool, typer.Option("--force", help="Roll out a version whose quality gate failed.")
    ] = False,
    steps: Annotated[
        str | None, typer.Option(help="Traffic percents, e.g. 10,50,100 (default: overlay's).")
    ] = None,
    interval: _opt("Seconds at each step before an analysis.") = None,
    threshold: _opt("Failed analyses before the automatic rollback.", int) = None,
    deadline: _opt("Seconds a step may wait for enough samples before rolling back.") = None,
    max_error_rate: _opt("Canary 5xx share at most.") = None,
    max_p99_ms: _opt("Canary p99 latency at most, ms.") = None,
    min_requests: _opt("Canary requests per analysis needed to judge.", int) = None,
    min_impressions: _opt(
        "Impressions per arm before the CTR test judges (0: no CTR check).", int
    ) = None,
    ctr_alpha: _opt("One-sided significance of 'the canary's CTR is lower'.") = None,
    fault_error_rate: FaultRateOpt = None,
    fault_latency_ms: FaultLatencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Canary, analyse, step up — or roll back automatically (exit 10 naming the check)."""
    settings: RolloutSettings = ctx.obj
    cli.configure_logging(False)
    overrides = _overrides(
        steps=steps,
        interval_seconds=interval,
        failure_threshold=threshold,
        deadline_seconds=deadline,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
        min_requests=min_requests,
        min_impressions=min_impressions,
        ctr_alpha=ctr_alpha,
    )
    echo = (lambda _: None) if as_json else typer.echo
    outcome = cli.run(
        lambda: auto.run(
            settings,
            _backend(settings),
            analysis.Prometheus(settings.prometheus_url),
            version,
            overrides,
            force=force,
            faults=_faults(fault_error_rate, fault_latency_ms),
            echo=echo,
        )
    )
    if as_json:
        typer.echo(json.dumps(outcome.to_json(), indent=2))


def main() -> None:
    app(prog_name="python -m pipelines.rollout")


if __name__ == "__main__":
    main()
