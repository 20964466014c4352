"""The sandbox speaks TMDB: envelopes, errors and auth as the real API answers them."""

from __future__ import annotations

import pytest
import requests

from tmdb_sandbox.catalog import GENRES

pytestmark = pytest.mark.integration


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
        timeout=5,
    )

    assert response.status_code == 400
