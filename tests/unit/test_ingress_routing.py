"""The local ingress's routing on parsed paths, its tag domain and its page policy."""

from __future__ import annotations

import pytest

from localstack.ingress import ROUTES, canonical_path, poster_source, security_headers, tag_host

MODEL = "movie-recommender"


@pytest.mark.parametrize(
    "raw",
    [
        f"/v1/models/{MODEL}/%2e%2e/%2e%2e/%2e%2e/metrics",
        f"/v1/models/{MODEL}/%2E%2E/metrics",
        f"/v1/models/{MODEL}/../metrics",
        f"/v1/models/{MODEL}/./x",
        f"/v1/models/{MODEL}%2f..%2fmetrics",
        f"/v1/models/{MODEL}%5cx",
        "/v1/models//x",
        "/v1\\models",
        "/x%00",
        "relative",
    ],
)
def test_paths_that_are_not_canonical_are_not_routed(raw: str) -> None:
    assert canonical_path(raw) is None


def test_canonical_paths_decode_and_match_whole_routes_only() -> None:
    assert canonical_path(f"/v1/models/{MODEL}%3Apredict") == f"/v1/models/{MODEL}:predict"
    assert canonical_path("/") == "/"
    assert canonical_path("/assets/") == "/assets/"
    matches = {
        (method, path): [r.match(method, path) for r in ROUTES if r.match(method, path)]
        for method, path in [
            ("POST", f"/v1/models/{MODEL}:predict"),
            ("GET", f"/v1/models/{MODEL}"),
            ("POST", f"/v2/models/{MODEL}/infer"),
            ("GET", f"/v2/models/{MODEL}"),
            ("GET", f"/v2/models/{MODEL}/ready"),
            ("GET", f"/v1/models/{MODEL}:predict"),
            ("POST", f"/v1/models/{MODEL}:explain"),
            ("GET", f"/v2/models/{MODEL}/versions/1"),
            ("POST", f"/v2/repository/models/{MODEL}/unload"),
            ("GET", "/v1/models"),
        ]
    }
    routed = [key for key, names in matches.items() if names]
    assert routed == list(matches)[:5]
    assert all(names == [MODEL] for names in matches.values() if names)


@pytest.mark.parametrize(
    ("host", "routed"),
    [
        ("latest-movie-recommender.local", True),
        ("prev-movie-recommender.local:8080", True),
        ("latest-movie-recommender-predictor.movie-mlops-dev.svc.cluster.local", True),
        ("latest-movie-recommender.example.com", False),
        ("latest-movie-recommender.local.example.com", False),
        ("127.0.0.1:8080", False),
    ],
)
def test_tags_are_only_seen_on_the_local_domain(host: str, routed: bool) -> None:
    assert (tag_host(host, ".local") == host) is routed
    if not routed:
        assert tag_host(host, ".local") == ""


def test_the_policy_allows_images_from_the_poster_base_url_only() -> None:
    assert poster_source("https://image.tmdb.org/t/p") == "https://image.tmdb.org/t/p/"
    assert poster_source("http://127.0.0.1:8090/t/p/") == "http://127.0.0.1:8090/t/p/"
    policy = security_headers("https://image.tmdb.org/t/p")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["img-src"] == "'self' https://image.tmdb.org/t/p/"
    assert directives["default-src"] == "'none'"
    for bad in ("image.tmdb.org/t/p", "javascript:alert(1)", "https://x/?a=1", "ftp://x/p"):
        with pytest.raises(ValueError, match="not an http"):
            poster_source(bad)
