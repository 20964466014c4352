"""The generated movie catalog: deterministic for a seed, shaped like TMDB's `/movie/popular`."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

PAGE_SIZE = 20
MAX_PAGE = 500  # TMDB serves pages 1..500 of any list, however long the list is

# TMDB's movie genres (GET /3/genre/movie/list), in TMDB's order, with the ko-KR names.
GENRES: tuple[tuple[int, str, str], ...] = (
    (28, "Action", "액션"),
    (12, "Adventure", "모험"),
    (16, "Animation", "애니메이션"),
    (35, "Comedy", "코미디"),
    (80, "Crime", "범죄"),
    (99, "Documentary", "다큐멘터리"),
    (18, "Drama", "드라마"),
    (10751, "Family", "가족"),
    (14, "Fantasy", "판타지"),
    (36, "History", "역사"),
    (27, "Horror", "공포"),
    (10402, "Music", "음악"),
    (9648, "Mystery", "미스터리"),
    (10749, "Romance", "로맨스"),
    (878, "Science Fiction", "SF"),
    (10770, "TV Movie", "TV 영화"),
    (53, "Thriller", "스릴러"),
    (10752, "War", "전쟁"),
    (37, "Western", "서부"),
)
# How often each genre is drawn (Drama and Comedy dominate TMDB, TV Movie and Western are rare).
_GENRE_WEIGHTS = (9, 6, 4, 9, 5, 2, 12, 4, 4, 2, 6, 2, 3, 6, 5, 1, 8, 1, 1)

_LANGUAGES = ("en", "ko", "ja", "fr", "es", "hi", "zh", "de", "it", "sv")
_LANGUAGE_WEIGHTS = (0.58, 0.14, 0.08, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.01)

_ADJECTIVES = (
    "Silent", "Last", "Broken", "Hidden", "Golden", "Crimson", "Endless", "Lost", "Secret",
    "Frozen", "Burning", "Midnight", "Distant", "Wild", "Quiet", "Final", "Electric", "Paper",
    "Iron", "Little", "Northern", "Hollow", "Bright", "Savage", "Gentle", "Restless",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Kingdom", "Summer", "Witness", "Garden", "River", "Signal", "Empire", "Promise",
    "Stranger", "Orbit", "Frontier", "Detective", "Island", "Melody", "Shadow", "Horizon",
    "Letter", "Heist", "Winter", "Machine", "Family", "Road", "Storm", "Dream", "Station",
)  # fmt: skip
_SUBJECTS = (
    "A retired detective", "Two estranged sisters", "A young pilot", "A small-town teacher",
    "An ambitious chef", "A washed-up boxer", "A curious robot", "A grieving father",
    "A band of misfits", "A rookie reporter", "An exiled prince", "A stubborn farmer",
)  # fmt: skip
_PLOTS = (
    "uncovers a conspiracy that reaches the highest levels of power",
    "must survive one impossible night",
    "sets out on a journey across a divided country",
    "discovers a secret that changes everything",
    "is forced to confront a painful past",
    "plans one last job before leaving town for good",
    "falls for the last person they expected",
    "races against time to save a family",
)


@dataclass(frozen=True)
class Catalog:
    """Movies sorted by popularity, highest first, as TMDB's `/movie/popular` lists them."""

    movies: tuple[dict[str, Any], ...]
    seed: int

    @property
    def total_results(self) -> int:
        return len(self.movies)

    @property
    def total_pages(self) -> int:
        return max(1, math.ceil(len(self.movies) / PAGE_SIZE))

    def page(self, number: int) -> list[dict[str, Any]]:
        """The records of one 1-based page (a fresh copy; empty beyond the end)."""
        start = (number - 1) * PAGE_SIZE
        return [
            dict(m, genre_ids=list(m["genre_ids"])) for m in self.movies[start : start + PAGE_SIZE]
        ]


def genres(language: str | None) -> list[dict[str, Any]]:
    """TMDB's movie genre list, named in Korean for a `ko*` language and in English otherwise."""
    korean = (language or "").lower().startswith("ko")
    return [{"id": gid, "name": ko if korean else en} for gid, en, ko in GENRES]


def _image_paths(rng: np.random.Generator, n: int, missing_rate: float) -> list[str | None]:
    alphabet = np.array(list(string.ascii_letters + string.digits))
    chars = alphabet[rng.integers(0, len(alphabet), size=(n, 27))]
    missing = rng.random(n) < missing_rate
    return [None if missing[i] else "/" + "".join(chars[i]) + ".jpg" for i in range(n)]


def generate(n_movies: int = 8000, seed: int = 7) -> Catalog:
    """Generate `n_movies` TMDB-shaped movie records; the same seed gives the same catalog.

    Popularity and vote counts are heavy-tailed (a few blockbusters, a long tail),
    vote averages cluster around 6.5, a few movies have no poster or no votes yet.
    """
    if n_movies < 0:
        raise ValueError("n_movies must be >= 0")
    n = n_movies
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(2, 1_500_000), size=n, replace=False)
    raw_popularity = 1.5 + 6.0 * rng.pareto(1.3, n)
    popularity = np.round(raw_popularity / (1.0 + raw_popularity / 8000.0), 3)  # soft cap ~8000
    # Vote counts follow popularity loosely, with lots of noise and some movies not voted yet.
    vote_count = np.minimum(
        np.floor(popularity**0.9 * rng.lognormal(mean=3.0, sigma=1.0, size=n)), 40_000
    ).astype(np.int64)
    vote_count[rng.random(n) < 0.04] = 0
    vote_average = np.round(np.clip(rng.normal(6.5, 1.0, n), 0.5, 10.0), 3)
    vote_average[vote_count == 0] = 0.0

    # 1-3 distinct genres per movie, weighted, drawn all at once (Gumbel top-k).
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.3, 0.45, 0.25])
    log_w = np.log(np.asarray(_GENRE_WEIGHTS, dtype=float))
    genre_rank = np.argsort(-(log_w + rng.gumbel(size=(n, len(GENRES)))), axis=1)

    language_p = np.asarray(_LANGUAGE_WEIGHTS) / sum(_LANGUAGE_WEIGHTS)
    languages = rng.choice(len(_LANGUAGES), size=n, p=language_p)
    adjectives = rng.integers(0, len(_ADJECTIVES), n)
    nouns = rng.integers(0, len(_NOUNS), n)
    sequels = np.where(rng.random(n) < 0.15, rng.integers(2, 5, n), 0)
    subjects = rng.integers(0, len(_SUBJECTS), n)
    plots = rng.integers(0, len(_PLOTS), n)
    # Recent releases dominate a popular list: skew days towards the end of the span.
    epoch = date(1950, 1, 1)
    span_days = (date(2026, 12, 31) - epoch).days
    release_days = np.floor(span_days * rng.random(n) ** 0.35).astype(np.int64)
    no_date = rng.random(n) < 0.01
    posters = _image_paths(rng, n, missing_rate=0.05)
    backdrops = _image_paths(rng, n, missing_rate=0.10)
    adult = rng.random(n) < 0.003
    video = rng.random(n) < 0.01

    movies = []
    for i in range(n):
        title = f"The {_ADJECTIVES[adjectives[i]]} {_NOUNS[nouns[i]]}"
        if sequels[i]:
            title += f" {int(sequels[i])}"
        language = _LANGUAGES[languages[i]]
        released = epoch + timedelta(days=int(release_days[i]))
        movies.append(
            {
                "adult": bool(adult[i]),
                "backdrop_path": backdrops[i],
                "genre_ids": [GENRES[j][0] for j in genre_rank[i, : n_genres[i]]],
                "id": int(ids[i]),
                "original_language": language,
                "original_title": title if language == "en" else f"{title} ({language})",
                "overview": f"{_SUBJECTS[subjects[i]]} {_PLOTS[plots[i]]}.",
                "popularity": float(popularity[i]),
                "poster_path": posters[i],
                "release_date": "" if no_date[i] else released.isoformat(),
                "title": title,
                "video": bool(video[i]),
                "vote_average": float(vote_average[i]),
                "vote_count": int(vote_count[i]),
            }
        )
    movies.sort(key=lambda m: (-m["popularity"], m["id"]))
    return Catalog(movies=tuple(movies), seed=seed)
