"""Training job: feature snapshot → evaluated, registered MLflow model version.

``python -m pipelines.train`` (defaults: the local stack — ``DATA_DIR=.local/data``,
``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``):

1. checks that MLflow answers (bounded retries, then a clear error; nothing is logged);
2. loads and verifies the latest (or ``--features-version``) feature snapshot;
3. splits interactions per user (`pipelines.evaluate.split_holdout`: time-based when every row
   has a timestamp, seeded random otherwise), fits the model on the train part, evaluates it and
   the popularity baseline on the holdout, then refits on all interactions for serving;
4. logs one MLflow run: parameters, metrics (and metric@k curves), fit time, the snapshot version
   and manifest checksum, the git sha, plots, the plain numpy artefact under ``kserve/`` (what
   the KServe predictor loads) and a pyfunc model with signature, input example and pinned
   requirements;
5. applies the quality gate against the version aliased ``champion`` on the *same holdout*
   (NDCG@k may not drop more than ``--tolerance``, relative): the champion's recipe (model type
   and parameters) is refitted on this split unless it was trained on this very split, in which
   case its logged metric is reused;
6. registers a new version of ``movie-recommender`` with its metrics and gate result as tags in
   one call, then sets aliases: ``challenger`` when the gate passes, and ``champion`` too for the
   very first version. A version that fails the gate gets no alias and the job exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import requests
import typer

from pipelines import cli
from pipelines.errors import (
    ConfigError,
    InputValidationError,
    QualityGateError,
    TrackingUnavailableError,
)
from pipelines.evaluate import SplitProtocol, evaluate_fitted, split_holdout
from pipelines.features import DEFAULT_DATA_DIR, load_features
from pipelines.lineage import git_sha
from pipelines.recommenders import BEST_MODEL, MODELS, FittedRecommender, get_trainer
from pipelines.snapshots import MANIFEST, sha256_file

log = logging.getLogger(__name__)

MODEL_NAME = "movie-recommender"
EXPERIMENT = "movie-recommender"
ARTIFACT_PATH = "kserve"
CURVE_KS = (1, 3, 5, 10, 15, 20)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs, parsed once from flags and environment."""

    data_dir: Path = DEFAULT_DATA_DIR
    features_version: str | None = None
    model: str = BEST_MODEL
    tracking_uri: str = "http://127.0.0.1:5000"
    registered_model: str = MODEL_NAME
    experiment: str = EXPERIMENT
    k: int = 10
    seed: int = 0
    tolerance: float = 0.02
    connect_retries: int = 3


@dataclass(frozen=True)
class TrainResult:
    version: str
    run_id: str
    metrics: dict[str, float]
    gate_passed: bool
    aliases: tuple[str, ...]
    comparison: str


# -- MLflow reachability -------------------------------------------------------------------


def wait_for_tracking(uri: str, retries: int) -> None:
    """Bounded retries with backoff against MLflow's /health; a clear error when it is down."""
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI must be an MLflow server URL, got {uri!r}")
    last: Exception | None = None
    for attempt in range(retries):
        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=5)
            if response.status_code == 200:
                return
            last = RuntimeError(f"HTTP {response.status_code}")
        except requests.RequestException as err:
            last = err
        if attempt + 1 < retries:
            delay = 2.0**attempt
            log.warning("MLflow at %s not answering (%s); retrying in %.0f s", uri, last, delay)
            time.sleep(delay)
    raise TrackingUnavailableError(
        f"MLflow at {uri} is unreachable after {retries} attempts ({last}); start it with "
        "`make up` or set MLFLOW_TRACKING_URI; nothing was logged or registered"
    )


# -- evaluation helpers --------------------------------------------------------------------


def _curves(model: FittedRecommender, test: pd.DataFrame) -> dict[int, dict[str, float]]:
    return {k: evaluate_fitted(model, test, k) for k in CURVE_KS}


def _plot_curves(curves: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, metric in zip(axes, ("precision", "recall", "ndcg"), strict=True):
        for label, by_k in curves.items():
            ax.plot(list(by_k), [by_k[k][f"{metric}@{k}"] for k in by_k], marker="o", label=label)
        ax.set_title(f"{metric}@k")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def _champion_ndcg(
    client: Any,
    champion: Any,
    split_key: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    catalog: pd.DataFrame,
    k: int,
) -> tuple[float, str]:
    """NDCG@k of the champion on this holdout, and how it was obtained."""
    tags = champion.tags or {}
    metric = f"ndcg_at_{k}"
    if tags.get("split_key") == split_key and metric in tags:
        return float(tags[metric]), "its logged metric (same split)"
    run = client.get_run(champion.run_id)
    model_type = tags.get("model_type") or run.data.params.get("model")
    params = json.loads(run.data.params.get("model_params", "{}"))
    if model_type not in MODELS:
        raise ConfigError(
            f"champion version {champion.version} has unknown model type {model_type!r}"
        )
    fitted = get_trainer(model_type, **params).fit(train, catalog)
    return evaluate_fitted(fitted, test, k)[f"ndcg@{k}"], f"its recipe ({model_type}) refitted"


# -- the stage -----------------------------------------------------------------------------


def train(settings: TrainSettings) -> TrainResult:
    """Train, evaluate, log, gate and register one model version (see the module docstring)."""
    if settings.model not in MODELS:
        raise ConfigError(f"unknown model {settings.model!r}; known: {', '.join(sorted(MODELS))}")
    if not 0 <= settings.tolerance < 1:
        raise ConfigError(f"--tolerance must be in [0, 1), got {settings.tolerance}")
    wait_for_tracking(settings.tracking_uri, settings.connect_retries)

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.recommenders.pyfunc import ARTIFACT_KEY, MODEL_CODE, signature

    version, catalog, interactions, manifest = load_features(
        settings.data_dir, settings.features_version
    )
    if interactions.empty:
        raise InputValidationError(f"feature snapshot {version} has no interactions")
    features_sha = sha256_file(settings.data_dir / "features" / version / MANIFEST)
    log.info(
        "features %s: %d interactions, %d catalog rows", version, len(interactions), len(catalog)
    )

    train_part, test_part, protocol = split_holdout(
        interactions, seed=settings.seed, protocol=SplitProtocol.AUTO
    )
    if test_part.empty:
        raise InputValidationError(
            f"feature snapshot {version}: no user has enough interactions for a holdout"
        )
    split_key = f"{version}:{protocol.value}:{settings.seed}"
    trainer = get_trainer(settings.model)
    log.info("fitting %s on %d rows (holdout %d rows, %s split)",
             settings.model, len(train_part), len(test_part), protocol.value)  # fmt: skip
    started = time.perf_counter()
    evaluated = trainer.fit(train_part, catalog)
    fit_seconds = time.perf_counter() - started
    curves = {settings.model: _curves(evaluated, test_part)}
    if settings.model != "popularity":
        baseline = get_trainer("popularity").fit(train_part, catalog)
        curves["popularity"] = _curves(baseline, test_part)
    at_k = evaluate_fitted(evaluated, test_part, settings.k)
    metrics = {name.replace("@", "_at_"): float(v) for name, v in at_k.items()}
    metrics["fit_seconds"] = fit_seconds
    if "popularity" in curves and settings.model != "popularity":
        base = curves["popularity"].get(settings.k) or evaluate_fitted(
            baseline, test_part, settings.k
        )
        metrics[f"baseline_ndcg_at_{settings.k}"] = float(base[f"ndcg@{settings.k}"])

    log.info("refitting %s on all %d interactions for serving", settings.model, len(interactions))
    trained_on = {
        "features_version": version,
        "features_manifest_sha256": features_sha,
        "git_sha": git_sha(),
    }
    final = trainer.fit(interactions, catalog, trained_on=trained_on)

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        mlflow.set_experiment(settings.experiment)
        champion = _champion(client, settings.registered_model)
        with mlflow.start_run(run_name=f"{settings.model}-{version}") as run:
            mlflow.log_params(
                {
                    "model": settings.model,
                    "model_params": json.dumps(trainer.params(), sort_keys=True),
                    "features_version": version,
                    "split": protocol.value,
                    "seed": settings.seed,
                    "k": settings.k,
                    "train_rows": len(train_part),
                    "test_rows": len(test_part),
                }
            )
            mlflow.set_tags(
                {
                    "features_version": version,
                    "features_manifest_sha256": features_sha,
                    "features_source": json.dumps(manifest.get("source", {}), sort_keys=True),
                    "git_sha": trained_on["git_sha"],
                    "model_type": settings.model,
                    "split_key": split_key,
                }
            )
            mlflow.log_metrics(metrics)
            for label, by_k in curves.items():
                for k, values in by_k.items():
                    for metric in ("precision", "recall", "ndcg", "map"):
                        mlflow.log_metric(
                            f"{label}_{metric}_curve", values[f"{metric}@{k}"], step=k
                        )

            with tempfile.TemporaryDirectory(prefix="train-") as tmp:
                artefact = Path(tmp) / ARTIFACT_PATH
                final.save(artefact)
                mlflow.log_artifacts(str(artefact), ARTIFACT_PATH)
                _plot_curves(curves, Path(tmp) / "metric_at_k.png")
                mlflow.log_artifact(str(Path(tmp) / "metric_at_k.png"), "plots")
                plot = settings.data_dir / "features" / version / "rating_vs_watch.png"
                if plot.is_file():
                    mlflow.log_artifact(str(plot), "plots")

                example = pd.DataFrame(
                    {"user_id": [int(interactions["user_id"].iloc[0])], "k": [10]}
                )
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(MODEL_CODE),
                    artifacts={ARTIFACT_KEY: str(artefact)},
                    signature=signature(),
                    input_example=example,
                    pip_requirements=_requirements(),
                    code_paths=[str(Path(__file__).resolve().parent)],
                )

            ndcg = metrics[f"ndcg_at_{settings.k}"]
            gate_passed, comparison = True, "first version: no champion to compare with"
            if champion is not None:
                champ_ndcg, how = _champion_ndcg(
                    client, champion, split_key, train_part, test_part, catalog, settings.k
                )
                floor = champ_ndcg * (1.0 - settings.tolerance)
                gate_passed = ndcg >= floor
                comparison = (
                    f"NDCG@{settings.k}: new {ndcg:.4f} vs champion v{champion.version} "
                    f"{champ_ndcg:.4f} ({how}); floor {floor:.4f} at tolerance "
                    f"{settings.tolerance:.0%} -> {'PASS' if gate_passed else 'FAIL'}"
                )
            mlflow.set_tag("quality_gate", "passed" if gate_passed else "failed")
            tags = {
                "model_type": settings.model,
                "features_version": version,
                "split_key": split_key,
                "git_sha": trained_on["git_sha"],
                "quality_gate": "passed" if gate_passed else "failed",
                "quality_gate_detail": comparison,
                **{name: f"{value:.6f}" for name, value in metrics.items()},
            }
            _ensure_registered_model(client, settings.registered_model)
            mv = client.create_model_version(
                settings.registered_model,
                info.model_uri,
                run_id=run.info.run_id,
                tags=tags,
                model_id=info.model_id,
            )
    except MlflowException as err:
        raise TrackingUnavailableError(f"MLflow rejected a call: {err.message}") from err
    except requests.RequestException as err:
        raise TrackingUnavailableError(f"lost MLflow at {settings.tracking_uri}: {err}") from err

    aliases: tuple[str, ...] = ()
    if gate_passed:
        aliases = ("challenger",) if champion is not None else ("challenger", "champion")
        for alias in aliases:
            client.set_registered_model_alias(settings.registered_model, alias, mv.version)
    result = TrainResult(
        version=str(mv.version),
        run_id=run.info.run_id,
        metrics=metrics,
        gate_passed=gate_passed,
        aliases=aliases,
        comparison=comparison,
    )
    if not gate_passed:
        raise QualityGateError(
            f"{settings.registered_model} version {mv.version} failed the quality gate and got "
            f"no alias: {comparison}"
        )
    return result


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Top-k movie recommender served by KServe (numpy artefact in kserve/)"
        )


def _requirements() -> list[str]:
    """Exact pins of what the pyfunc model needs, taken from the running environment."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas", "scipy", "pyarrow")]


# -- CLI -----------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option("--data-dir", envvar="DATA_DIR")] = DEFAULT_DATA_DIR,
    features_version: Annotated[
        str | None, typer.Option("--features-version", help="Feature snapshot (default latest).")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help=f"One of {', '.join(sorted(MODELS))}.")
    ] = BEST_MODEL,
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI")
    ] = "http://127.0.0.1:5000",
    registered_model: Annotated[
        str, typer.Option("--registered-model", envvar="MODEL_NAME")
    ] = MODEL_NAME,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Cut-off of the metrics.")] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Split seed.")] = 0,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Allowed relative NDCG drop vs champion.")
    ] = 0.02,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a model on a feature snapshot and register it in MLflow."""
    cli.configure_logging(verbose)
    # MLflow's own client retries for minutes by default; keep failures bounded and clear.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    settings = TrainSettings(
        data_dir=data_dir,
        features_version=features_version,
        model=model,
        tracking_uri=tracking_uri,
        registered_model=registered_model,
        k=k,
        seed=seed,
        tolerance=tolerance,
    )
    result = cli.run(lambda: train(settings))
    shown = ", ".join(
        f"{name}={value:.4f}" for name, value in result.metrics.items() if "_at_" in name
    )
    aliases = ", ".join(result.aliases) or "none"
    typer.echo(
        f"registered {settings.registered_model} version {result.version} "
        f"(run {result.run_id}); aliases: {aliases}"
    )
    typer.echo(f"  {shown}")
    typer.echo(f"  quality gate: {result.comparison}")


if __name__ == "__main__":
    app()
