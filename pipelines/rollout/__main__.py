"""``python -m pipelines.rollout canary|promote|rollback|status`` — the rollout CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.inferenceservice import traffic_table
from contracts.settings import LOCAL_ROOT, MLFLOW_TRACKING_URI
from pipelines import cli
from pipelines.rollout.backends import make_backend
from pipelines.rollout.steps import RolloutSettings, Target, canary, promote, rollback

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
) -> None:
    """Options every step shares (also read from the environment)."""
    ctx.obj = RolloutSettings(
        target=target,
        namespace=_namespace(namespace),
        tracking_uri=tracking_uri,
        local_root=LOCAL_ROOT.path(),
        timeout=timeout,
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
) -> None:
    """Start a canary of a registered version (or the first rollout, at 100 %)."""
    settings: RolloutSettings = ctx.obj
    _run(
        settings,
        "canary",
        lambda backend: canary(settings, backend, version, percent, force=force),
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


def main() -> None:
    app(prog_name="python -m pipelines.rollout")


if __name__ == "__main__":
    main()
