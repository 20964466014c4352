"""Canary, promote, rollback and the quality gate, fast: a real MLflow registry on a sqlite file
(no server) and an InferenceService reconciled in memory with KServe's traffic rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from contracts.names import CHALLENGER, CHAMPION, DIGEST_TAG, PREVIOUS
from pipelines import registry
from pipelines.errors import ConfigError, RolloutError
from pipelines.rollout import RolloutSettings, canary, promote, rollback
from tests.support.inmemory import InMemoryBackend

_names = itertools.count()


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def experiment(tracking_uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # the artefact root a `mlflow server --serve-artifacts` gives runs
    return client.create_experiment("rollout-tests", artifact_location="mlflow-artifacts:/7")


class Registry:
    """One registered model of the sqlite store, for one test."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.client = registry.connect(uri)
        self.experiment = experiment
        self.name = f"model-{next(_names)}"
        self.client.create_registered_model(self.name)

    def register(self, gate: str = "passed", **tags: str) -> str:
        run = self.client.create_run(self.experiment)
        mv = self.client.create_model_version(
            self.name,
            f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            tags={"quality_gate": gate, DIGEST_TAG: f"sha256:{run.info.run_id}", **tags},
        )
        if gate == "passed":
            self.client.set_registered_model_alias(self.name, CHALLENGER, mv.version)
        return str(mv.version)

    def alias(self, alias: str) -> str | None:
        return registry.alias_version(self.client, self.name, alias)

    def aliases(self, version: str) -> list[str]:
        return sorted(self.client.get_model_version(self.name, version).aliases)


@pytest.fixture
def reg(tracking_uri: str, experiment: str) -> Registry:
    return Registry(tracking_uri, experiment)


@pytest.fixture
def settings(reg: Registry, tracking_uri: str, tmp_path: Path) -> RolloutSettings:
    return RolloutSettings(
        model_name=reg.name, tracking_uri=tracking_uri, local_root=tmp_path, timeout=5
    )


@pytest.fixture
def backend() -> Iterator[InMemoryBackend]:
    return InMemoryBackend()


def test_the_first_rollout_takes_all_traffic_and_becomes_champion(reg, settings, backend) -> None:
    v1 = reg.register()
    canary(settings, backend, v1, percent=10)  # nothing rolled out yet: KServe ignores the share
    assert backend.served() == {v1: 100}
    assert reg.alias(CHAMPION) == v1
    assert reg.aliases(v1) == [CHAMPION]  # promoted: no longer a challenger


def test_canary_promote_and_rollback_move_traffic_and_aliases_together(
    reg, settings, backend
) -> None:
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2)  # the local step: 50 %
    assert backend.served() == {v1: 50, v2: 50}
    assert reg.alias(CHAMPION) == v1 and reg.alias(CHALLENGER) == v2

    promote(settings, backend)
    assert backend.served() == {v2: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS), reg.alias(CHALLENGER)) == (v2, v1, None)

    rollback(settings, backend)  # after a promote: back to `previous`
    assert backend.served() == {v1: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v1, None)
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback(settings, backend)


def test_rollback_during_a_canary_pins_the_stable_revision(reg, settings, backend) -> None:
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2, percent=30)
    assert backend.served() == {v1: 70, v2: 30}
    rollback(settings, backend)
    assert backend.served() == {v1: 100}
    assert reg.alias(CHAMPION) == v1
    with pytest.raises(RolloutError, match="rolled back"):
        promote(settings, backend)


def test_a_version_that_failed_its_gate_is_refused_unless_forced(reg, settings, backend) -> None:
    v1 = reg.register()
    bad = reg.register(gate="failed", quality_gate_detail="NDCG@10: new 0.01 vs 0.19 -> FAIL")
    canary(settings, backend, v1)
    writes = backend.writes
    with pytest.raises(RolloutError, match=r"failed its quality gate .*NDCG@10.*--force"):
        canary(settings, backend, bad)
    assert backend.writes == writes  # nothing was written
    canary(settings, backend, bad, force=True)
    assert backend.served() == {v1: 50, bad: 50}


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5", ""])
def test_a_version_that_is_not_a_number_is_a_usage_error(value, settings, backend) -> None:
    with pytest.raises(ConfigError, match="--version must be a registered version number"):
        canary(settings, backend, value)
    assert backend.isvc is None


def test_a_version_that_does_not_exist_is_named(reg, settings, backend) -> None:
    from pipelines.errors import TrackingRejectedError

    with pytest.raises(TrackingRejectedError, match="version 999"):
        canary(settings, backend, "999")
    assert backend.isvc is None


def test_a_revision_that_never_becomes_ready_fails_the_step(reg, settings) -> None:
    v1, v2 = reg.register(), reg.register()
    backend = InMemoryBackend()
    canary(settings, backend, v1)
    run_id = reg.client.get_model_version(reg.name, v2).run_id
    backend.failing = {f"pvc://mlflow-artifacts/7/{run_id}/artifacts/kserve"}  # v2's artefact
    with pytest.raises(RolloutError, match="revision failed"):
        canary(settings, backend, v2)
    assert backend.served() == {v1: 100}
    assert reg.alias(CHAMPION) == v1


# -- the gate ----------------------------------------------------------------------------------


class _Champion:
    def __init__(self, version: str, tags: dict[str, Any]) -> None:
        self.version, self.tags, self.run_id = version, tags, None


def _gate(champion: Any, ndcg: float, tolerance: float = 0.02) -> registry.GateResult:
    empty = pd.DataFrame()
    return registry.quality_gate(
        None, champion, ndcg, split_key="fs-1:time:0", train=empty, test=empty,
        catalog=empty, k=10, tolerance=tolerance,
    )  # fmt: skip


def test_the_gate_passes_the_first_version() -> None:
    result = _gate(None, 0.01)
    assert result.passed and "first version" in result.detail


def test_the_gate_compares_with_the_champion_on_the_same_split() -> None:
    champion = _Champion("3", {"split_key": "fs-1:time:0", "ndcg_at_10": "0.2000"})
    assert _gate(champion, 0.1961).passed  # within 2 %
    failed = _gate(champion, 0.1959)
    assert not failed.passed
    assert "new 0.1959 vs champion v3 0.2000 (its logged metric (same split))" in failed.detail
    assert "floor 0.1960" in failed.detail and failed.detail.endswith("FAIL")


# -- registry first, then traffic; failures leave both consistent ------------------------------


def _artefact_uri(reg: Registry, version: str) -> str:
    run_id = reg.client.get_model_version(reg.name, version).run_id
    return f"pvc://mlflow-artifacts/7/{run_id}/artifacts/kserve"


def test_a_full_rollout_whose_revision_fails_puts_the_aliases_back(reg, settings) -> None:
    v1, v2 = reg.register(), reg.register()
    backend = InMemoryBackend()
    canary(settings, backend, v1)
    before = registry.alias_snapshot(reg.client, reg.name)
    backend.failing = {_artefact_uri(reg, v2)}
    with pytest.raises(RolloutError, match=f"champion stays version {v1}"):
        canary(settings, backend, v2, percent=100)
    assert backend.served() == {v1: 100}
    assert registry.alias_snapshot(reg.client, reg.name) == before  # challenger v2 too


def test_promote_refuses_a_canary_that_is_not_serving_its_share(reg, settings) -> None:
    v1, v2 = reg.register(), reg.register()
    backend = InMemoryBackend()
    canary(settings, backend, v1)
    backend.failing = {_artefact_uri(reg, v2)}
    with pytest.raises(RolloutError, match="revision failed"):
        canary(settings, backend, v2)
    writes = backend.writes
    with pytest.raises(RolloutError, match=r"not promoting: the canary revision .* is not ready"):
        promote(settings, backend)
    assert backend.writes == writes and reg.alias(CHAMPION) == v1


def test_a_version_whose_registration_did_not_finish_is_refused(reg, settings, backend) -> None:
    v1 = reg.register(gate="passed", registration="pending")
    with pytest.raises(RolloutError, match="did not finish"):
        canary(settings, backend, v1)
    canary(settings, backend, v1, force=True)
    assert backend.served() == {v1: 100}


def test_rollback_finishes_an_interrupted_rollback(reg, settings, backend) -> None:
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2, percent=100)
    # what a rollback killed between its registry write and its traffic write leaves behind
    registry.restore_previous(reg.client, reg.name, v1)
    assert backend.served() == {v2: 100}
    rollback(settings, backend)
    assert backend.served() == {v1: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v1, None)


def test_promote_twice_is_harmless(reg, settings, backend) -> None:
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2)
    promote(settings, backend)
    promote(settings, backend)  # a rerun after success: nothing to do, nothing breaks
    assert backend.served() == {v2: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v2, v1)


def test_the_digest_recorded_at_registration_goes_into_the_inferenceservice(
    reg, settings, backend
) -> None:
    v1 = reg.register()
    canary(settings, backend, v1)
    env = {
        e["name"]: e["value"] for e in backend.get()["spec"]["predictor"]["containers"][0]["env"]
    }
    assert env["MODEL_DIGEST"] == reg.client.get_model_version(reg.name, v1).tags[DIGEST_TAG]


def test_a_version_without_a_recorded_digest_is_refused_unless_forced(
    reg, settings, backend
) -> None:
    v1 = reg.register()
    reg.client.delete_model_version_tag(reg.name, v1, DIGEST_TAG)
    with pytest.raises(RolloutError, match="no recorded artefact digest"):
        canary(settings, backend, v1)
    canary(settings, backend, v1, force=True)
    env = backend.get()["spec"]["predictor"]["containers"][0]["env"]
    assert "MODEL_DIGEST" not in {e["name"] for e in env}


# -- KServe's own rollback and the rollout wait (issue #10, points 4 and 5) ---------------------


def _predictor(backend: InMemoryBackend) -> dict:
    return backend.status()["components"]["predictor"]


def _entries(backend: InMemoryBackend) -> list[tuple[str, int, str | None]]:
    return [(t["modelVersion"], t["percent"], t.get("tag")) for t in _predictor(backend)["traffic"]]


def test_rollback_after_a_promote_routes_back_without_a_new_revision(reg, settings, backend):
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2)
    promote(settings, backend)
    assert _entries(backend) == [(v2, 100, "latest")]  # no `prev` outside a canary
    before = _predictor(backend)
    rollback(settings, backend)
    after = _predictor(backend)
    assert after["latestCreatedRevision"] == before["latestCreatedRevision"]  # no new revision
    assert after["latestRolledoutRevision"] == before["previousRolledoutRevision"]
    assert after["previousRolledoutRevision"] == before["previousRolledoutRevision"]
    assert _entries(backend) == [(v2, 0, "latest"), (v1, 100, "prev")]
    assert backend.get()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v1, None)  # what is served
    # the next canary splits with the revision that serves, and its promote keeps the record
    v3 = reg.register()
    canary(settings, backend, v3)
    assert _entries(backend) == [(v3, 50, "latest"), (v1, 50, "prev")]
    promote(settings, backend)
    assert backend.served() == {v3: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v3, v1)


def test_rollback_makes_a_new_revision_when_kserve_has_no_previous_revision(
    reg, settings, backend
) -> None:
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2, percent=100)
    created = _predictor(backend)["latestCreatedRevision"]
    backend.kserve.previous_rolled_out = None  # e.g. the InferenceService was recreated
    backend.apply(backend.get())  # (an unchanged write: reconciled, no generation)
    rollback(settings, backend)
    assert _predictor(backend)["latestCreatedRevision"] != created
    assert backend.served() == {v1: 100} and reg.alias(CHAMPION) == v1
    assert "canaryTrafficPercent" not in backend.get()["spec"]["predictor"]


def test_a_second_rollback_after_a_rolled_back_canary_needs_a_new_revision(
    reg, settings, backend
) -> None:
    v1, v2, v3 = reg.register(), reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2, percent=100)  # champion v2, previous v1
    canary(settings, backend, v3)
    rollback(settings, backend)  # the canary: traffic back on v2
    assert backend.served() == {v2: 100}
    rollback(settings, backend)  # then v2 itself: its template is not v1's any more
    assert backend.served() == {v1: 100}
    assert (reg.alias(CHAMPION), reg.alias(PREVIOUS)) == (v1, None)
    assert _predictor(backend)["latestCreatedRevision"].endswith("00004")


def test_a_canary_of_the_rolled_out_version_is_refused(reg, settings, backend) -> None:
    v1 = reg.register()
    canary(settings, backend, v1)
    writes = backend.writes
    with pytest.raises(RolloutError, match="already rolled out"):
        canary(settings, backend, v1, percent=30)
    assert backend.writes == writes


def test_the_wait_does_not_hang_when_the_knative_service_does_not_change(
    reg, settings, backend
) -> None:
    from pipelines.rollout.steps import Expected, wait_rollout

    v1 = reg.register()
    canary(settings, backend, v1)
    isvc = backend.get()
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 100  # same ksvc as no percent at all
    applied = backend.apply(isvc)
    status = wait_rollout(backend, Expected(percent=100), timeout=2)
    # the InferenceService's generation moved, the Knative Service's did not: comparing the two
    # counters would wait forever
    assert status["observedGeneration"] < applied["metadata"]["generation"]


class LaggingBackend(InMemoryBackend):
    """The API server answers at once; the controllers reconcile a few reads later."""

    def __init__(self) -> None:
        super().__init__()
        self.behind = 0

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        status = self.status()
        applied = super().apply(isvc)
        if self.isvc is not None and status is not None:
            self.isvc["status"], self.behind = status, 3
        return applied

    def status(self) -> dict[str, Any] | None:
        if self.behind:
            self.behind -= 1
            if not self.behind:
                self._reconcile()
        return super().status()


def test_the_wait_never_passes_on_a_stale_ready(reg, settings) -> None:
    backend = LaggingBackend()
    v1, v2 = reg.register(), reg.register()
    canary(settings, backend, v1)
    # an annotation edit (kubectl annotate): a new revision and a ksvc generation, no ISVC one
    isvc = backend.get()
    isvc["metadata"]["annotations"]["example.com/owner"] = "team-a"
    backend.apply(isvc)
    for _ in range(3):  # reconciled
        stale = backend.status()
    old = stale["components"]["predictor"]["latestCreatedRevision"]
    status = canary(settings, backend, v2)
    # the stale status said Ready at a generation >= the InferenceService's: a counter
    # comparison would have returned it
    assert stale["observedGeneration"] >= backend.get()["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in stale["conditions"]}["Ready"] == "True"
    assert status["components"]["predictor"]["latestCreatedRevision"] != old
    assert backend.served() == {v1: 50, v2: 50}


def test_a_canary_after_a_rollback_never_sends_its_share_to_the_rolled_back_version(
    reg, settings, backend
) -> None:
    from pipelines.rollout.steps import artefact_of

    v1, v2, v3 = reg.register(), reg.register(), reg.register()
    canary(settings, backend, v1)
    canary(settings, backend, v2, percent=100)
    rollback(settings, backend)  # v2's revision stays Knative's latest ready one
    backend.failing.add(artefact_of(reg.client, settings, v3, force=True)[0])
    with pytest.raises(RolloutError, match="the new revision failed"):
        canary(settings, backend, v3)
    # started at 0 % first: the failed canary's share did not fall back to v2
    assert backend.served() == {v1: 100}


def test_the_local_document_s_generation_moves_with_its_spec_only(tmp_path: Path) -> None:
    from pipelines.rollout import LocalBackend
    from pipelines.rollout.document import new_inferenceservice

    backend = LocalBackend(tmp_path, "movie-recommender")
    assert backend.apply(new_inferenceservice("movie-recommender"))["metadata"]["generation"] == 1
    assert backend.apply(backend.get())["metadata"]["generation"] == 1  # unchanged: no bump
    annotated = backend.get()
    annotated["metadata"]["annotations"]["example.com/owner"] = "team-a"
    assert backend.apply(annotated)["metadata"]["generation"] == 1  # metadata is not the spec
    changed = backend.get()
    changed["spec"]["predictor"]["canaryTrafficPercent"] = 0
    assert backend.apply(changed)["metadata"]["generation"] == 2
    assert backend.get()["metadata"]["generation"] == 2


# -- `rollout auto`: what it refuses before changing anything ----------------------------------


def _closed_prometheus():
    from localstack.processes import free_port
    from pipelines.rollout.analysis import Prometheus

    return Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1)  # nothing listens there


def test_auto_refuses_a_gate_failed_version_unless_forced_and_writes_nothing(
    reg, settings, backend
) -> None:
    from pipelines.rollout import auto

    canary(settings, backend, reg.register())
    bad = reg.register(gate="failed", quality_gate_detail="NDCG@10: new 0.01 -> FAIL")
    writes = backend.writes
    with pytest.raises(RolloutError, match=r"failed its quality gate .*--force"):
        auto.run(settings, backend, _closed_prometheus(), bad, {}, echo=lambda _: None)
    # forced, it gets past the gate and stops at the next guard: nothing can be measured
    with pytest.raises(RolloutError, match=r"Prometheus .* is not ready: a canary cannot"):
        auto.run(settings, backend, _closed_prometheus(), bad, {}, force=True, echo=print)
    assert backend.writes == writes  # nothing was written either time


def test_auto_needs_a_champion_to_compare_with(reg, settings, backend) -> None:
    from pipelines.rollout import auto

    with pytest.raises(RolloutError, match="no version is champion yet"):
        auto.run(settings, backend, _closed_prometheus(), reg.register(), {}, echo=print)
