"""Where shared state lives on disk: the data directory and the local stack's root.

Data directory (``DATA_DIR``; a PVC at ``/data`` in the cluster)::

    raw/<id>/            movies.parquet, quarantine.jsonl, genres.json, manifest.json
    raw/latest           text file: the id of the current raw snapshot
    features/<version>/  catalog.parquet, interactions.parquet, rating_vs_watch.png, manifest.json
                         (+ exposures.parquet when built with --events)
    features/latest
    events/<kind>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet   the prediction log and feedback
                         (kind: request, response, impression, click; `contracts.events`)

Every snapshot directory is immutable and holds a ``manifest.json`` (written last) with the
SHA-256 of every file; ``latest`` is replaced atomically (`pipelines.snapshots` writes both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
LATEST = "latest"

# raw TMDB snapshot files
RAW_MOVIES = "movies.parquet"
RAW_QUARANTINE = "quarantine.jsonl"
RAW_GENRES = "genres.json"

# feature snapshot files
FEATURES_CATALOG = "catalog.parquet"
FEATURES_INTERACTIONS = "interactions.parquet"
FEATURES_PLOT = "rating_vs_watch.png"
FEATURES_EXPOSURES = "exposures.parquet"  # only in snapshots built with --events


def read_pointer(root: Path) -> str | None:
    """The id ``root/latest`` names, or None when nothing was published there yet."""
    try:
        value = (Path(root) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


@dataclass(frozen=True)
class DataLayout:
    """The folders of one data directory."""

    root: Path

    @property
    def raw(self) -> Path:
        return Path(self.root) / "raw"

    @property
    def features(self) -> Path:
        return Path(self.root) / "features"

    def feature_snapshot(self, version: str) -> Path:
        return self.features / version


@dataclass(frozen=True)
class StackLayout:
    """The local stack's state under ``LOCAL_ROOT``."""

    root: Path

    @property
    def mlflow(self) -> Path:
        return Path(self.root) / "mlflow"

    @property
    def artifacts(self) -> Path:
        """The local stand-in for the cluster's ``mlflow-artifacts`` PVC."""
        return self.mlflow / "artifacts"

    @property
    def run(self) -> Path:
        """Pid files."""
        return Path(self.root) / "run"

    @property
    def logs(self) -> Path:
        return Path(self.root) / "logs"

    @property
    def stack(self) -> Path:
        return Path(self.root) / "stack"

    @property
    def isvc_file(self) -> Path:
        """The local InferenceService: the document the rollout tool writes."""
        return self.stack / "inferenceservice.json"

    @property
    def status_file(self) -> Path:
        """Its status, as the local controller observes it (KServe's shape)."""
        return self.stack / "status.json"

    @property
    def controller_file(self) -> Path:
        """The local controller's own record: revisions and which one is rolled out."""
        return self.stack / "controller.json"

    @property
    def rollout_lock(self) -> Path:
        """Held by a rollout command for its whole read-modify-write-wait."""
        return self.stack / "rollout.lock"

    @property
    def prometheus(self) -> Path:
        """The local Prometheus: its generated config, scrape targets and storage."""
        return Path(self.root) / "prometheus"

    @property
    def revision_targets(self) -> Path:
        """The model-server revisions to scrape (Prometheus file_sd), written by the controller."""
        return self.prometheus / "targets" / "model-server.json"
