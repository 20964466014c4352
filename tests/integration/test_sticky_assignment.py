"""Sticky canary arms through the real ingress, and simulated users clicking through it.

During a canary every user (``X-User-Id``, or the V1 body's ``user_id``) gets the same arm and
revision on every request; raising the percent moves users only into the canary. Uses the
session's local stack and its two trained versions (tests/support/stack.py).
"""

from __future__ import annotations

import uuid

import pytest
import requests

from contracts.assignment import bucket, is_canary
from tests.support.stack import Session, serve_only, train_two_versions

# the first test of a module trains the session's two versions when no earlier module did
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

USERS = [f"user-{i}" for i in range(80)] + [f"anon-{uuid.UUID(int=i)}" for i in range(80)]


def _arms(stack: Session, users: list[str], repeats: int) -> dict[str, set[tuple[str, ...]]]:
    """What each user was served, over ``repeats`` requests: {(arm, revision, version)}."""
    seen: dict[str, set[tuple[str, ...]]] = {u: set() for u in users}
    with requests.Session() as http:
        for _ in range(repeats):
            for user in users:
                response = http.post(
                    stack.predict_url,
                    json={"instances": [{"user_id": 1, "k": 3}]},
                    headers={"X-User-Id": user},
                    timeout=10,
                )
                assert response.status_code == 200, response.text
                h = response.headers
                seen[user].add((h["X-Canary-Arm"], h["X-Revision"], h["X-Model-Version"]))
    return seen


@pytest.fixture(scope="module")
def versions(stack: Session) -> dict[str, str]:
    return train_two_versions(stack)


def test_each_user_keeps_one_arm_and_raising_the_percent_only_moves_users_into_the_canary(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    assert "X-Canary-Arm" not in stack.predict([{"user_id": 1}]).headers  # no canary, no arm
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "10")
    at10 = _arms(stack, USERS, repeats=2)
    assert all(len(served) == 1 for served in at10.values()), "a user changed arm at 10 %"
    arm10 = {u: next(iter(s)) for u, s in at10.items()}
    for user, (arm, _, version) in arm10.items():
        canary = is_canary(bucket(user), 10)
        assert (arm, version) == (("canary", second) if canary else ("stable", first)), user
    # the V1 body's user_id is the key when there is no header: 42 is bucket(str(42))
    by_body = {stack.predict([{"user_id": 42}]).headers["X-Canary-Arm"] for _ in range(10)}
    assert by_body == {"canary" if is_canary(bucket("42"), 10) else "stable"}

    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "25")
    at25 = _arms(stack, USERS, repeats=2)
    assert all(len(served) == 1 for served in at25.values()), "a user changed arm at 25 %"
    arm25 = {u: next(iter(s)) for u, s in at25.items()}
    moved = {u for u in USERS if arm10[u][0] != arm25[u][0]}
    assert all(arm10[u][0] == "stable" and arm25[u][0] == "canary" for u in moved)
    assert moved == {u for u in USERS if 10 <= bucket(u) < 25}
    assert moved, "no user moved into the canary"
    canary_revisions = {arm25[u][1] for u in USERS if arm25[u][0] == "canary"}
    assert len(canary_revisions) == 1  # the canary is one revision (the percent made no new one)


def test_simulated_users_click_through_the_ingress_and_the_counts_name_each_version(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "50")
    proc = stack.run(
        "pipelines.traffic", "--ingress-url", stack.settings.ingress_url,
        "--users", "30", "--requests", "60", "--duration", "60", "--seed", "3",
    )  # fmt: skip
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.split() and line.split()[0] in (first, second)
    }
    assert set(rows) == {first, second}, proc.stdout
    requests_ = sum(int(r[1]) for r in rows.values())
    impressions = sum(int(r[2]) for r in rows.values())
    clicks = sum(int(r[3]) for r in rows.values())
    assert requests_ == 60 and impressions > 0 and 0 < clicks < impressions, proc.stdout
    metrics = requests.get(f"{stack.settings.events_url}/metrics", timeout=5).text
    assert f'movie_mlops_feedback_total{{event="click",model_version="{second}"}}' in metrics or (
        f'movie_mlops_feedback_total{{event="click",model_version="{first}"}}' in metrics
    ), metrics[-2000:]
