"""Whoever reaches MLflow must not decide what users are served: authentication, identities
with only their permissions, credentials kept out of sight, and artefacts verified against the
digest recorded at registration — on a real local stack.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from contracts import credentials
from contracts.files import sha256_file
from contracts.names import CHAMPION, DIGEST_TAG
from tests.support.stack import (
    MODEL,
    Session,
    observed,
    registered_version,
    revision_of,
    serve_only,
    served_versions,
    train_two_versions,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def versions(stack: Session) -> dict[str, str]:
    return train_two_versions(stack)


def client_as(stack: Session, identity: str):
    """An MlflowClient authenticated as one of the stack's identities (this process only)."""
    from mlflow import MlflowClient

    username, password = credentials.read(stack.settings.root, identity)  # type: ignore[misc]
    os.environ[credentials.USERNAME_ENV], os.environ[credentials.PASSWORD_ENV] = username, password
    return MlflowClient(tracking_uri=stack.settings.mlflow_url)


@pytest.fixture
def as_admin(stack: Session):
    yield
    client_as(stack, credentials.ADMIN)  # later tests read MLflow as the admin again


def test_unauthenticated_calls_are_refused(stack: Session, versions: dict[str, str]) -> None:
    url = f"{stack.settings.mlflow_url}/api/2.0/mlflow/registered-models/get"
    assert requests.get(url, params={"name": MODEL}, timeout=10).status_code == 401
    wrong = requests.get(url, params={"name": MODEL}, auth=("reader", "nope"), timeout=10)
    assert wrong.status_code == 401
    alias = f"{stack.settings.mlflow_url}/api/2.0/mlflow/registered-models/alias"
    body = {"name": MODEL, "alias": CHAMPION, "version": versions["second"]}
    assert requests.post(alias, json=body, timeout=10).status_code == 401


def test_each_identity_has_only_its_permissions(
    stack: Session, versions: dict[str, str], as_admin: None
) -> None:
    from mlflow.exceptions import MlflowException

    reader = client_as(stack, credentials.READER)
    assert reader.get_model_version(MODEL, versions["first"]).version == versions["first"]
    with pytest.raises(MlflowException, match=r"Permission denied|PERMISSION_DENIED|403"):
        reader.set_registered_model_alias(MODEL, CHAMPION, versions["second"])
    rollout = client_as(stack, credentials.ROLLOUT)
    run_id = rollout.get_model_version(MODEL, versions["first"]).run_id
    with pytest.raises(MlflowException, match=r"Permission denied|PERMISSION_DENIED|403"):
        rollout.set_tag(run_id, "tampered", "yes")  # rollout writes no run
    # a CLI refused by MLflow says so with its own exit code, not "unreachable", and the
    # registry is decided first: a refused promotion moves no traffic
    serve_only(stack, versions["first"])
    reader_password = credentials.read(stack.settings.root, credentials.READER)[1]  # type: ignore[index]
    proc = stack.run(
        "pipelines.rollout", "canary", "--version", versions["second"], "--percent", "100",
        check=False,
        env={credentials.USERNAME_ENV: credentials.READER,
             credentials.PASSWORD_ENV: reader_password},
    )  # fmt: skip
    assert proc.returncode == 11, proc.stderr
    assert "MLflow refused" in proc.stderr and "unreachable" not in proc.stderr
    assert served_versions(stack, 20) == {versions["first"]}


def test_credentials_are_private_and_never_shown(stack: Session, versions: dict[str, str]) -> None:
    folder = credentials.secrets_dir(stack.settings.root)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    passwords = []
    for identity in credentials.IDENTITIES:
        path = credentials.credential_file(stack.settings.root, identity)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords.append(json.loads(path.read_text())["password"])
    logs = [p for p in stack.settings.logs_dir.rglob("*") if p.is_file()]
    for text in [p.read_text(errors="replace") for p in logs]:
        assert not any(pw in text for pw in passwords)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert not any(pw in cmdline for pw in passwords)
    ini = (stack.settings.mlflow_dir / "basic_auth.ini").read_text()
    assert not any(pw in ini for pw in passwords)


def _tamper(artefact: Path) -> None:
    """Rewrite the arrays and the checksums consistently, as an attacker with write access would."""
    arrays = dict(np.load(artefact / "arrays.npz", allow_pickle=False))
    arrays["top_scores"] = arrays["top_scores"][:, ::-1].copy()
    arrays["top_cols"] = arrays["top_cols"][:, ::-1].copy()
    tampered = artefact.parent / "tampered"
    tampered.mkdir(exist_ok=True)
    with (tampered / "arrays.npz").open("wb") as fh:
        np.savez(fh, **arrays)
    checksums = json.loads((artefact / "checksums.json").read_text())
    checksums["files"]["arrays.npz"] = sha256_file(tampered / "arrays.npz")
    (tampered / "checksums.json").write_text(json.dumps(checksums, indent=2, sort_keys=True))


def test_an_artefact_rewritten_after_registration_never_reaches_a_user(
    stack: Session, versions: dict[str, str], as_admin: None
) -> None:
    # a version of its own: the rewritten files stay behind in its run
    first = registered_version(stack.run("pipelines.train").stdout)
    serve_only(stack, first)
    served = stack.predict([{"user_id": 1, "k": 10}]).json()["predictions"][0]["content_ids"]
    client = client_as(stack, credentials.TRAINER)  # may write runs: the strongest identity
    mv = client.get_model_version(MODEL, first)
    run = client.get_run(mv.run_id)
    local = Path(
        run.info.artifact_uri.replace("mlflow-artifacts:", str(stack.settings.artifacts_dir))
    )
    _tamper(local / "kserve")
    # over HTTP, through MLflow's own artefact API: same version, same paths, new bytes
    for name in ("arrays.npz", "checksums.json"):
        client.log_artifact(mv.run_id, str(local / "tampered" / name), "kserve")
    assert mv.tags[DIGEST_TAG]  # recorded at registration, before the rewrite
    tampered = sha256_file(local / "tampered" / "arrays.npz")
    assert sha256_file(local / "kserve" / "arrays.npz") == tampered  # the store was rewritten
    victim = revision_of(stack, first)
    os.kill(victim["pid"], signal.SIGKILL)  # the restart loads the files again
    wait_for(
        "refused",
        lambda: "digest" in revision_of(stack, first)["message"]
        and revision_of(stack, first)["restarts"] >= 1,
        60,
    )
    for _ in range(20):
        response = stack.predict([{"user_id": 1, "k": 10}])
        if response.status_code == 200:  # only ever the registered ranking
            assert response.json()["predictions"][0]["content_ids"] == served
        else:
            assert response.status_code == 503
    assert observed(stack)["conditions"][0]["status"] == "False"
    serve_only(stack, versions["first"])  # what the operator does: serve a sound version
