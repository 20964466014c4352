"""Simulated users playing against the live ingress: they ask for recommendations and click.

``python -m pipelines.traffic`` takes the users of the latest feature snapshot — with the genre
tastes θ_u the watch-log simulator gave them (`pipelines.simulator.user_tastes`, same seed) —
and for each request:

1. ``POST /v1/models/<model>:predict`` through the ingress with ``X-User-Id: <user id>`` (so a
   canary keeps each user on one arm, as the page does);
2. reports an impression for every film shown, and clicks each with probability
   ``p = (0.02 + 0.35·r²) / (1 + 0.15·position)``, where r = θ_u·g_i / max_j θ_u·g_j is the
   user's affinity to the film relative to their favourite kind of film (g_i: its genres) — a
   model that recommends what the user likes earns more clicks;
3. posts the impressions and clicks in one ``POST /events/feedback`` with the prediction's
   ``X-Request-Id`` and ``X-Model-Version`` (a feedback failure is counted, never fatal).

Bounded by ``--users``, ``--requests`` and ``--duration``, paced at ``--rate`` predictions a
second; prints requests, impressions, clicks and CTR per model version.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import requests
import typer

from contracts import events as ev
from contracts.names import MODEL_NAME
from contracts.settings import DATA_DIR, INGRESS_PORT, LOOPBACK
from pipelines.cli import configure_logging, run
from pipelines.errors import ConfigError, PipelineError
from pipelines.features import load_features
from pipelines.simulator import SimulatorMode, SimulatorParams, genre_vectors, user_tastes

log = logging.getLogger(__name__)

MAX_K = ev.MAX_FEEDBACK_EVENTS // 2  # impressions + clicks of one request fit one feedback post


@dataclass(frozen=True)
class TrafficSettings:
    ingress_url: str = f"http://{LOOPBACK}:{INGRESS_PORT.default}"
    data_dir: Path = DATA_DIR.default_path
    users: int = 50
    requests: int = 200
    duration: float = 60.0
    rate: float = 20.0  # predictions per second (each makes one feedback post)
    k: int = 10
    seed: int = 7
    model_name: str = MODEL_NAME


@dataclass
class VersionCounts:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class TrafficResult:
    by_version: dict[str, VersionCounts] = field(default_factory=dict)
    failed_requests: dict[int, int] = field(default_factory=dict)  # status (0: no answer) -> n
    feedback_posts: int = 0
    feedback_failed: int = 0
    seconds: float = 0.0


def click_probability(relative_affinity: float, position: int) -> float:
    """The chance that a user clicks a film shown at ``position`` (0 = first)."""
    return (0.02 + 0.35 * relative_affinity**2) / (1.0 + 0.15 * position)


@dataclass(frozen=True)
class SimulatedUsers:
    """Who plays: known user ids and each one's affinity to every film of the catalog."""

    ids: np.ndarray  # user ids as the model knows them
    affinity: dict[int, dict[int, float]]  # user id -> content id -> relative affinity r

    @classmethod
    def from_snapshot(cls, settings: TrafficSettings) -> SimulatedUsers:
        features = load_features(settings.data_dir, verify=False)
        generator = dict(features.source.get("generator") or {})
        catalog = features.catalog
        known = np.unique(features.interactions["user_id"].to_numpy(dtype=np.int64))
        if generator.get("mode") == SimulatorMode.DEFAULT.value:
            params = SimulatorParams(seed=int(generator["seed"]), users=int(generator["users"]))
        else:  # a real log, or the classic mode: give its users the default mode's tastes
            log.info("snapshot %s has no simulated tastes: drawing them with seed %d",
                     features.version, settings.seed)  # fmt: skip
            params = SimulatorParams(seed=settings.seed, users=int(known.max()))
        tastes = user_tastes(params)
        rng = np.random.default_rng(settings.seed)
        known = known[(known >= 1) & (known <= params.users)]
        if known.size == 0:
            raise ConfigError(f"feature snapshot {features.version} has no users to simulate")
        ids = rng.choice(known, size=min(settings.users, known.size), replace=False)
        raw = tastes[ids - 1] @ genre_vectors(catalog).T  # (users, items): θ_u · g_i
        relative = raw / raw.max(axis=1, keepdims=True)
        content = catalog["content_id"].to_numpy(dtype=np.int64).tolist()
        affinity = {
            int(u): dict(zip(content, row.tolist(), strict=True))
            for u, row in zip(ids, relative, strict=True)
        }
        return cls(ids=ids, affinity=affinity)


def play(
    settings: TrafficSettings,
    users: SimulatedUsers | None = None,
    stop: threading.Event | None = None,
) -> TrafficResult:
    """Send the simulated users' requests and feedback through the ingress; count them.

    ``stop`` ends it early when set (a caller running it on a thread, e.g. during a rollout).
    """
    if not 1 <= settings.k <= MAX_K:
        raise ConfigError(f"--k must be in 1..{MAX_K}, got {settings.k}")
    users = users or SimulatedUsers.from_snapshot(settings)
    stop = stop or threading.Event()
    rng = np.random.default_rng(settings.seed + 1)
    base = settings.ingress_url.rstrip("/")
    predict_url = f"{base}/v1/models/{settings.model_name}:predict"
    feedback_url = f"{base}{ev.FEEDBACK_PATH}"
    result = TrafficResult()
    started = time.monotonic()
    with requests.Session() as http, contextlib.suppress(KeyboardInterrupt):
        # Ctrl-C (or SIGTERM, as `make demo` stops it) ends the run early; the counts so
        # far are still reported
        for n in range(settings.requests):
            if time.monotonic() - started > settings.duration:
                log.info("--duration %.0f s reached after %d requests", settings.duration, n)
                break
            # paced: one feedback post per prediction stays within the sink's per-client
            # rate limit (one machine is one client), so nothing is refused for flooding
            if stop.wait(max(0.0, started + n / settings.rate - time.monotonic())):
                break
            user = int(users.ids[rng.integers(users.ids.size)])
            try:
                response = http.post(
                    predict_url,
                    json={"instances": [{"user_id": user, "k": settings.k}]},
                    headers={ev.USER_ID_HEADER: str(user)},
                    timeout=10,
                )
            except requests.ConnectionError as err:
                raise PipelineError(
                    f"the ingress at {base} does not answer ({err.__class__.__name__}): start "
                    "the stack with `make up` or pass --ingress-url"
                ) from err
            except requests.RequestException:
                result.failed_requests[0] = result.failed_requests.get(0, 0) + 1
                continue
            if response.status_code != 200:
                code = response.status_code
                result.failed_requests[code] = result.failed_requests.get(code, 0) + 1
                continue
            version = response.headers.get("X-Model-Version", "?")
            counts = result.by_version.setdefault(version, VersionCounts())
            counts.requests += 1
            shown = response.json()["predictions"][0]["content_ids"]
            events = _feedback(users, user, shown, response.headers, version, rng)
            counts.impressions += sum(e["type"] == ev.IMPRESSION for e in events)
            counts.clicks += sum(e["type"] == ev.CLICK for e in events)
            if events:
                result.feedback_posts += 1
                if not _post_feedback(http, feedback_url, events):
                    result.feedback_failed += 1
    result.seconds = time.monotonic() - started
    if not result.by_version and result.failed_requests:
        raise PipelineError(
            f"no prediction succeeded (statuses {result.failed_requests}): is a version rolled "
            "out? (`make status`)"
        )
    return result


def _feedback(
    users: SimulatedUsers,
    user: int,
    shown: list[int],
    headers: Any,
    version: str,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    request_id = headers.get(ev.REQUEST_ID_HEADER)
    if not request_id:
        return []  # nothing to join feedback to
    common = {"request_id": request_id, "model_version": version, "user_id": str(user)}
    affinity = users.affinity[user]
    events = []
    for position, item in enumerate(int(i) for i in shown if int(i) >= 0):
        events.append({"type": ev.IMPRESSION, "item_id": item, "position": position, **common})
        if rng.random() < click_probability(affinity.get(item, 0.0), position):
            events.append({"type": ev.CLICK, "item_id": item, "position": position, **common})
    return events


def _post_feedback(http: requests.Session, url: str, events: list[dict[str, Any]]) -> bool:
    try:
        response = http.post(url, json={"events": events}, timeout=5)
    except requests.RequestException as err:
        log.warning("feedback not delivered: %s", err)
        return False
    if response.status_code >= 300:
        log.warning("feedback refused: %d %s", response.status_code, response.text[:200])
        return False
    return True


def report(result: TrafficResult) -> str:
    """The per-version table (and what failed) as the CLI prints it."""
    lines = [f"{'version':<10}{'requests':>10}{'impressions':>13}{'clicks':>8}{'ctr':>9}"]
    for version in sorted(result.by_version, key=lambda v: (len(v), v)):
        c = result.by_version[version]
        lines.append(f"{version:<10}{c.requests:>10}{c.impressions:>13}{c.clicks:>8}{c.ctr:>8.2%}")
    failed = result.failed_requests
    lines.append(
        f"{sum(c.requests for c in result.by_version.values())} requests in "
        f"{result.seconds:.1f} s; feedback posts: {result.feedback_posts} "
        f"({result.feedback_failed} failed)"
        + (f"; failed requests by status: {failed}" if failed else "")
    )
    return "\n".join(lines)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `play` ends its loop and the counts so far are reported


def main(
    ingress_url: Annotated[
        str, typer.Option(help="The ingress (local stack) or the front end (cluster).")
    ] = TrafficSettings.ingress_url,
    data_dir: Annotated[
        Path, typer.Option(envvar=DATA_DIR.name, help="Where the feature snapshot lives.")
    ] = DATA_DIR.default_path,
    users: Annotated[int, typer.Option(min=1, help="Simulated users taking part.")] = 50,
    requests_: Annotated[
        int, typer.Option("--requests", min=1, help="Predictions to request in all.")
    ] = 200,
    duration: Annotated[float, typer.Option(min=0.1, help="Stop after this many seconds.")] = 60.0,
    rate: Annotated[
        float,
        typer.Option(
            min=0.1, help="Predictions per second (the event sink allows one client 50 posts/s)."
        ),
    ] = 20.0,
    k: Annotated[int, typer.Option(min=1, max=MAX_K, help="Films per recommendation.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of who asks and who clicks.")] = 7,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Simulated users request recommendations through the ingress and click by taste."""
    configure_logging(verbose)
    signal.signal(signal.SIGTERM, _stop)  # a background run is stopped with SIGTERM
    settings = TrafficSettings(
        ingress_url=ingress_url, data_dir=data_dir, users=users, requests=requests_,
        duration=duration, rate=rate, k=k, seed=seed,
    )  # fmt: skip
    result = run(lambda: play(settings))
    typer.echo(report(result))


if __name__ == "__main__":
    typer.run(main)
