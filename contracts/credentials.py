"""MLflow identities and where a component finds its credential.

The MLflow server runs with its basic-auth app; every caller authenticates, and each component
has its own identity with only the permissions it needs:

- ``trainer`` (`pipelines.train`): edits the experiment and the registered model;
- ``rollout`` (`pipelines.rollout`): reads the experiment, manages the registered model (its
  aliases are the deployment record; deleting an alias takes MLflow's MANAGE);
- ``reader`` (the predictor's ``models:/`` URIs, `pipelines.lineage`, people): reads both;
- ``admin`` (`make up`, which creates the others; the MLflow UI): everything.

A credential comes from the environment (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, which MLflow's client reads; in the cluster from a Secret). On one
machine `make up` generates one per identity on first start and keeps it in
``.local/secrets/mlflow-<identity>.json`` (mode 0600, never printed); `use` puts it into the
environment of the process that needs it when the environment names none.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"

ADMIN, TRAINER, ROLLOUT, READER = "admin", "trainer", "rollout", "reader"
IDENTITIES = (ADMIN, TRAINER, ROLLOUT, READER)
# MLflow's cache of verified credentials (``auth_cache_ttl_seconds`` in basic_auth.ini, local and
# in the cluster's ConfigMap): a password is checked with PBKDF2 at most once a minute per process
# (successes only, keyed by an HMAC with a per-process key) instead of on every request
AUTH_CACHE_TTL_S = 60
# where `python -m pipelines.registry provision` finds each user's password (a Secret's key)
PASSWORD_ENV_OF = {
    TRAINER: "MLFLOW_TRAINER_PASSWORD",
    ROLLOUT: "MLFLOW_ROLLOUT_PASSWORD",
    READER: "MLFLOW_READER_PASSWORD",
}


def secrets_dir(local_root: Path) -> Path:
    return Path(local_root) / "secrets"


def credential_file(local_root: Path, identity: str) -> Path:
    return secrets_dir(local_root) / f"mlflow-{identity}.json"


def read(local_root: Path, identity: str) -> tuple[str, str] | None:
    """(username, password) of a local identity, or None when `make up` has not made it."""
    try:
        data = json.loads(credential_file(local_root, identity).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return str(data["username"]), str(data["password"])


def ensure(local_root: Path) -> dict[str, tuple[str, str]]:
    """Every local identity's credential, generating (0600) those that do not exist yet."""
    folder = secrets_dir(local_root)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    found = {}
    for identity in IDENTITIES:
        current = read(local_root, identity)
        if current is None:
            current = (identity, secrets.token_urlsafe(24))
            path = credential_file(local_root, identity)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"username": current[0], "password": current[1]}, fh)
            os.replace(tmp, path)
        found[identity] = current
    return found


def use(identity: str, local_root: Path, env: MutableMapping[str, str] | None = None) -> str | None:
    """Put a local identity's credential into ``env`` (default: this process's environment)
    unless it already names one; returns the username in effect (None: no credential)."""
    target = os.environ if env is None else env
    if target.get(USERNAME_ENV):
        return target[USERNAME_ENV]
    found = read(local_root, identity)
    if found is None:
        return None
    target[USERNAME_ENV], target[PASSWORD_ENV] = found
    return found[0]
