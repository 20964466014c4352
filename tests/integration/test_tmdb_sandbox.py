"""The sandbox speaks TMDB: envelopes, errors and auth as the real API answers them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tmdb_sandbox.catalog import GENRES

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def get(sandbox, path: str, auth: str = "token", **params):
    headers = {"Authorization": f"Bearer {sandbox.token}"} if auth == "token" else {}
    if auth == "api_key":
        params["api_key"] = sandbox.api_key
    return requests.get(f"{sandbox.base_url}{path}", params=params, headers=headers, timeout=5)


@pytest.mark.parametrize("auth", ["token", "api_key"])
def test_popular_page_has_tmdb_envelope_sorted_by_popularity(sandbox, auth):
    body = get(sandbox, "/movie/popular", auth, page=2, language="ko-KR", region="KR").json()

    assert body["page"] == 2
    assert body["total_results"] == 2000
    assert body["total_pages"] == 100
    results = body["results"]
    assert len(results) == 20
    assert set(results[0]) == {
        "adult", "backdrop_path", "genre_ids", "id", "original_language", "original_title",
        "overview", "popularity", "poster_path", "release_date", "title", "video",
        "vote_average", "vote_count",
    }  # fmt: skip
    popularity = [m["popularity"] for m in results]
    assert popularity == sorted(popularity, reverse=True)
    known = {gid for gid, _, _ in GENRES}
    assert all(set(m["genre_ids"]) <= known and 0 <= m["vote_average"] <= 10 for m in results)
    assert body == get(sandbox, "/movie/popular", page=2).json()  # deterministic


def test_pages_beyond_the_catalog_are_empty_until_500(sandbox):
    body = get(sandbox, "/movie/popular", page=500).json()

    assert body["results"] == []
    assert body["total_pages"] == 100


@pytest.mark.parametrize("page", ["0", "501", "abc", "-1"])
def test_invalid_page_is_400_status_code_22(sandbox, page):
    response = get(sandbox, "/movie/popular", page=page)

    assert response.status_code == 400
    assert response.json()["status_code"] == 22
    assert response.json()["success"] is False


@pytest.mark.parametrize("auth", ["none", "wrong"])
def test_bad_or_missing_credential_is_401_status_code_7(sandbox, auth):
    headers = {"Authorization": "Bearer nope"} if auth == "wrong" else {}
    response = requests.get(
        f"{sandbox.base_url}/movie/popular", params={"page": 1}, headers=headers, timeout=5
    )

    assert response.status_code == 401
    assert response.json() == {
        "success": False,
        "status_code": 7,
        "status_message": "Invalid API key: You must be granted a valid key.",
    }


def test_unknown_path_is_404_status_code_34(sandbox):
    response = get(sandbox, "/movie/nope")

    assert response.status_code == 404
    assert response.json()["status_code"] == 34


def test_genre_list_in_english_and_korean(sandbox):
    english = get(sandbox, "/genre/movie/list", language="en-US").json()["genres"]
    korean = get(sandbox, "/genre/movie/list", language="ko-KR").json()["genres"]

    assert {"id": 878, "name": "Science Fiction"} in english
    assert {"id": 878, "name": "SF"} in korean
    assert len(english) == len(korean) == 19


def test_scripted_faults_fire_in_order_then_the_page_is_served(sandbox):
    sandbox.set_faults(
        {
            "scripted": [
                {"page": 3, "kind": "status", "status": 429, "times": 2, "retry_after": 1},
                {"page": 3, "kind": "status", "status": 503},
            ]
        }
    )

    answers = [get(sandbox, "/movie/popular", page=3) for _ in range(4)]

    assert [r.status_code for r in answers] == [429, 429, 503, 200]
    assert answers[0].headers["Retry-After"] == "1"
    assert sandbox.stats()["pages"]["3"] == {"429": 2, "503": 1, "200": 1}


def test_invalid_fault_config_is_rejected(sandbox):
    response = requests.put(
        f"{sandbox.control_url}/faults",
        json={"scripted": [{"page": 3, "kind": "status", "status": 404}]},
        headers=sandbox.control_headers,
        timeout=5,
    )

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/stats"), ("GET", "/faults"), ("PUT", "/faults"), ("POST", "/reset")],
)
def test_the_control_api_needs_its_own_token(sandbox, method, path):
    sandbox.set_faults({"scripted": [{"page": 2, "kind": "status", "status": 503}]})
    url = f"{sandbox.control_url}{path}"
    body = {"json": {}} if method == "PUT" else {}
    for headers in (
        {},
        {"Authorization": f"Bearer {sandbox.token}"},  # the crawler's TMDB credential
        {"Authorization": "Bearer nope"},
    ):
        response = requests.request(method, url, headers=headers, timeout=5, **body)
        assert response.status_code == 401, (method, path, headers)
        assert "SANDBOX_CONTROL_TOKEN" in response.json()["status_message"]
    assert get(sandbox, "/movie/popular", page=2).status_code == 503  # the fault is still set
    allowed = requests.request(method, url, headers=sandbox.control_headers, timeout=5, **body)
    assert allowed.status_code == 200
    health = requests.get(f"{sandbox.control_url}/health", timeout=5)
    assert health.json() == {"status": "ok"}  # open: probes carry no token


def _start_sandbox(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tmdb_sandbox", "--port", "0", "--movies", "40", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    out, _ = process.communicate(timeout=10)
    return out


def _control_works(base_url: str, token: str) -> bool:
    url = base_url.removesuffix("/3") + "/__sandbox/stats"
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return response.status_code == 200


def test_without_a_control_token_one_is_generated_and_printed(tmp_path):
    process = _start_sandbox()
    try:
        url = process.stdout.readline().strip().rsplit("listening on ", 1)[1]
        line = process.stdout.readline().strip()
        assert line.startswith("control token: ")
        token = line.removeprefix("control token: ")
        assert len(token) >= 32 and token != "sandbox-token"
        assert _control_works(url, token)
    finally:
        _stop(process)


def test_a_generated_control_token_can_go_to_a_private_file_instead(tmp_path):
    token_file = tmp_path / "run" / "control-token"
    process = _start_sandbox("--control-token-file", str(token_file))
    try:
        url = process.stdout.readline().strip().rsplit("listening on ", 1)[1]
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert _control_works(url, token)
    finally:
        out = _stop(process)
    assert token not in out  # written down once, not printed


def test_a_control_token_equal_to_the_tmdb_credential_is_refused():
    process = _start_sandbox(env={"SANDBOX_TOKEN": "same", "SANDBOX_CONTROL_TOKEN": "same"})
    assert process.wait(timeout=30) == 2
    process.stdout.close()
