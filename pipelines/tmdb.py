"""TMDB API v3 client: rate limiting, retries with backoff, redaction, record validation.

Transport faults (429, 5xx, timeouts, refused or dropped connections) are retried by urllib3's
`Retry` mounted on a requests `Session`: exponential backoff with jitter, honouring
``Retry-After``. A few faults only show up once the body is read (a truncated or non-JSON
body, a broken envelope); those get the same number of attempts here. 400/401/404 are
permanent and raise at once.

Credentials are never logged, never part of an exception message and never written anywhere:
every URL and message leaving this module goes through `redact`.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipelines.errors import TMDBAuthError, TMDBPermanentError, TMDBUnavailableError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.themoviedb.org/3"
MAX_PAGE = 500  # TMDB serves pages 1..500 of every list
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_API_KEY_IN_TEXT = re.compile(r"(api_key=)[^&\s'\"]+", re.IGNORECASE)
_BEARER_IN_TEXT = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


# -- redaction ----------------------------------------------------------------------------


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret, `api_key=` value and Bearer token replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _API_KEY_IN_TEXT.sub(r"\1***", text)
    return _BEARER_IN_TEXT.sub(r"\1***", text)


def public_url(url: str) -> str:
    """A URL safe to log or record: no user info, no query string (where `api_key` lives)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedactingFilter(logging.Filter):
    """Defence in depth: scrub secrets from every record a handler emits (third-party too)."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self._secrets)
        if cleaned != message or record.exc_info:
            record.msg, record.args = cleaned, None
            if record.exc_info:
                # Tracebacks would repeat the URL; keep the (redacted) one-line cause only.
                record.msg = f"{cleaned} ({redact(str(record.exc_info[1]), self._secrets)})"
                record.exc_info = record.exc_text = None
        return True


# -- records ------------------------------------------------------------------------------

PositiveInt = Annotated[StrictInt, Field(gt=0)]

# What a TMDB image path looks like (``/kqjL17yufvn9OVLyXYpvtyrFfak.jpg``): the page appends it
# to its poster base URL, so anything else (a full URL, ``..``, a query, markup) is refused.
POSTER_PATH = re.compile(r"/[A-Za-z0-9_-]+\.(?:jpg|jpeg|png|svg|webp)")
MAX_TITLE = 300  # TMDB's longest titles are under 200 characters
MAX_OVERVIEW = 5_000  # TMDB caps overviews at about 1,000


class MovieRecord(BaseModel):
    """One validated entry of `/movie/popular` (types are checked, not coerced).

    Shown on the page, so bounded: ``poster_path`` must be a TMDB image path (`POSTER_PATH`),
    titles at most `MAX_TITLE` characters and the overview at most `MAX_OVERVIEW`; a record
    that breaks any of these is quarantined like any other invalid record, with its reason.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: PositiveInt
    title: Annotated[StrictStr, Field(min_length=1, max_length=MAX_TITLE)]
    vote_average: Annotated[float, Field(ge=0, le=10, strict=True)]
    vote_count: Annotated[StrictInt, Field(ge=0)]
    popularity: Annotated[float, Field(ge=0, strict=True)]
    release_date: date | None = None
    genre_ids: list[StrictInt] = Field(default_factory=list)
    poster_path: StrictStr | None = None
    backdrop_path: StrictStr | None = None
    original_title: Annotated[StrictStr, Field(max_length=MAX_TITLE)] | None = None
    original_language: StrictStr | None = None
    overview: Annotated[StrictStr, Field(max_length=MAX_OVERVIEW)] | None = None
    adult: StrictBool | None = None
    video: StrictBool | None = None

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title is blank")
        return value

    @field_validator("poster_path")
    @classmethod
    def _poster_path(cls, value: str | None) -> str | None:
        if value is not None and not POSTER_PATH.fullmatch(value):
            raise ValueError("poster_path must be a TMDB image path like /abc123.jpg")
        return value

    @field_validator("release_date", mode="before")
    @classmethod
    def _release_date(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("release_date must be YYYY-MM-DD or empty")
        return date.fromisoformat(value)  # raises on 2023-13-45


def validate_movie(record: Any) -> MovieRecord | str:
    """The validated record, or a one-line reason why it is invalid (never raises)."""
    if not isinstance(record, dict):
        return f"record is {type(record).__name__}, not an object"
    try:
        return MovieRecord.model_validate(record)
    except ValidationError as err:
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" else "")
            for e in err.errors(include_url=False)
        )


@dataclass(frozen=True)
class PopularPage:
    """One page of `/movie/popular`: its raw results plus TMDB's totals."""

    page: int
    results: list[Any]
    total_pages: int
    total_results: int

    @classmethod
    def from_json(cls, body: Any, page: int) -> PopularPage:
        """Check the envelope (not the records: those are validated one by one later)."""
        if not isinstance(body, dict):
            raise ValueError(f"envelope is {type(body).__name__}, not an object")
        results = body.get("results")
        if not isinstance(results, list):
            raise ValueError("envelope has no 'results' list")
        if body.get("page") != page:
            raise ValueError(f"envelope is for page {body.get('page')!r}, asked for {page}")
        totals = (body.get("total_pages"), body.get("total_results"))
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in totals):
            raise ValueError("envelope has no valid total_pages/total_results")
        return cls(page, results, body["total_pages"], body["total_results"])

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "results": self.results,
            "total_pages": self.total_pages,
            "total_results": self.total_results,
        }


# -- transport ----------------------------------------------------------------------------


class RateLimiter:
    """At most `rate` calls per second, evenly spaced (0 or less: unlimited). Thread-safe."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            time.sleep(wait)


class _LoggingRetry(Retry):
    """urllib3 `Retry` that logs each retry at INFO, with the URL's credential redacted."""

    # Class attributes, not instance ones: `Retry.new()` rebuilds instances from __init__ args.
    secrets: tuple[str, ...] = ()
    limit: int = 0

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        new = super().increment(method, url, response, error, *args, **kwargs)
        attempt = len(new.history)
        if response is not None:
            cause = f"HTTP {response.status}"
            retry_after = response.headers.get("Retry-After")
            wait = (
                f"Retry-After {retry_after} s" if retry_after else f"{new.get_backoff_time():.1f} s"
            )
        else:
            cause = type(error).__name__ if error else "error"
            wait = f"{new.get_backoff_time():.1f} s"
        log.info(
            "retry %d/%d of GET %s after %s (waiting %s)",
            attempt,
            self.limit,
            redact(urlsplit(url or "").path + _query_without_key(url), self.secrets),
            cause,
            wait,
        )
        return new


def _query_without_key(url: str | None) -> str:
    query = urlsplit(url or "").query
    kept = [p for p in query.split("&") if p and not p.lower().startswith("api_key=")]
    return f"?{'&'.join(kept)}" if kept else ""


class TMDBClient:
    """A small TMDB API v3 client for the endpoints the crawl needs."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        access_token: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        rate_limit: float = 10.0,
        user_agent: str = "movie-mlops-crawler",
    ) -> None:
        if not access_token and not api_key:
            raise TMDBAuthError(
                "no TMDB credential: set TMDB_ACCESS_TOKEN (preferred) or TMDB_API_KEY"
            )
        self.base_url = base_url.rstrip("/")
        self.public_base_url = public_url(self.base_url)
        self.auth_mode = "bearer" if access_token else "api_key"
        self._api_key = None if access_token else api_key
        self._secrets = tuple(s for s in (access_token, api_key) if s)
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_factor = backoff_factor
        self._limiter = RateLimiter(rate_limit)

        retry_cls = type(
            "_Retry", (_LoggingRetry,), {"secrets": self._secrets, "limit": max_retries}
        )
        retry = retry_cls(
            total=max_retries,
            connect=max_retries,
            read=max_retries,
            status=max_retries,
            other=max_retries,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_jitter=backoff_factor,
            backoff_max=60.0,
            respect_retry_after_header=True,
            retry_after_max=120,
            raise_on_status=False,  # the last 429/5xx comes back and is classified below
        )
        self._session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": user_agent})
        if access_token:
            self._session.headers["Authorization"] = f"Bearer {access_token}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> TMDBClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints -------------------------------------------------------------------------

    def popular_page(self, page: int, *, language: str, region: str) -> PopularPage:
        """One page of `/movie/popular` (1..500)."""
        if not 1 <= page <= MAX_PAGE:
            raise TMDBPermanentError(f"invalid page {page}: TMDB serves pages 1..{MAX_PAGE}")
        params = {"page": page, "language": language, "region": region}
        return self._get("/movie/popular", params, lambda body: PopularPage.from_json(body, page))

    def movie_genres(self, *, language: str) -> list[dict[str, Any]]:
        """TMDB's movie genre list: ``[{"id": 28, "name": "Action"}, ...]``."""

        def parse(body: Any) -> list[dict[str, Any]]:
            genres = body.get("genres") if isinstance(body, dict) else None
            if not isinstance(genres, list) or not all(
                isinstance(g, dict)
                and isinstance(g.get("id"), int)
                and isinstance(g.get("name"), str)
                for g in genres
            ):
                raise ValueError("envelope has no valid 'genres' list")
            return [{"id": g["id"], "name": g["name"]} for g in genres]

        return self._get("/genre/movie/list", {"language": language}, parse)

    # -- plumbing --------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any], parse: Any) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        what = f"GET {urlsplit(self.base_url).path}{path}?{query}"
        if self._api_key:
            params = {**params, "api_key": self._api_key}
        url = self.base_url + path
        # urllib3 retries everything up to the response headers; a body that breaks while
        # being read or does not parse is retried here with the same budget and backoff.
        for attempt in range(self._max_retries + 1):
            self._limiter.acquire()
            try:
                response = self._session.get(url, params=params, timeout=self._timeout)
            except requests.RequestException as err:
                raise TMDBUnavailableError(
                    f"{what} failed after {self._max_retries} retries: "
                    f"{redact(_describe(err), self._secrets)}"
                ) from None  # the chained exception would carry the URL with the api_key
            self._raise_for_status(response, what)
            try:
                return parse(response.json())
            except (ValueError, requests.RequestException) as err:
                reason = redact(f"{type(err).__name__}: {err}", self._secrets)[:200]
                if attempt == self._max_retries:
                    raise TMDBUnavailableError(
                        f"{what}: TMDB returned a malformed response after "
                        f"{self._max_retries} retries ({reason})"
                    ) from None
                delay = self._backoff_factor * 2**attempt + random.random() * self._backoff_factor
                log.info(
                    "retry %d/%d of %s after a malformed response (%s; waiting %.1f s)",
                    attempt + 1,
                    self._max_retries,
                    what,
                    reason,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _tmdb_message(response)
        if status == 401:
            raise TMDBAuthError(
                f"TMDB rejected the credential (HTTP 401: {message}); check TMDB_ACCESS_TOKEN "
                "or TMDB_API_KEY"
            )
        if status == 404:
            raise TMDBPermanentError(
                f"{what}: not found (HTTP 404: {message}); check TMDB_BASE_URL "
                f"({self.public_base_url})"
            )
        if status in RETRY_STATUSES:
            raise TMDBUnavailableError(
                f"{what} still failed after {self._max_retries} retries (HTTP {status}: {message})"
            )
        raise TMDBPermanentError(f"{what}: TMDB rejected the request (HTTP {status}: {message})")


def _tmdb_message(response: requests.Response) -> str:
    try:
        body = response.json()
        message = body.get("status_message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return str(message or response.reason or "no message")[:200]


def _describe(err: requests.RequestException) -> str:
    """A short cause: the innermost reason (e.g. ReadTimeoutError) rather than the URL soup."""
    reason: Any = err
    while True:
        inner = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if isinstance(inner, BaseException) and inner is not reason:
            reason = inner
            continue
        break
    return f"{type(err).__name__} ({type(reason).__name__}: {reason})"
