"""The MLflow model registry as training and rollout use it: reachability, aliases, the gate.

One owner for every registry hand-off:

- `connect`: bounded retries against the server's ``/health``, then an `MlflowClient` whose own
  HTTP retries are bounded too (MLflow's default retries for minutes);
- `mlflow_errors`: every `MlflowException` becomes a named error with its documented exit
  code — `TrackingUnavailableError` (8) when the server cannot be reached or fails (transport
  errors, 5xx), `TrackingRejectedError` (11) when it answers and refuses the call;
- aliases, the deployment record: ``champion`` (served at 100 %), ``previous`` (the champion it
  replaced: the rollback target), ``challenger`` (passed the gate, not promoted);
- the quality gate: a new version may not lose more than the tolerance of the champion's NDCG@k
  on the same holdout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import requests

from contracts import credentials
from contracts.names import (
    CHALLENGER,
    CHAMPION,
    EXPERIMENT_NAME,
    MODEL_NAME,
    PREVIOUS,
    QUALITY_GATE_TAG,
)
from pipelines.errors import (
    ConfigError,
    TrackingRejectedError,
    TrackingUnavailableError,
)
from pipelines.evaluate import evaluate_fitted
from recommenders import MODELS, get_trainer

log = logging.getLogger(__name__)

# MLflow's REST client retries each call with backoff for minutes by default; a stage that
# cannot reach the server must say so within seconds.
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def connect(tracking_uri: str, retries: int = 3, identity: str | None = None) -> Any:
    """An `MlflowClient` for a server that answered ``/health`` (bounded retries, then exit 8).

    ``identity`` (`contracts.credentials`): the credential this process uses when the
    environment names none — on one machine, the one `make up` generated. A ``sqlite:`` store
    (no server; what the fast tests use) is opened directly.
    """
    if identity is not None:
        from contracts.settings import LOCAL_ROOT

        credentials.use(identity, LOCAL_ROOT.path())
    if tracking_uri.startswith("sqlite:"):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI must be an MLflow server URL, got {tracking_uri!r}")
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    last: Exception | None = None
    for attempt in range(retries):
        try:
            response = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5)
            if response.status_code == 200:
                break
            last = RuntimeError(f"HTTP {response.status_code}")
        except requests.RequestException as err:
            last = err
        if attempt + 1 < retries:
            delay = 2.0**attempt
            log.warning("MLflow at %s not answering (%s); retrying in %.0f s", tracking_uri,
                        last, delay)  # fmt: skip
            time.sleep(delay)
    else:
        raise TrackingUnavailableError(
            f"MLflow at {tracking_uri} is unreachable after {retries} attempts ({last}); start it "
            "with `make up` or set MLFLOW_TRACKING_URI; nothing was changed"
        )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


_HTTP_CODE = re.compile(r"failed with error code (\d{3})")


def _unavailable(err: Exception) -> bool:
    """Whether an `MlflowException` means the server was not reached or failed (not a refusal):
    a transport error, a timeout, or a 5xx — not a 4xx such as 401/403/404."""
    message = getattr(err, "message", str(err))
    if isinstance(err.__cause__, requests.RequestException):
        return True
    code = _HTTP_CODE.search(message)
    if code is not None:
        return code.group(1).startswith("5")
    return "API request to" in message and "failed with exception" in message


@contextlib.contextmanager
def mlflow_errors(action: str, tracking_uri: str) -> Iterator[None]:
    """Turn MLflow's and the transport's exceptions into the stages' named errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if _unavailable(err):
            raise TrackingUnavailableError(
                f"lost MLflow at {tracking_uri} while {action}: {err.message}"
            ) from err
        raise TrackingRejectedError(f"MLflow refused {action}: {err.message}") from err
    except requests.RequestException as err:
        raise TrackingUnavailableError(
            f"lost MLflow at {tracking_uri} while {action}: {err}"
        ) from err


# -- aliases -----------------------------------------------------------------------------------


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at; None when the alias (or the model) does not exist.

    Only "not found" means None: any other failure raises, so that an unreachable server is
    never reported as "no version is aliased …".
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and (
            "not found" in err.message.lower() or "does not exist" in err.message.lower()
        ):
            return None
        raise


def aliases_of(client: Any, name: str, version: str) -> tuple[str, ...]:
    """The aliases a version carries, as the server reports them now (sorted)."""
    return tuple(sorted(client.get_model_version(name, version).aliases or ()))


def move_champion(client: Any, name: str, version: str) -> str | None:
    """``champion`` -> ``version``; the old champion becomes ``previous``; returns the old one.

    A promoted version is no longer a challenger: ``challenger`` is removed when it points at
    ``version``. Idempotent: moving the champion to itself changes nothing.
    """
    old = alias_version(client, name, CHAMPION)
    if old != version:
        if old is not None:
            client.set_registered_model_alias(name, PREVIOUS, old)
        client.set_registered_model_alias(name, CHAMPION, version)
        log.info("alias %s -> version %s (was %s)", CHAMPION, version, old)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return old


def restore_previous(client: Any, name: str, version: str) -> None:
    """After a rollback to ``previous``: it is ``champion`` again and nothing is ``previous``."""
    client.set_registered_model_alias(name, CHAMPION, version)
    if alias_version(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)
    log.info("alias %s -> version %s (rolled back)", CHAMPION, version)


# Set on a version at creation and cleared once its aliases are written: a version a killed
# training run left behind is recognisable (rollout refuses it without --force).
REGISTRATION_TAG, PENDING, COMPLETE = "registration", "pending", "complete"
_TRACKED_ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)


def alias_snapshot(client: Any, name: str) -> dict[str, str | None]:
    """alias -> version of the aliases rollout moves, to put them back after a failed step."""
    return {alias: alias_version(client, name, alias) for alias in _TRACKED_ALIASES}


def restore_aliases(client: Any, name: str, snapshot: dict[str, str | None]) -> None:
    """Set every alias of a snapshot back (deleting those that were unset)."""
    for alias, version in snapshot.items():
        current = alias_version(client, name, alias)
        if current == version:
            continue
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    log.info("aliases restored: %s", snapshot)


TAG_VALUE_LIMIT = 5000  # MLflow's longest model-version tag value


def tag_version(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a model version (e.g. the automated rollout's decision and its evidence).

    A value over MLflow's limit (`TAG_VALUE_LIMIT`) is cut, and says so.
    """
    limit = TAG_VALUE_LIMIT
    for key, value in tags.items():
        text = value if len(value) <= limit else value[: limit - 20] + "…[truncated]"
        client.set_model_version_tag(name, version, key, text)


def gate_passed(mv: Any) -> bool:
    """Whether a registered version passed training's quality gate (untagged: it did)."""
    return (mv.tags or {}).get(QUALITY_GATE_TAG, "passed") != "failed"


def ensure_registered_model(client: Any, name: str, description: str) -> None:
    """Create the registered model once; keep its description current."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        with contextlib.suppress(MlflowException):  # a concurrent first train created it
            client.create_registered_model(name, description=description)
            return
    client.update_registered_model(name, description=description)


# -- the quality gate --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and the numbers behind it."""

    passed: bool
    detail: str
    champion_version: str | None = None
    champion_metric: float | None = None


def champion_metric(
    client: Any,
    champion: Any,
    split_key: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    catalog: pd.DataFrame,
    k: int,
) -> tuple[float, str]:
    """NDCG@k of the champion on this holdout, and how it was obtained.

    Its logged metric when it was trained on this very split; otherwise its recipe (model type
    and parameters) refitted on this split's train part.
    """
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


def quality_gate(
    client: Any,
    champion: Any | None,
    ndcg: float,
    *,
    split_key: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    catalog: pd.DataFrame,
    k: int,
    tolerance: float,
) -> GateResult:
    """Compare a new NDCG@k with the champion's on the same holdout."""
    if champion is None:
        return GateResult(True, "first version: no champion to compare with")
    champ, how = champion_metric(client, champion, split_key, train, test, catalog, k)
    floor = champ * (1.0 - tolerance)
    passed = ndcg >= floor
    detail = (
        f"NDCG@{k}: new {ndcg:.4f} vs champion v{champion.version} {champ:.4f} ({how}); "
        f"floor {floor:.4f} at tolerance {tolerance:.0%} -> {'PASS' if passed else 'FAIL'}"
    )
    return GateResult(passed, detail, str(champion.version), champ)


def champion_version(client: Any, name: str) -> Any | None:
    """The registered version aliased ``champion``, or None."""
    version = alias_version(client, name, CHAMPION)
    return None if version is None else client.get_model_version(name, version)


# -- access: the identities of contracts.credentials and what each may do ----------------------

# identity -> (permission on the experiment, permission on the registered model)
PERMISSIONS = {
    credentials.TRAINER: ("EDIT", "EDIT"),
    # aliases are the deployment record; MLflow lets only MANAGE delete one (a promote clears
    # `challenger`, a rollback `previous`), so rollout manages the one registered model — and
    # may not write a run or an artefact
    credentials.ROLLOUT: ("READ", "MANAGE"),
    credentials.READER: ("READ", "READ"),
}


def provision(
    tracking_uri: str, users: dict[str, tuple[str, str]], experiment: str, model: str
) -> None:
    """As the admin (the environment's credential): the experiment, the registered model, and a
    user per identity with exactly its permissions. Idempotent: run again, it changes nothing
    that is already right (passwords of existing users are updated to the given ones)."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    client = connect(tracking_uri)
    auth = AuthServiceClient(tracking_uri)
    with mlflow_errors("provisioning users", tracking_uri):
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        ensure_registered_model(client, model, "Top-k movie recommender served by KServe")
        for identity, (experiment_permission, model_permission) in PERMISSIONS.items():
            username, password = users[identity]
            try:
                auth.create_user(username, password)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                auth.update_user_password(username, password)
            _grant(auth, username, "experiment", experiment_id, experiment_permission)
            _grant(auth, username, "registered_model", model, model_permission)
    log.info("MLflow users %s provisioned", ", ".join(u for u, _ in users.values()))


def _grant(auth: Any, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Exactly ``permission`` on one resource (a different existing grant is replaced)."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        current = auth.get_user_permission(username, resource_type, resource_id).permission
        if current != permission:
            auth.revoke_user_permission(username, resource_type, resource_id)
            auth.grant_user_permission(username, resource_type, resource_id, permission)


def main() -> None:
    """``python -m pipelines.registry provision``: create the users the stages run as.

    The admin's credential comes from ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``; each user's
    password from ``MLFLOW_<IDENTITY>_PASSWORD`` (a Secret in the cluster), or, on one machine,
    from ``LOCAL_ROOT``'s credential files (`make up` runs this).
    """
    import typer

    from contracts.settings import LOCAL_ROOT, MLFLOW_TRACKING_URI
    from pipelines import cli

    app = typer.Typer(add_completion=False)

    @app.command("provision")
    def provision_cmd(
        tracking_uri: str = typer.Option(
            MLFLOW_TRACKING_URI.default, "--tracking-uri", envvar=MLFLOW_TRACKING_URI.name
        ),
    ) -> None:
        cli.configure_logging(False)

        def users() -> dict[str, tuple[str, str]]:
            found = {}
            for identity in PERMISSIONS:
                password = os.environ.get(credentials.PASSWORD_ENV_OF[identity])
                local = credentials.read(LOCAL_ROOT.path(), identity)
                if password:
                    found[identity] = (identity, password)
                elif local is not None:
                    found[identity] = local
                else:
                    raise ConfigError(f"no password for MLflow user {identity!r}")
            return found

        cli.run(lambda: provision(tracking_uri, users(), EXPERIMENT_NAME, MODEL_NAME))
        typer.echo(f"provisioned MLflow users: {', '.join(PERMISSIONS)}")

    @app.callback()
    def _root() -> None:
        """Administer the MLflow registry."""

    app(prog_name="python -m pipelines.registry")


if __name__ == "__main__":  # run the imported module, so loggers keep their names
    from pipelines.registry import main as _main

    _main()
