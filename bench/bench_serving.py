"""Model-server speed and memory: ``python -m bench serving``.

Builds a 10,000-item EASE artefact from synthetic data, starts ``python -m model_server`` on it
and a trivial `kserve.Model` returning a constant (served by the same `model_server.server.serve`,
so both pay the same HTTP stack), and drives them in turns — 5 alternating rounds of 5 s each,
so that a slow spell of this shared machine hits both — with a load generator in a separate
process (aiohttp, 8 connections, single-user requests). Prints throughput of both and the ratio,
p50/p99 latency, the time of one 1,000-user request, start-to-ready time and the server's RSS.

Then the serving edge under abuse, on a fresh server: the same load alone, and again while
another process sends a stream of oversized requests (50 MB of valid JSON, declared in
Content-Length and sent in full, back to back) and holds 16 slow clients (one header byte a
second, reconnecting when cut off). Prints the normal requests' p50/p99 and errors in both
phases, the predictor's RSS before, at its peak and after, and what the abusive requests got
(`model_server.limits`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "movie-recommender"
N_USERS, N_ITEMS, N_INTERACTIONS = 20_000, 10_000, 400_000
CONCURRENCY = 8
DURATION_S = 5.0
ROUNDS = 5
WARMUP_S = 1.0
OVERSIZED_BYTES = 50_000_000
SLOW_CLIENTS = 16
ABUSE_S = 14.0  # the load runs inside it; slow clients are cut after 10 s (read deadline)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _build_artefact(directory: Path) -> tuple[Path, list[int]]:
    from recommenders import EASE, save
    from recommenders.synthetic import synthetic_interactions

    interactions, catalog = synthetic_interactions(N_USERS, N_ITEMS, N_INTERACTIONS, seed=1)
    model = EASE().fit(interactions, catalog, trained_on={"run_id": "bench"})
    save(model, directory)
    return directory, [int(u) for u in model.user_ids[:: max(1, model.n_users // 2000)]]


def _wait_ready(process: subprocess.Popen[bytes], port: int, name: str, timeout: float) -> float:
    import requests

    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}/v1/models/{name}"
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.02)
    raise RuntimeError("server did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _rss_mb(pid: int) -> tuple[float, float, float]:
    """RSS, its anonymous and its file-backed part, in MB (from /proc/<pid>/status)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"}:
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"], fields["VmHWM"]


def _load(port: int, name: str, users: list[int]) -> dict[str, Any]:
    """Run the load generator in its own process and return its figures."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_serving",
            "loadgen",
            str(port),
            name,
            json.dumps(users),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _start_ours(artefact: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_server", "--model_name", MODEL, "--model_dir",
         str(artefact), "--http_port", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, port


def _start_trivial() -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_serving", "trivial", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, port


def run() -> None:
    import requests

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        started = time.perf_counter()
        artefact, users = _build_artefact(Path(tmp) / "model")
        size = (artefact / "arrays.npz").stat().st_size / 1e6
        print(
            f"artefact: {N_ITEMS} catalog items, {size:.0f} MB arrays.npz, "
            f"built in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        ours, port = _start_ours(artefact)
        trivial, trivial_port = _start_trivial()
        try:
            ready_s = _wait_ready(ours, port, MODEL, timeout=60)
            print(f"start-to-ready: {ready_s:.2f} s (local artefact, checksums verified)")
            rss, anon, _ = _rss_mb(ours.pid)
            print(f"rss after load: {rss:.0f} MB (anonymous {anon:.0f} MB)")
            _wait_ready(trivial, trivial_port, "trivial", timeout=60)
            # Both servers run side by side (the idle one costs nothing) and take turns under
            # the same load, so a slow spell of this shared machine hits both, not one.
            rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for _ in range(ROUNDS):
                rounds.append((_load(port, MODEL, users), _load(trivial_port, "trivial", users)))
            url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
            body = {"instances": [{"user_id": u, "k": 10} for u in users[:1000]]}
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                response = requests.post(url, json=body, timeout=30)
                times.append(time.perf_counter() - t0)
                if response.status_code != 200 or len(response.json()["predictions"]) != 1000:
                    raise RuntimeError(f"1000-user request failed: {response.status_code}")
            rss, anon, peak = _rss_mb(ours.pid)
        finally:
            _stop(ours)
            _stop(trivial)
        edge = _edge_under_abuse(artefact, users)

    def median(key: str, side: int) -> float:
        return statistics.median(r[side][key] for r in rounds)

    ratios = [a["rps"] / b["rps"] for a, b in rounds]
    print(
        f"throughput: {median('rps', 0):.0f} req/s (trivial model: {median('rps', 1):.0f} req/s, "
        f"ratio {statistics.median(ratios):.2f}; median of {ROUNDS} alternating rounds of "
        f"{DURATION_S:.0f} s each, per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; {CONCURRENCY} connections, "
        f"{sum(a['errors'] for a, _ in rounds)} errors)"
    )
    print(
        f"latency: p50 {median('p50_ms', 0):.2f} ms, p99 {median('p99_ms', 0):.2f} ms "
        f"(trivial model: p50 {median('p50_ms', 1):.2f} ms, p99 {median('p99_ms', 1):.2f} ms)"
    )
    print(
        f"1000-user request: median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms (7 requests)"
    )
    print(f"rss: {rss:.0f} MB after the runs (anonymous {anon:.0f} MB, peak {peak:.0f} MB)")
    alone, attacked, memory, abuse = edge
    print(
        f"edge, normal requests alone: p50 {alone['p50_ms']:.2f} ms, p99 {alone['p99_ms']:.2f} ms, "
        f"max {alone['max_ms']:.0f} ms, {alone['rps']:.0f} req/s, {alone['errors']} errors"
    )
    print(
        f"edge, normal requests during abuse: p50 {attacked['p50_ms']:.2f} ms, "
        f"p99 {attacked['p99_ms']:.2f} ms, max {attacked['max_ms']:.0f} ms, "
        f"{attacked['rps']:.0f} req/s, "
        f"{attacked['errors']} errors ({SLOW_CLIENTS} slow clients and a stream of "
        f"{OVERSIZED_BYTES / 1e6:.0f} MB requests)"
    )
    print(
        "edge, predictor rss: {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB after "
        "the abuse".format(**memory)
    )
    print(
        f"edge, abusive requests: {abuse['oversized']} oversized sent "
        f"({abuse['oversized_status']}), {abuse['slow_cut']} slow connections cut off "
        f"({abuse['slow_status']})"
    )


def _edge_under_abuse(
    artefact: Path, users: list[int]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, Any]]:
    """The normal load alone, then during abuse (another process), on a fresh server."""
    server, port = _start_ours(artefact)
    try:
        _wait_ready(server, port, MODEL, timeout=60)
        alone = _load(port, MODEL, users)
        before, _, _ = _rss_mb(server.pid)
        abuser = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_serving", "abuse", str(port), str(ABUSE_S)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        peak = before
        time.sleep(1.0)  # let the abuse ramp up
        attacked = _load(port, MODEL, users)
        out, _ = abuser.communicate(timeout=ABUSE_S + 120)
        for _ in range(10):  # what is left once the abuse has ended
            peak = max(peak, _rss_mb(server.pid)[0])
            time.sleep(0.1)
        after, _, hwm = _rss_mb(server.pid)
        memory = {"before": before, "peak": max(peak, hwm), "after": after}
        return alone, attacked, memory, json.loads(out)
    finally:
        _stop(server)


# -- helpers run as separate processes -------------------------------------------------------


async def _abuse(port: int, duration: float) -> dict[str, Any]:
    """Oversized requests back to back and slow clients, for ``duration`` seconds."""
    deadline = time.perf_counter() + duration
    statuses: dict[str, Counter[str]] = {"oversized": Counter(), "slow": Counter()}
    counts = {"oversized": 0, "slow_cut": 0}
    head = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {OVERSIZED_BYTES}\r\n\r\n"
    ).encode()
    # valid JSON that KServe's stack would decode whole: top-level keys besides "instances"
    # are ignored, so without a limit this is a 200 after ~25 million ints were decoded
    prefix, suffix = b'{"instances": [{"user_id": 1}], "padding": [', b"1]}"
    body = prefix + b"1," * ((OVERSIZED_BYTES - len(prefix) - len(suffix)) // 2) + suffix
    head = head.replace(str(OVERSIZED_BYTES).encode(), str(len(body)).encode())
    block = 1 << 20

    async def answer(reader: asyncio.StreamReader) -> str:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=60)
        except (TimeoutError, ConnectionError):
            return "no answer"
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"

    async def oversized() -> None:
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            reading = asyncio.ensure_future(answer(reader))
            try:
                writer.write(head)
                for start in range(0, len(body), block):
                    writer.write(body[start : start + block])
                    await writer.drain()
            except ConnectionError:
                pass
            counts["oversized"] += 1
            statuses["oversized"][await reading] += 1
            writer.close()

    async def slow() -> None:
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            reading = asyncio.ensure_future(answer(reader))
            try:
                writer.write(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\n".encode())
                while time.perf_counter() < deadline and not reading.done():
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(1.0)
            except ConnectionError:
                pass
            if reading.done():
                counts["slow_cut"] += 1
                statuses["slow"][reading.result()] += 1
            else:
                reading.cancel()
            writer.close()

    await asyncio.gather(oversized(), *(slow() for _ in range(SLOW_CLIENTS)))
    return {
        **counts,
        "oversized_status": ", ".join(f"{n}x {s}" for s, n in statuses["oversized"].items()),
        "slow_status": ", ".join(f"{n}x {s}" for s, n in statuses["slow"].items()) or "none",
    }


async def _generate(port: int, name: str, users: list[int]) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
    bodies = [json.dumps({"instances": [{"user_id": u, "k": 10}]}).encode() for u in users]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(offset: int, until: float, record: bool) -> None:
            nonlocal errors
            i = offset
            while (now := time.perf_counter()) < until:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - now)
                i += CONCURRENCY

        warm = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(worker(w, warm, False) for w in range(CONCURRENCY)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, start + DURATION_S, True) for w in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "errors": errors,
    }


def _serve_trivial(port: int) -> None:
    """A `kserve.Model` returning a constant, behind the same server stack as ours."""
    from kserve import Model

    from model_server.metrics import Metrics
    from model_server.server import configure_logging, serve
    from model_server.settings import parse_settings

    class Constant(Model):
        def predict(self, payload: Any, headers: Any = None) -> dict[str, Any]:
            return {"predictions": [[1]]}

    settings = parse_settings(["--model_name", "trivial", "--http_port", str(port)], os.environ)
    configure_logging(settings)
    model = Constant("trivial")
    model.load()
    serve(model, settings, Metrics.create())


if __name__ == "__main__":
    if sys.argv[1] == "loadgen":
        print(
            json.dumps(
                asyncio.run(_generate(int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])))
            )
        )
    elif sys.argv[1] == "trivial":
        _serve_trivial(int(sys.argv[2]))
    elif sys.argv[1] == "abuse":
        print(json.dumps(asyncio.run(_abuse(int(sys.argv[2]), float(sys.argv[3])))))
