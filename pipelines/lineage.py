"""Where an artefact came from: the code version every stage records, and the walk back.

``python -m pipelines.lineage --version N`` follows a prediction's ``X-Model-Version`` back to
the crawl (`trace`): model version → MLflow run → its training dataset → feature snapshot
manifest → raw snapshot manifest, checking each recorded digest on the way.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.credentials import READER
from contracts.files import sha256_file
from contracts.layout import MANIFEST, DataLayout
from contracts.names import MODEL_NAME
from contracts.settings import DATA_DIR, MLFLOW_TRACKING_URI
from pipelines.cli import configure_logging, run
from pipelines.errors import PipelineError

_REPO = Path(__file__).resolve().parents[1]


def git_sha() -> str:
    """$GIT_SHA (images are built with it) or the checkout's HEAD; "unknown" outside both."""
    if sha := os.environ.get("GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def code_version() -> dict[str, str | None]:
    """Package version and git sha, as manifests record them."""
    try:
        package = metadata.version("movie-mlops")
    except metadata.PackageNotFoundError:
        package = None
    return {"package": package, "git_sha": git_sha()}


# -- the walk back from a served version to the crawl ------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One link of a lineage chain: what it is, its id, and where it was found."""

    kind: str
    ident: str
    detail: str


def trace(client: Any, model_name: str, version: str, data_dir: Path) -> list[Hop]:
    """Follow a served ``X-Model-Version`` back to the crawl, checking every digest.

    version → its run → the run's training dataset (digest = feature version) → the feature
    snapshot's manifest (its sha256 as the run recorded it) → the raw snapshot's manifest (its
    sha256 as the feature manifest recorded it), or the interaction log the features came from.
    Raises `LineageError` where a link is missing or a digest does not match.
    """
    mv = client.get_model_version(model_name, version)
    hops = [Hop("model version", f"{model_name}/{mv.version}", f"run {mv.run_id}")]
    run = client.get_run(mv.run_id)
    commit = run.data.tags.get("mlflow.source.git.commit", "unknown")
    hops.append(Hop("run", mv.run_id, f"git commit {commit}"))
    training = [
        d for d in run.inputs.dataset_inputs if _tags(d).get("mlflow.data.context") == "training"
    ]
    if not training:
        raise LineageError(f"run {mv.run_id} logged no training dataset")
    dataset, tags = training[0].dataset, _tags(training[0])
    features_version = dataset.digest
    hops.append(Hop("dataset", dataset.name, f"digest {dataset.digest}, source {dataset.source}"))

    data = DataLayout(data_dir)
    manifest_path = data.feature_snapshot(features_version) / MANIFEST
    if not manifest_path.is_file():
        raise LineageError(f"feature snapshot {features_version} not found at {manifest_path}")
    if sha256_file(manifest_path) != tags.get("features_manifest_sha256"):
        raise LineageError(f"{manifest_path} does not match the digest run {mv.run_id} recorded")
    manifest = json.loads(manifest_path.read_text())
    hops.append(Hop("feature snapshot", features_version, str(manifest_path)))

    source = manifest.get("source") or {}
    raw = source.get("raw_snapshot")
    if raw:
        raw_path = data.raw / raw / MANIFEST
        if not raw_path.is_file():
            raise LineageError(f"raw snapshot {raw} not found at {raw_path}")
        if sha256_file(raw_path) != source.get("raw_manifest_sha256"):
            raise LineageError(f"{raw_path} does not match the digest {features_version} recorded")
        raw_manifest = json.loads(raw_path.read_text())
        hops.append(
            Hop(
                "raw snapshot",
                raw,
                f"{raw_manifest.get('source', {}).get('base_url', '?')} pages "
                f"{raw_manifest.get('params', {}).get('start_page', '?')}.."
                f"{raw_manifest.get('params', {}).get('end_page', '?')}, "
                f"finished {raw_manifest.get('finished_at', '?')}",
            )
        )
    log_file = source.get("interactions_file")
    if log_file:
        hops.append(Hop("interaction log", log_file["name"], f"sha256 {log_file['sha256']}"))
    return hops


def _tags(dataset_input: Any) -> dict[str, str]:
    return {t.key: t.value for t in dataset_input.tags or []}


class LineageError(PipelineError):
    """A link of the lineage chain is missing or does not match its recorded digest."""

    exit_code = 3


app = typer.Typer(add_completion=False, help="Follow a served model version back to the crawl.")


@app.command()
def main(
    version: Annotated[
        str, typer.Option("--version", help="Registered version (X-Model-Version).")
    ],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar=DATA_DIR.name)
    ] = DATA_DIR.default_path,
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", envvar=MLFLOW_TRACKING_URI.name)
    ] = MLFLOW_TRACKING_URI.default,
    model_name: Annotated[str, typer.Option("--model-name", envvar="MODEL_NAME")] = MODEL_NAME,
) -> None:
    """Print the chain version → run → dataset → feature snapshot → raw snapshot."""
    from pipelines import registry

    configure_logging(False)

    def walk() -> list[Hop]:
        client = registry.connect(tracking_uri, identity=READER)
        with registry.mlflow_errors(f"reading version {version}", tracking_uri):
            return trace(client, model_name, version, data_dir)

    for hop in run(walk):
        typer.echo(f"  {hop.kind:<17} {hop.ident:<40} {hop.detail}")


if __name__ == "__main__":  # run the imported module, so loggers keep their names
    from pipelines.lineage import app as _app

    _app()
