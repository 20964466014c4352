"""Validation of TMDB `/movie/popular` records and envelopes, and credential redaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pipelines.tmdb import MovieRecord, PopularPage, public_url, redact, validate_movie


def record(**changes: Any) -> dict[str, Any]:
    base = {
        "adult": False,
        "backdrop_path": "/b.jpg",
        "genre_ids": [28, 12],
        "id": 550,
        "original_language": "en",
        "original_title": "Fight Club",
        "overview": "A ticking-time-bomb insomniac...",
        "popularity": 61.4,
        "poster_path": "/p.jpg",
        "release_date": "1999-10-15",
        "title": "Fight Club",
        "video": False,
        "vote_average": 8.4,
        "vote_count": 26280,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_record_is_parsed_with_its_types():
    movie = validate_movie(record())

    assert isinstance(movie, MovieRecord)
    assert movie.id == 550
    assert movie.release_date == dt.date(1999, 10, 15)
    assert movie.genre_ids == [28, 12]


@pytest.mark.parametrize(
    "changes",
    [
        {"release_date": ""},
        {"release_date": None},
        {"poster_path": None},
        {"vote_average": 0, "vote_count": 0},
        {"vote_average": 10},
        {"popularity": 0},
        {"genre_ids": []},
        {"extra_field_from_a_newer_api": "ignored"},
        {"poster_path": "/kqjL17yufvn9OVLyXYpvtyrFfak.jpg"},
        {"poster_path": "/a_b-C9.webp"},
        {"title": "T" * 300, "overview": "O" * 5000},
    ],
)
def test_edge_values_that_tmdb_really_sends_are_valid(changes):
    movie = validate_movie(record(**changes))

    assert isinstance(movie, MovieRecord), movie


def test_empty_release_date_becomes_null():
    movie = validate_movie(record(release_date=""))

    assert isinstance(movie, MovieRecord)
    assert movie.release_date is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "550"}, "id"),
        ({"id": 0}, "id"),
        ({"id": -3}, "id"),
        ({"id": True}, "id"),
        ({"id": ...}, "id"),
        ({"title": ...}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": 42}, "title"),
        ({"vote_average": 42}, "vote_average"),
        ({"vote_average": -0.1}, "vote_average"),
        ({"vote_average": "8.4"}, "vote_average"),
        ({"vote_count": -1}, "vote_count"),
        ({"vote_count": 1.5}, "vote_count"),
        ({"popularity": -1.0}, "popularity"),
        ({"release_date": "2023-13-45"}, "release_date"),
        ({"release_date": "15/10/1999"}, "release_date"),
        ({"release_date": 1999}, "release_date"),
        ({"genre_ids": "28,12"}, "genre_ids"),
        ({"genre_ids": [28, "12"]}, "genre_ids"),
        ({"poster_path": 7}, "poster_path"),
        ({"poster_path": "https://attacker.example/p.jpg"}, "poster_path"),
        ({"poster_path": "//attacker.example/p.jpg"}, "poster_path"),
        ({"poster_path": "/../../admin.jpg"}, "poster_path"),
        ({"poster_path": "/p.jpg?x=1"}, "poster_path"),
        ({"poster_path": '/p.jpg" onerror="alert(1)'}, "poster_path"),
        ({"poster_path": "javascript:alert(1)"}, "poster_path"),
        ({"poster_path": "/p.html"}, "poster_path"),
        ({"poster_path": ""}, "poster_path"),
        ({"title": "T" * 301}, "title"),
        ({"original_title": "T" * 301}, "original_title"),
        ({"overview": "O" * 5001}, "overview"),
    ],
)
def test_invalid_record_gives_a_reason_naming_the_field(changes, field):
    reason = validate_movie(record(**changes))

    assert isinstance(reason, str)
    assert reason.startswith(field)


@pytest.mark.parametrize("value", [None, [], "movie", 550])
def test_non_object_record_is_invalid_not_a_crash(value):
    reason = validate_movie(value)

    assert isinstance(reason, str)
    assert "not an object" in reason


def test_envelope_is_checked():
    good = {"page": 2, "results": [record()], "total_pages": 9, "total_results": 170}

    assert PopularPage.from_json(good, 2).total_results == 170
    for bad in (
        [],
        {**good, "results": None},
        {**good, "page": 3},
        {**good, "total_pages": "9"},
        {k: v for k, v in good.items() if k != "total_results"},
    ):
        with pytest.raises(ValueError, match="envelope"):
            PopularPage.from_json(bad, 2)


def test_redact_removes_secrets_api_key_values_and_bearer_tokens():
    text = (
        "GET http://h/3/movie/popular?page=1&api_key=abc123&language=ko "
        "Authorization: Bearer eyJ.tok-en s3cr3t"
    )

    cleaned = redact(text, ["s3cr3t", None])

    assert "abc123" not in cleaned
    assert "eyJ.tok-en" not in cleaned
    assert "s3cr3t" not in cleaned
    assert "page=1" in cleaned
    assert "language=ko" in cleaned


def test_public_url_drops_user_info_and_query():
    url = "https://user:pw@api.themoviedb.org:443/3?api_key=abc"

    assert public_url(url) == "https://api.themoviedb.org:443/3"
