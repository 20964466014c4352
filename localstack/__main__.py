"""`python -m localstack up|down|status` — the one-machine twin of the cluster (`make up`)."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Annotated

import requests
import typer

from contracts.inferenceservice import traffic_table
from contracts.names import MODEL_NAME, VERSION_HEADER
from localstack.processes import ProcessError
from localstack.stack import StackSettings, down, installed, status, up

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)


def _settings() -> StackSettings:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return StackSettings.from_env()


@app.command("up")
def up_() -> None:
    """Start MLflow, the TMDB sandbox, the ingress and Prometheus in the background (127.0.0.1)."""
    settings = _settings()
    try:
        urls = up(settings)
    except ProcessError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    for name, url in urls.items():
        typer.echo(f"  {name:<26} {url}")
    typer.echo(f"  logs in {settings.logs_dir}/ — stop with `make down`")


@app.command("down")
def down_() -> None:
    """Stop every local-stack process (state under .local/ stays)."""
    stopped = down(_settings())
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command("status")
def status_() -> None:
    """Show which services run and the local InferenceService's traffic."""
    report = status(_settings())
    for name, pid in report["services"].items():
        state = f"running (pid {pid})" if pid else "stopped"
        if not pid and not installed(name):
            state = "not installed (make prometheus)"
        typer.echo(f"  {name:<10} {state}")
    observed = (report["inferenceservice"] or {}).get("status") or {}
    if not report["services"]["ingress"]:
        typer.echo("the local stack is down: no traffic is served (start it with `make up`)")
        raise typer.Exit(1)
    if "components" not in observed:
        typer.echo("no InferenceService yet: `python -m pipelines.rollout canary --version N`")
        return
    typer.echo(traffic_table(observed))
    for revision in observed.get("revisions", []):
        if revision["state"] not in ("Ready", "Stopped"):
            note = f" — {revision['message']}" if revision.get("message") else ""
            typer.echo(f"  {revision['name']}: {revision['state']}{note}")


@app.command("predict")
def predict_(
    user: Annotated[int | None, typer.Option("--user", help="A user id.")] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="Comma-separated content ids.")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=100)] = 10,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, help="Send N times; print the version split.")
    ] = 1,
) -> None:
    """Call the V1 predict route through the ingress and print the ranking."""
    settings = StackSettings.from_env()
    instance: dict[str, object] = {"k": k, "display": True}
    if user is not None:
        instance["user_id"] = user
    if history:
        instance["history"] = [int(x) for x in history.split(",") if x.strip()]
    url = f"{settings.ingress_url}/v1/models/{MODEL_NAME}:predict"
    versions: Counter[str] = Counter()
    with requests.Session() as session:
        for _ in range(repeat):
            response = session.post(url, json={"instances": [instance]}, timeout=10)
            if response.status_code != 200:
                typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
                raise typer.Exit(1)
            versions[response.headers.get(VERSION_HEADER, "?")] += 1
    if repeat > 1:
        split = ", ".join(f"version {v}: {n}" for v, n in sorted(versions.items()))
        typer.echo(f"  {repeat} requests -> {split}")
        return
    body = response.json()
    prediction = body["predictions"][0]
    who = f"user {user}" if user is not None else f"history {instance.get('history')}"
    note = f" — fallback: {prediction.get('reason')}" if prediction.get("fallback") else ""
    typer.echo(f"{who}: top {k} from model version {body.get('model_version')}{note}")
    for rank, item in enumerate(prediction.get("items") or [], start=1):
        title = item.get("title") or f"content {item['content_id']}"
        typer.echo(f"  {rank:>2}. {title[:48]:<48} id={item['content_id']:<8} {item['score']:.4f}")


@app.command("popular")
def popular_(n: Annotated[int, typer.Option("--n", min=1, max=100)] = 3) -> None:
    """Print the served model's n most popular content ids (comma-separated).

    Asks the predictor through the ingress (``"popular": true``), so the ids are ones the
    model that answers knows, whatever snapshot was built since.
    """
    url = f"{StackSettings.from_env().ingress_url}/v1/models/{MODEL_NAME}:predict"
    response = requests.post(url, json={"instances": [{"popular": True, "k": n}]}, timeout=10)
    if response.status_code != 200:
        typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    ids = response.json()["predictions"][0]["content_ids"]
    typer.echo(",".join(str(i) for i in ids))


if __name__ == "__main__":
    app()
