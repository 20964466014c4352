"""Model-server speed and memory: ``python -m bench serving``.

Builds a 10,000-item EASE artefact from synthetic data, starts ``python -m model_server`` on it
and a trivial `kserve.Model` returning a constant (served by the same `model_server.server.serve`,
so both pay the same HTTP stack), and drives them in turns — 5 alternating rounds of 5 s each,
so that a slow spell of this shared machine hits both — with a load generator in a separate
process (aiohttp, 8 connections, single-user requests). Prints throughput of both and the ratio,
p50/p99 latency, the time of one 1,000-user request, start-to-ready time and the server's RSS.
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
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "movie-recommender"
N_USERS, N_ITEMS, N_INTERACTIONS = 20_000, 10_000, 400_000
CONCURRENCY = 8
DURATION_S = 5.0
ROUNDS = 5
WARMUP_S = 1.0


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


# -- helpers run as separate processes -------------------------------------------------------


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
