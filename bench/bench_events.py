"""The prediction log's cost: ``python -m bench events``.

1. The event sink alone (``python -m pipelines.events serve`` on a temporary DATA_DIR), driven for
   5 s per mode by a load generator in another process: raw HTTP/1.1 over asyncio streams, 16
   keep-alive connections with one request in flight each — far cheaper per request than an
   aiohttp client, so on a 2-core machine the figure is the sink's rather than the client's
   (KServe's agent is Go). Modes:

   - ``binary``: KServe's payload logger, one binary-mode CloudEvent per POST (the cluster path);
   - ``twin``: the local ingress's JSON batches (``application/cloudevents-batch+json``, events
     rendered by `localstack.events.EventEmitter.structured`), ``BATCH`` events per POST;
   - ``feedback``: the page's feedback batches, ``BATCH`` events per POST.

   Prints accepted events/s, the sink's CPU time per event (user + system of its process over the
   run: what one free core would sustain, steadier than events/s on a loaded machine), the 429s,
   what reached disk after the final flush, and the sink's peak RSS (VmHWM). For scale, the same
   client against a bare aiohttp server (uvloop, reads the body, answers a constant: no
   validation, no buffering) gives the one-request-per-event floor of this machine.
2. Predictor throughput through the local ingress with the prediction log on and off: a real local
   stack, one trained version at 100 %, the ingress restarted before each round; ``PAIRS`` pairs
   of adjacent rounds in alternating order (off-on, on-off, ...; 5 s each, 8 connections,
   single-user V1 requests), so a drift of the machine's speed favours neither. Prints the median
   req/s of each and their ratio, each pair's on/off ratio and their median — the figure the
   target (>= 0.95) is read from, as it compares rounds a few seconds apart — then the CPU time
   per prediction of the ingress, the predictor, the sink and the load generator, off and on
   (medians over the rounds; each includes the load's 1 s warm-up and the generator its start),
   which says what the log costs without the drift of throughput, and the events per batch the
   twin sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
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
PAIRS = 12
MODES = {
    "binary": "binary CloudEvents (1 per POST, as KServe)",
    "twin": f"CloudEvent batches ({BATCH}/POST, as the twin)",
    "feedback": f"feedback ({BATCH}/POST)",
}


def _requests(mode: str, worker: int) -> tuple[bytes, bytes, int]:
    """The request line and headers (``%d`` for a per-request number), body, events per POST."""
    from contracts import events as ev

    if mode == "binary":
        body = b'{"instances": [{"user_id": %d, "k": 10}]}' % worker
        head = (
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "ce-specversion: 1.0\r\nce-id: b%dx%%d\r\n"
            f"ce-type: {ev.CE_REQUEST_TYPE}\r\nce-source: http://localhost:9081/\r\n"
            "ce-time: 2026-01-02T03:04:05.123456Z\r\n"
            "ce-inferenceservicename: movie-recommender\r\nce-namespace: bench\r\n"
            "ce-component: predictor\r\nce-endpoint: \r\nce-metadata: {}\r\n"
            "ce-recordedtime: 2026-01-02T03:04:05.123456Z\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ) % worker
        return head.encode(), body, 1
    if mode == "twin":
        import time

        from localstack.events import EventEmitter, Prediction

        emitter = EventEmitter("http://sink/", inference_service="movie-recommender", source="in")
        now = time.time_ns()
        request = b'{"instances": [{"user_id": %d, "k": 10}]}' % worker
        response = b'{"model_version": "1", "predictions": [{"content_ids": [%s]}]}' % (
            b", ".join(b"%d" % (1000 + i) for i in range(10))
        )
        events = [
            e
            for i in range(BATCH // 2)
            for e in Prediction(f"t{worker}x{i}", request, response, "application/json", now, now,
                                "movie-recommender-predictor-00001", str(worker)).events()
        ]  # fmt: skip
        body = b"[" + b",".join(emitter.structured(e) for e in events) + b"]"
        content_type = ev.CE_BATCH_CONTENT_TYPE
        path = "/"
    else:
        body = json.dumps({"events": [
            {"type": "impression", "request_id": f"f{worker}", "item_id": 1 + n,
             "position": n, "model_version": "1", "user_id": str(worker)}
            for n in range(BATCH)
        ]}).encode()  # fmt: skip
        content_type = "application/json"
        path = ev.FEEDBACK_PATH
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"X-Bench: %d\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body, BATCH


async def _generate(port: int, mode: str, duration: float) -> dict[str, Any]:
    accepted = refused = errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(w: int) -> None:
        nonlocal accepted, refused, errors
        head, body, n_events = _requests(mode, w)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        try:
            while time.perf_counter() < stop_at:
                i += 1
                writer.write((head % i) + body)
                answer = await reader.readuntil(b"\r\n\r\n")
                status = int(answer[9:12])
                length = 0
                for line in answer.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if status < 300:
                    accepted += n_events
                elif status == 429:
                    refused += n_events
                else:
                    errors += 1
        finally:
            writer.close()

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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bare(port: int) -> None:
    """An aiohttp server that only reads each body and answers: the HTTP layer's own cost."""
    import uvloop
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"accepted": 1}', content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/", accept)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                loop=uvloop.new_event_loop())  # fmt: skip


def _bare_floor() -> None:
    from localstack.processes import free_port, wait_healthy

    port = free_port()
    argv = [sys.executable, "-m", "bench.bench_events", "bare", str(port)]
    server = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=30, process=server)
        cpu = _cpu_seconds(server.pid)
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_events", "loadgen", str(port), "binary"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout)
        per_request = (_cpu_seconds(server.pid) - cpu) / max(r["accepted"], 1) * 1e6
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"floor, a bare aiohttp server, same client: {r['accepted'] / r['seconds']:,.0f} "
        f"requests/s; {per_request:.0f} us CPU/request (= {1e6 / per_request:,.0f}/s per core)"
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
            for mode in MODES:
                cpu = _cpu_seconds(sink.pid)
                out = subprocess.run(
                    [sys.executable, "-m", "bench.bench_events", "loadgen", str(port), mode],
                    cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[mode] = json.loads(out.stdout)
                results[mode]["cpu"] = _cpu_seconds(sink.pid) - cpu
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
        per_event = r["cpu"] / max(r["accepted"], 1) * 1e6
        print(
            f"sink, {MODES[mode]}: {r['accepted'] / r['seconds']:,.0f} events/s accepted over "
            f"{r['seconds']:.1f} s ({CONNECTIONS} connections); sink CPU {per_event:.0f} us/event "
            f"(= {1e6 / per_event:,.0f} events/s per core); {r['refused']} refused (429), "
            f"{r['errors']} errors"
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
    import resource

    from bench.bench_serving import DURATION_S as LOAD_S
    from bench.bench_serving import WARMUP_S, _load
    from contracts.names import MODEL_NAME
    from localstack.stack import running_pid, start, stop
    from tests.support.stack import local_stack, serve_only, train_two_versions, wait_for

    def children_cpu() -> float:  # the load generators' CPU (they are this process's children)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp, local_stack(Path(tmp)) as s:
        version = train_two_versions(s)["first"]
        serve_only(s, version)
        users = list(range(1, 200))
        figures: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        sent = ""
        for pair in range(PAIRS):
            # off-on, on-off, off-on, ...: a machine that speeds up or slows down over the run
            # favours neither (this VM's speed drifts by a third within minutes)
            for logging_on in (False, True) if pair % 2 == 0 else (True, False):
                settings = dataclasses.replace(s.settings, log_predictions=logging_on)
                stop(settings, "ingress")
                start(settings, "ingress")
                wait_for("serving", lambda: s.predict([{"user_id": 1}]).status_code == 200, 120)
                # the ingress runs the controller, which starts the revision's predictor anew
                predictor = _pid_of(f"model_server --model_name {MODEL_NAME}")
                pids = {"ingress": running_pid(s.settings, "ingress"), "predictor": predictor,
                        "sink": running_pid(s.settings, "events")}  # fmt: skip
                before = {name: _cpu_seconds(pid) for name, pid in pids.items() if pid}
                load_before = children_cpu()
                result = _load(s.settings.ingress_port, MODEL_NAME, users)
                figures[logging_on].append(result["rps"])
                # CPU per prediction over the load's warm-up and measured seconds
                answered = result["rps"] * (LOAD_S + WARMUP_S)
                used = {name: _cpu_seconds(pids[name]) - t for name, t in before.items()}
                used["load"] = children_cpu() - load_before
                cpu[logging_on].append({k: v / answered * 1e6 for k, v in used.items()})
                if logging_on:
                    sent = _ingress_sent(s)  # this ingress's counters, before its restart
    on, off = statistics.median(figures[True]), statistics.median(figures[False])
    paired = [a / b for a, b in zip(figures[True], figures[False], strict=True)]
    print(
        f"through the ingress: logging on {on:.0f} req/s, off {off:.0f} req/s: ratio of the "
        f"medians {on / off:.2f}; each pair's on/off (adjacent rounds) "
        f"{', '.join(f'{x:.2f}' for x in paired)}: median {statistics.median(paired):.2f} "
        f"(target >= 0.95; {PAIRS} pairs of {LOAD_S:.0f} s rounds; on: "
        f"{', '.join(f'{x:.0f}' for x in figures[True])}; off: "
        f"{', '.join(f'{x:.0f}' for x in figures[False])})"
    )
    names = ("ingress", "predictor", "sink", "load")
    med = {
        on_: {n: statistics.median(r.get(n, 0.0) for r in cpu[on_]) for n in names}
        for on_ in (False, True)
    }
    total = {on_: sum(med[on_].values()) for on_ in (False, True)}
    print(
        "through the ingress: CPU per prediction (medians, us), logging off -> on: "
        + ", ".join(f"{n} {med[False][n]:.0f} -> {med[True][n]:.0f}" for n in names)
        + f"; all four {total[False]:.0f} -> {total[True]:.0f} ({total[True] / total[False]:.3f}x; "
        f"the sink alone is {med[True]['sink'] / total[True]:.1%} of it, on the same 2 cores)"
    )
    print(f"through the ingress: events delivered in the last round logging: {sent}")


def _pid_of(pattern: str) -> int | None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return int(found.split()[0]) if found.split() else None


def _ingress_sent(stack: Any) -> str:
    import requests

    from contracts import events as ev

    text = requests.get(f"{stack.settings.ingress_url}/__local/metrics", timeout=5).text
    sent = _metric(text, ev.METRIC_INGRESS_EMITTED)
    batches = _metric(text, ev.METRIC_INGRESS_BATCHES)
    return (
        f"{sent:.0f} sent in {batches:.0f} POSTs ({sent / max(batches, 1):.1f} events each), "
        f"{_metric(text, ev.METRIC_INGRESS_DROPPED):.0f} dropped"
    )


def run() -> None:
    _sink_figures()
    _bare_floor()
    _ingress_figures()


if __name__ == "__main__":
    if sys.argv[1] == "loadgen":
        print(json.dumps(asyncio.run(_generate(int(sys.argv[2]), sys.argv[3], DURATION_S))))
    elif sys.argv[1] == "bare":
        _bare(int(sys.argv[2]))
