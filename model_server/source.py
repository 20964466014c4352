"""Where the artefact to serve comes from: a local directory, or a registered MLflow version.

``models:/<name>/<version>`` (or ``models:/<name>@<alias>``) is resolved through the MLflow
tracking server: the registered version's ``run_id`` names the run, whose artefacts under
``kserve/`` (what the training job logs with ``mlflow.log_artifacts(dir, "kserve")``) are the
plain numpy artefact. They are downloaded once into ``<cache_dir>/<name>/<version>/``; a later
start reuses that copy if its checksums still verify.

The cache is private to the user running the server (`private_cache`): a cached artefact
carries its own ``checksums.json``, so whoever can write into the cache can choose what is
served. It is created 0700, and a cache directory another user owns, that group or others may
write to, or that is a symlink is refused.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contracts import credentials
from contracts.names import ARTIFACT_PATH
from contracts.settings import LOCAL_ROOT
from model_server.errors import ModelSourceError

log = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?")


@dataclass(frozen=True)
class ResolvedModel:
    """A local artefact directory and the registered version it is (None for a plain dir)."""

    directory: Path
    version: str | None


def private_cache(directory: Path) -> Path:
    """``directory``, created 0700 if missing; `ModelSourceError` unless it is this user's own.

    Refused: a symlink or not a directory, owned by another user, or writable by group or
    others.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as err:
        raise ModelSourceError(f"cannot create the model cache {directory}: {err}") from err
    uid = os.getuid()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ModelSourceError(f"the model cache {directory} is a symlink or not a directory")
    if info.st_uid != uid:
        raise ModelSourceError(
            f"the model cache {directory} belongs to uid {info.st_uid}, not to this user "
            f"({uid}): anyone who can write there chooses the model served; remove it or "
            "give --model_cache_dir / MODEL_CACHE_DIR"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ModelSourceError(
            f"the model cache {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}): anyone who can write there chooses the "
            f"model served; chmod 700 {directory}"
        )
    return directory


def resolve_models_uri(uri: str, tracking_uri: str, cache_dir: Path) -> ResolvedModel:
    """Download (or reuse) the ``kserve`` artefacts of the run behind a registered version."""
    match = _MODELS_URI.fullmatch(uri)
    if not match:
        raise ModelSourceError(
            f"--model_uri {uri!r} is not models:/<name>/<version> or models:/<name>@<alias>"
        )
    cache = private_cache(cache_dir)  # before anything is fetched: a bad cache is never used
    import mlflow.artifacts  # heavy; only this path needs it
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from recommenders import verify_artifact
    from recommenders.errors import ArtifactError

    name = match["name"]
    credentials.use(credentials.READER, LOCAL_ROOT.path())  # env (a Secret) wins; else `make up`'s
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if match["version"]:
            registered = client.get_model_version(name, match["version"])
        else:
            registered = client.get_model_version_by_alias(name, match["alias"])
    except MlflowException as err:
        raise ModelSourceError(f"cannot resolve {uri} at {tracking_uri}: {err}") from err
    version = str(registered.version)
    if not registered.run_id:
        raise ModelSourceError(f"{uri} (version {version}) has no run_id to fetch artefacts from")
    target = cache / name / version
    if target.is_dir():
        try:
            verify_artifact(target)
            log.info("using cached artefact of %s version %s at %s", name, version, target)
            return ResolvedModel(target, version)
        except ArtifactError as err:
            log.warning("cached artefact %s is unusable (%s); downloading again", target, err)
            shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        log.info("downloading run %s artefacts %s/ for %s", registered.run_id, ARTIFACT_PATH, uri)
        local = mlflow.artifacts.download_artifacts(
            run_id=registered.run_id,
            artifact_path=ARTIFACT_PATH,
            dst_path=str(staging),
            tracking_uri=tracking_uri,
        )
        os.replace(local, target)  # publish whole, so a half download is never reused
    except MlflowException as err:
        raise ModelSourceError(
            f"cannot download {ARTIFACT_PATH}/ of run {registered.run_id} ({uri}): {err}"
        ) from err
    except OSError as err:
        raise ModelSourceError(f"cannot store the artefact of {uri} in {target}: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ResolvedModel(target, version)
