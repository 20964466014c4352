"""The prediction log's cost: ``python -m bench events``.

1. The event sink alone (``python -m pipelines.events serve`` on a temporary DATA_DIR), driven by
   a load generator in another process (aiohttp, 16 connections) for 5 s each:
   KServe-style CloudEvents (one event per request, as the payload logger sends them) and feedback
   batches of 100 events. Prints accepted events/s, what reached disk after the final flush, the
   429s, and the sink's peak RSS (VmHWM).
2. Predictor throughput through the local ingress with the prediction log on and off: a real local
   stack, one trained version at 100 %, the ingress restarted between alternating rounds
   (off, on, off, on, off, on; 5 s each, 8 connections, single-user V1 requests). Prints the
   median req/s of each and the ratio (target >= 0.95).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 16
DURATION_S = 5.0
BATCH = 100
ROUNDS = 3


async def _generate(port: int, mode: str, duration: float) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/" + ("events/feedback" if mode == "feedback" else "")
    accepted = refused = errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(w: int) -> None:
        nonlocal accepted, refused, errors
        i = 0
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < stop_at:
                i += 1
                rid = f"b{w}x{i}"
                if mode == "feedback":
                    events = [
                        {"type": "impression", "request_id": rid, "item_id": 1 + n,
                         "position": n, "model_version": "1", "user_id": str(w)}
                        for n in range(BATCH)
                    ]  # fmt: skip
                    kwargs: dict[str, Any] = {"json": {"events": events}}
                    n_events = BATCH
                else:
                    kwargs = {
                        "data": b'{"instances": [{"user_id": %d, "k": 10}]}' % w,
                        "headers": {
                            "ce-specversion": "1.0", "ce-id": rid,
                            "ce-type": "org.kubeflow.serving.inference.request",
                            "ce-source": "http://localhost:9081/",
                            "ce-inferenceservicename": "movie-recommender",
                            "ce-namespace": "bench", "ce-component": "predictor",
                            "ce-endpoint": "", "ce-metadata": "{}",
                            "Content-Type": "application/json",
                        },
                    }  # fmt: skip
                    n_events = 1
                try:
                    async with session.post(url, **kwargs) as response:
                        await response.read()
                        if response.status < 300:
                            accepted += n_events
                        elif response.status == 429:
                            refused += n_events
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    return {"accepted": accepted, "refused": refused, "errors": errors, "seconds": elapsed}


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _sink_figures() -> None:
    from contracts import events as ev
    from localstack.processes import free_port, wait_healthy

    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        port = free_port()
        log = Path(tmp) / "sink.log"
        argv = [
            sys.executable, "-m", "pipelines.events", "serve", "--port", str(port),
            "--data-dir", str(Path(tmp) / "data"),
            "--feedback-rate", "1000000", "--feedback-burst", "1000000",
        ]  # fmt: skip
        with log.open("wb") as out:
            sink = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=30, process=sink)
            results = {}
            for mode in ("cloudevent", "feedback"):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.bench_events", "loadgen", str(port), mode],
                    cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[mode] = json.loads(out.stdout)
            peak_mb = _peak_mb(sink.pid)
        finally:
            sink.terminate()  # SIGTERM: the sink flushes what it holds
            sink.wait(timeout=30)
        # the sink has exited: its files are final; count what reached disk
        from pipelines.events.store import part_files, read_kind

        data = Path(tmp) / "data"
        on_disk = sum(read_kind(data, k).num_rows for k in ev.KINDS)
        files = len(part_files(data))
    accepted = sum(r["accepted"] for r in results.values())
    for mode, r in results.items():
        what = "CloudEvents (1 per request)" if mode == "cloudevent" else f"feedback ({BATCH}/req)"
        print(
            f"sink, {what}: {r['accepted'] / r['seconds']:,.0f} events/s accepted over "
            f"{r['seconds']:.1f} s, {r['refused']} refused (429), {r['errors']} errors "
            f"({CONNECTIONS} connections)"
        )
    print(
        f"sink: {on_disk:,} of {accepted:,} accepted events on disk after SIGTERM in {files} part "
        f"files; peak RSS {peak_mb:.0f} MB"
    )


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ingress_figures() -> None:
    from bench.bench_serving import _load
    from contracts.names import MODEL_NAME
    from localstack.stack import start, stop
    from tests.support.stack import local_stack, serve_only, train_two_versions, wait_for

    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp, local_stack(Path(tmp)) as s:
        version = train_two_versions(s)["first"]
        serve_only(s, version)
        users = list(range(1, 200))
        figures: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for logging_on in (False, True):  # ends on: the counters below are its
                settings = dataclasses.replace(s.settings, log_predictions=logging_on)
                stop(settings, "ingress")
                start(settings, "ingress")
                wait_for("serving", lambda: s.predict([{"user_id": 1}]).status_code == 200, 120)
                result = _load(s.settings.ingress_port, MODEL_NAME, users)
                figures[logging_on].append(result["rps"])
        sent = _ingress_sent(s)
    on, off = statistics.median(figures[True]), statistics.median(figures[False])
    print(
        f"through the ingress: logging on {on:.0f} req/s, off {off:.0f} req/s, ratio "
        f"{on / off:.2f} (median of {ROUNDS} alternating rounds; on: "
        f"{', '.join(f'{x:.0f}' for x in figures[True])}; off: "
        f"{', '.join(f'{x:.0f}' for x in figures[False])}); events delivered in the last "
        f"round: {sent}"
    )


def _ingress_sent(stack: Any) -> str:
    import requests

    from contracts import events as ev

    text = requests.get(f"{stack.settings.ingress_url}/__local/metrics", timeout=5).text
    return f"{_metric(text, ev.METRIC_INGRESS_EMITTED):.0f} sent, " + (
        f"{_metric(text, ev.METRIC_INGRESS_DROPPED):.0f} dropped"
    )


def run() -> None:
    _sink_figures()
    _ingress_figures()


if __name__ == "__main__":
    if sys.argv[1] == "loadgen":
        print(json.dumps(asyncio.run(_generate(int(sys.argv[2]), sys.argv[3], DURATION_S))))
