"""Training job: feature snapshot → evaluated, registered MLflow model version.

``python -m pipelines.train`` (defaults: the local stack — ``DATA_DIR=.local/data``,
``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``):

1. checks that MLflow answers (bounded retries, then exit 8; nothing is logged);
2. loads and verifies the latest (or ``--features-version``) feature snapshot;
3. `fit_and_evaluate`: splits interactions per user (`pipelines.evaluate.split_holdout`:
   time-based when every row has a timestamp, seeded random otherwise), fits the model on the
   train part, evaluates it and the popularity baseline on the holdout, then refits on all
   interactions for serving;
4. `log_run`: one MLflow run with parameters, metrics (and metric@k curves), the feature
   snapshot as the run's input dataset (digest = feature version, source = the snapshot, tags
   naming its raw snapshot), both manifests under ``lineage/``, MLflow's git-commit tag, plots,
   the plain numpy artefact under ``kserve/`` (what the KServe predictor loads) and a pyfunc
   model with signature, input example and pinned requirements;
5. applies the quality gate against the version aliased ``champion`` on the *same holdout*
   (`pipelines.registry.quality_gate`);
6. `register`: a new version of ``movie-recommender`` with its metrics, gate result and a model
   card, then aliases: ``challenger`` when the gate passes, and ``champion`` too for the very
   first version; the aliases reported are read back from the server. A version that fails the
   gate gets no alias and the job exits 9.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from contracts import credentials, layout
from contracts.files import pid_alive
from contracts.names import (
    ARTIFACT_PATH,
    CHALLENGER,
    CHAMPION,
    DIGEST_TAG,
    EXPERIMENT_NAME,
    MODEL_NAME,
)
from contracts.names import QUALITY_GATE_TAG as GATE_TAG
from contracts.settings import DATA_DIR, MLFLOW_TRACKING_URI
from contracts.settings import MODEL_NAME as MODEL_NAME_ENV
from pipelines import cli, registry
from pipelines.errors import ConfigError, InputValidationError, QualityGateError
from pipelines.evaluate import SplitProtocol, evaluate_fitted, size_params, split_holdout
from pipelines.features import FeatureSnapshot, load_features
from pipelines.lineage import git_sha
from recommenders import BEST_MODEL, MODELS, FittedRecommender, Trainer, get_trainer, save
from recommenders.artifact import artifact_digest

log = logging.getLogger(__name__)

CURVE_KS = (1, 3, 5, 10, 15, 20)
TRAINER_PID_TAG, TRAINER_HOST_TAG = "movie-mlops.trainer.pid", "movie-mlops.trainer.host"
RECOMMENDERS_DIR = Path(__file__).resolve().parents[1] / "recommenders"
CONTRACTS_DIR = Path(__file__).resolve().parents[1] / "contracts"


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs, parsed once from flags and environment."""

    data_dir: Path = DATA_DIR.default_path
    features_version: str | None = None
    model: str = BEST_MODEL
    tracking_uri: str = MLFLOW_TRACKING_URI.default
    registered_model: str = MODEL_NAME
    experiment: str = EXPERIMENT_NAME
    k: int = 10
    seed: int = 0
    tolerance: float = 0.02
    connect_retries: int = 3
    max_items: int | None = None  # EASE: fit on the most-interacted items only


@dataclass(frozen=True)
class TrainResult:
    version: str
    run_id: str
    metrics: dict[str, float]
    gate_passed: bool
    aliases: tuple[str, ...]
    comparison: str


@dataclass(frozen=True, eq=False)
class Fitted:
    """What `fit_and_evaluate` hands to logging and the gate."""

    trainer: Trainer
    final: FittedRecommender  # refitted on every interaction: what is served
    train: pd.DataFrame
    test: pd.DataFrame
    protocol: SplitProtocol
    split_key: str
    metrics: dict[str, float]
    curves: dict[str, dict[int, dict[str, float]]]


# -- fit and evaluate ------------------------------------------------------------------------


def _curves(model: FittedRecommender, test: pd.DataFrame) -> dict[int, dict[str, float]]:
    return {k: evaluate_fitted(model, test, k) for k in CURVE_KS}


def fit_and_evaluate(snapshot: FeatureSnapshot, settings: TrainSettings) -> Fitted:
    """Split, fit on train, evaluate against popularity on the holdout, refit on everything."""
    interactions, catalog = snapshot.interactions, snapshot.catalog
    if interactions.empty:
        raise InputValidationError(f"feature snapshot {snapshot.version} has no interactions")
    started = time.perf_counter()
    train_part, test_part, protocol = split_holdout(
        interactions, seed=settings.seed, protocol=SplitProtocol.AUTO
    )
    if test_part.empty:
        raise InputValidationError(
            f"feature snapshot {snapshot.version}: no user has enough interactions for a holdout"
        )
    log.info("split %d interactions in %.1f s: %d train, %d holdout (%s split)",
             len(interactions), time.perf_counter() - started, len(train_part), len(test_part),
             protocol.value)  # fmt: skip
    trainer = get_trainer(settings.model, **size_params(settings.model, settings.max_items))
    log.info("fitting %s on %d rows", settings.model, len(train_part))
    started = time.perf_counter()
    evaluated = trainer.fit(train_part, catalog)
    fit_seconds = time.perf_counter() - started
    curves = {settings.model: _curves(evaluated, test_part)}
    metrics = {
        name.replace("@", "_at_"): float(v)
        for name, v in evaluate_fitted(evaluated, test_part, settings.k).items()
    }
    metrics["fit_seconds"] = fit_seconds
    if settings.model != "popularity":
        baseline = get_trainer("popularity").fit(train_part, catalog)
        curves["popularity"] = _curves(baseline, test_part)
        base = evaluate_fitted(baseline, test_part, settings.k)
        metrics[f"baseline_ndcg_at_{settings.k}"] = float(base[f"ndcg@{settings.k}"])

    log.info("refitting %s on all %d interactions for serving", settings.model, len(interactions))
    trained_on = {
        "features_version": snapshot.version,
        "features_manifest_sha256": snapshot.manifest_sha256,
        "git_sha": git_sha(),
    }
    final = trainer.fit(interactions, catalog, trained_on=trained_on)
    return Fitted(
        trainer=trainer,
        final=final,
        train=train_part,
        test=test_part,
        protocol=protocol,
        split_key=f"{snapshot.version}:{protocol.value}:{settings.seed}",
        metrics=metrics,
        curves=curves,
    )


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


# -- the MLflow run ----------------------------------------------------------------------------


def input_example(model: FittedRecommender) -> pd.DataFrame:
    """A request the signature accepts: a known user with a history (both optional fields)."""
    user = int(model.user_ids[0])
    history = [int(i) for i in model.item_ids[: min(3, model.n_items)]]
    return pd.DataFrame({"user_id": [user], "history": [history], "k": [10]})


def log_dataset(snapshot: FeatureSnapshot) -> None:
    """The feature snapshot as the run's training input (shown on the run in the MLflow UI).

    Digest = the feature version (a digest of its inputs); source = the snapshot directory;
    tags name the raw snapshot (or the interaction log) it was built from.
    """
    import mlflow
    import mlflow.data

    source = snapshot.source
    log_file = source.get("interactions_file") or {}
    dataset = mlflow.data.from_pandas(
        snapshot.interactions,
        source=str(snapshot.path.resolve()),
        name=f"features-{snapshot.version}",
        digest=snapshot.version,
    )
    tags = {
        "features_version": snapshot.version,
        "features_manifest_sha256": snapshot.manifest_sha256,
        "raw_snapshot": source.get("raw_snapshot") or "none",
        "raw_manifest_sha256": source.get("raw_manifest_sha256") or "none",
        "interactions_file": log_file.get("name") or "none",
        "interactions_file_sha256": log_file.get("sha256") or "none",
    }
    mlflow.log_input(dataset, context="training", tags=tags)


def _log_lineage_files(snapshot: FeatureSnapshot, data_dir: Path) -> None:
    """Both manifests under ``lineage/``: the walk back to the crawl survives the data volume."""
    import mlflow

    mlflow.log_artifact(str(snapshot.path / layout.MANIFEST), "lineage/features")
    raw = snapshot.source.get("raw_snapshot")
    if raw:
        raw_manifest = layout.DataLayout(data_dir).raw / raw / layout.MANIFEST
        if raw_manifest.is_file():
            mlflow.log_artifact(str(raw_manifest), "lineage/raw")


def log_run(
    snapshot: FeatureSnapshot, fitted: Fitted, settings: TrainSettings
) -> tuple[str, Any, str]:
    """Everything about one training run, in one MLflow run; returns (run id, model info,
    the numpy artefact's digest)."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from recommenders.pyfunc import ARTIFACT_KEY, MODEL_CODE, requirements, signature

    sha = fitted.final.trained_on["git_sha"]
    # the trainer's pid and host go in with the run's creation: a run killed at any moment
    # can be recognised as stale by the next train (`close_stale_runs`)
    trainer = {TRAINER_PID_TAG: str(os.getpid()), TRAINER_HOST_TAG: socket.gethostname()}
    with mlflow.start_run(run_name=f"{settings.model}-{snapshot.version}", tags=trainer) as run:
        mlflow.log_params(
            {
                "model": settings.model,
                "model_params": json.dumps(fitted.trainer.params(), sort_keys=True),
                "features_version": snapshot.version,
                "split": fitted.protocol.value,
                "seed": settings.seed,
                "k": settings.k,
                "train_rows": len(fitted.train),
                "test_rows": len(fitted.test),
            }
        )
        mlflow.set_tags(
            {
                "features_version": snapshot.version,
                "features_manifest_sha256": snapshot.manifest_sha256,
                "features_source": json.dumps(snapshot.source, sort_keys=True),
                MLFLOW_GIT_COMMIT: sha,
                "git_sha": sha,
                "model_type": settings.model,
                "split_key": fitted.split_key,
            }
        )
        log_dataset(snapshot)
        _log_lineage_files(snapshot, settings.data_dir)
        with tempfile.TemporaryDirectory(prefix="train-") as tmp:
            artefact = save(fitted.final, Path(tmp) / ARTIFACT_PATH)
            digest = artifact_digest(artefact)  # of exactly the files uploaded next
            mlflow.log_artifacts(str(artefact), ARTIFACT_PATH)
            _plot_curves(fitted.curves, Path(tmp) / "metric_at_k.png")
            mlflow.log_artifact(str(Path(tmp) / "metric_at_k.png"), "plots")
            if snapshot.plot is not None:
                mlflow.log_artifact(str(snapshot.plot), "plots")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={ARTIFACT_KEY: str(artefact)},
                signature=signature(),
                input_example=input_example(fitted.final),
                pip_requirements=requirements(),
                # only what scoring needs: the models and the contracts they read
                code_paths=[str(RECOMMENDERS_DIR), str(CONTRACTS_DIR)],
            )
        _log_metrics(run.info.run_id, fitted, info.model_id)
    return run.info.run_id, info, digest


def _log_metrics(run_id: str, fitted: Fitted, model_id: str) -> None:
    """The run's metrics (linked to the logged model) and the @k curves, in one request.

    After `log_model`, not before: a run that already has metrics makes `log_model` fetch each
    one's history to link it to the model (one request per metric), and one request per curve
    point cost seconds more; each request to MLflow verifies a password hash.
    """
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in fitted.metrics.items()]
    for label, by_k in fitted.curves.items():
        for k, values in by_k.items():
            for name in ("precision", "recall", "ndcg", "map"):
                metrics.append(Metric(f"{label}_{name}_curve", values[f"{name}@{k}"], now, k))
    mlflow.MlflowClient().log_batch(run_id, metrics=metrics, synchronous=True)


class Terminated(BaseException):
    """SIGTERM arrived (a Job deleted, `kill`): end the MLflow run as KILLED, then exit."""


@contextlib.contextmanager
def _ended_on_sigterm() -> Iterator[None]:
    """While a run is open, SIGTERM ends it as KILLED (a failure ends it as FAILED)."""
    import mlflow

    def on_term(signum: int, _frame: Any) -> None:
        # end it here: `start_run`'s own exit would record any exception as FAILED
        if mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED")
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except Terminated:
        log.error("terminated: the MLflow run was ended as KILLED; nothing was registered")
        raise SystemExit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_stale_runs(client: Any, experiment_id: str) -> list[str]:
    """End, as KILLED, the runs left RUNNING by trainers that no longer exist on this host.

    ``kill -9`` (or a dead node) leaves a run RUNNING for ever; each run records its trainer's
    pid and host, so the next training job can tell a dead trainer from a live one.
    """
    host = socket.gethostname()
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get(TRAINER_PID_TAG)
        if tags.get(TRAINER_HOST_TAG) != host or not (pid and pid.isdigit()):
            continue
        if int(pid) != os.getpid() and not pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            log.warning("closed stale run %s (its trainer, pid %s, is gone) as KILLED",
                        run.info.run_id, pid)  # fmt: skip
    return closed


# -- registration ------------------------------------------------------------------------------


MODEL_DESCRIPTION = (
    "Top-k movie recommender served by KServe. Each version's description is its model card; "
    "the plain numpy artefact under kserve/ is what the predictor loads (no code runs), the "
    "pyfunc model runs this project's code when loaded."
)


def model_card(
    snapshot: FeatureSnapshot, fitted: Fitted, settings: TrainSettings, gate: registry.GateResult
) -> str:
    """A short Markdown model card: data, split, metrics against baseline and champion, use."""
    k = settings.k
    source = snapshot.source
    origin = (
        f"interaction log `{(source.get('interactions_file') or {}).get('name')}`"
        if source.get("interactions_file")
        else "the watch-log simulator"
    )
    if source.get("raw_snapshot"):
        origin += f" over raw TMDB snapshot `{source['raw_snapshot']}`"
    m = fitted.metrics
    baseline = m.get(f"baseline_ndcg_at_{k}")
    champion = (
        f"{gate.champion_metric:.4f} (v{gate.champion_version})"
        if gate.champion_metric is not None
        else "none (first version)"
    )
    return "\n".join(
        [
            f"## {settings.model} on features `{snapshot.version}`",
            "",
            f"**Data**: {len(snapshot.interactions):,} interactions of "
            f"{snapshot.interactions['user_id'].nunique():,} users over "
            f"{snapshot.interactions['content_id'].nunique():,} films, from {origin}.",
            f"**Split**: per-user {fitted.protocol.value} holdout, seed {settings.seed}: "
            f"{len(fitted.train):,} train / {len(fitted.test):,} test rows.",
            "",
            f"| metric@{k} | this version | popularity | champion |",
            "|---|---|---|---|",
            f"| NDCG | {m[f'ndcg_at_{k}']:.4f} | "
            f"{'-' if baseline is None else f'{baseline:.4f}'} | {champion} |",
            f"| precision | {m[f'precision_at_{k}']:.4f} | | |",
            f"| recall | {m[f'recall_at_{k}']:.4f} | | |",
            "",
            f"**Quality gate**: {gate.detail}",
            "",
            "**Intended use**: ranking films for a known user id or an anonymous watch history "
            "on this catalog; unknown users get the popularity ranking (flagged `fallback`). "
            "Not for users or films absent from the training data, nor for any decision about "
            "people.",
        ]
    )


def register(
    client: Any,
    snapshot: FeatureSnapshot,
    fitted: Fitted,
    settings: TrainSettings,
    run_id: str,
    info: Any,
    gate: registry.GateResult,
    digest: str,
    first: bool,
) -> tuple[str, tuple[str, ...]]:
    """Register the version with its tags and card, set its aliases; return them as read back."""
    tags = {
        registry.REGISTRATION_TAG: registry.PENDING,  # until the aliases are written
        DIGEST_TAG: digest,
        "model_type": settings.model,
        "features_version": snapshot.version,
        "split_key": fitted.split_key,
        "git_sha": fitted.final.trained_on["git_sha"],
        GATE_TAG: "passed" if gate.passed else "failed",
        "quality_gate_detail": gate.detail,
        **{name: f"{value:.6f}" for name, value in fitted.metrics.items()},
    }
    registry.ensure_registered_model(client, settings.registered_model, MODEL_DESCRIPTION)
    mv = client.create_model_version(
        settings.registered_model,
        info.model_uri,
        run_id=run_id,
        tags=tags,
        description=model_card(snapshot, fitted, settings, gate),
        model_id=info.model_id,
    )
    version = str(mv.version)
    if gate.passed:
        client.set_registered_model_alias(settings.registered_model, CHALLENGER, version)
        if first and registry.alias_version(client, settings.registered_model, CHAMPION) is None:
            client.set_registered_model_alias(settings.registered_model, CHAMPION, version)
    client.set_model_version_tag(
        settings.registered_model, version, registry.REGISTRATION_TAG, registry.COMPLETE
    )
    return version, registry.aliases_of(client, settings.registered_model, version)


# -- the stage -----------------------------------------------------------------------------


def train(settings: TrainSettings) -> TrainResult:
    """Train, evaluate, log, gate and register one model version (see the module docstring)."""
    if settings.model not in MODELS:
        raise ConfigError(f"unknown model {settings.model!r}; known: {', '.join(sorted(MODELS))}")
    if not 0 <= settings.tolerance < 1:
        raise ConfigError(f"--tolerance must be in [0, 1), got {settings.tolerance}")
    uri = settings.tracking_uri
    client = registry.connect(uri, settings.connect_retries, identity=credentials.TRAINER)
    snapshot = load_features(settings.data_dir, settings.features_version)
    log.info("features %s: %d interactions, %d catalog rows", snapshot.version,
             len(snapshot.interactions), len(snapshot.catalog))  # fmt: skip
    fitted = fit_and_evaluate(snapshot, settings)

    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with registry.mlflow_errors("reading the champion", uri):
        experiment = mlflow.set_experiment(settings.experiment)
        close_stale_runs(client, experiment.experiment_id)
        champion = registry.champion_version(client, settings.registered_model)
    with registry.mlflow_errors("logging the training run", uri), _ended_on_sigterm():
        run_id, info, digest = log_run(snapshot, fitted, settings)
    with registry.mlflow_errors("comparing with the champion", uri):
        gate = registry.quality_gate(
            client,
            champion,
            fitted.metrics[f"ndcg_at_{settings.k}"],
            split_key=fitted.split_key,
            train=fitted.train,
            test=fitted.test,
            catalog=snapshot.catalog,
            k=settings.k,
            tolerance=settings.tolerance,
        )
        client.set_tag(run_id, GATE_TAG, "passed" if gate.passed else "failed")
    with registry.mlflow_errors("registering the version", uri):
        version, aliases = register(
            client, snapshot, fitted, settings, run_id, info, gate, digest, first=champion is None
        )
    if not gate.passed:
        raise QualityGateError(
            f"{settings.registered_model} version {version} failed the quality gate and got "
            f"no alias: {gate.detail}"
        )
    return TrainResult(
        version=version,
        run_id=run_id,
        metrics=fitted.metrics,
        gate_passed=gate.passed,
        aliases=aliases,
        comparison=gate.detail,
    )


# -- CLI -----------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar=DATA_DIR.name)
    ] = DATA_DIR.default_path,
    features_version: Annotated[
        str | None, typer.Option("--features-version", help="Feature snapshot (default latest).")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help=f"One of {', '.join(sorted(MODELS))}.")
    ] = BEST_MODEL,
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", envvar=MLFLOW_TRACKING_URI.name)
    ] = MLFLOW_TRACKING_URI.default,
    registered_model: Annotated[
        str, typer.Option("--registered-model", envvar=MODEL_NAME_ENV.name)
    ] = MODEL_NAME,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Cut-off of the metrics.")] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Split seed.")] = 0,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Allowed relative NDCG drop vs champion.")
    ] = 0.02,
    max_items: Annotated[
        int | None,
        typer.Option(
            "--max-items",
            min=1,
            help="EASE on the N most-interacted items only (bounds its N² memory; logged as a "
            "model parameter, so the gate refits the champion's recipe with its own bound).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a model on a feature snapshot and register it in MLflow."""
    cli.configure_logging(verbose)
    settings = TrainSettings(
        data_dir=data_dir,
        features_version=features_version,
        model=model,
        tracking_uri=tracking_uri,
        registered_model=registered_model,
        k=k,
        seed=seed,
        tolerance=tolerance,
        max_items=max_items,
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


if __name__ == "__main__":  # run the imported module, so loggers and classes keep their names
    from pipelines.train import app as _app

    _app()
