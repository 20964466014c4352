"""Crawl stage: TMDB `/movie/popular` pages -> an immutable raw snapshot in ``DATA_DIR/raw``.

    python -m pipelines.crawl --start-page 1 --end-page 10

Pages are fetched one by one (rate-limited, retried, see `pipelines.tmdb`) and each is kept in
``DATA_DIR/raw/.partial/<key>/page-NNNN.json`` as soon as it arrives, so a crawl that fails or is
killed resumes where it stopped when rerun with the same parameters. Records are validated;
invalid ones go to ``quarantine.jsonl`` with their page and reason. The popular list shifts
while we crawl, so a movie can show up on two pages: records are merged by id, the first
occurrence wins, and the duplicates are counted. Only a complete crawl is published.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
import typer

from contracts import layout
from contracts.settings import DATA_DIR
from pipelines.cli import configure_logging, run
from pipelines.errors import ConfigError, StorageError, is_storage_failure
from pipelines.lineage import code_version
from pipelines.snapshots import SnapshotStore, isoformat, utc_now
from pipelines.tmdb import (
    DEFAULT_BASE_URL,
    MAX_PAGE,
    MovieRecord,
    PopularPage,
    RedactingFilter,
    TMDBClient,
    public_url,
    validate_movie,
)

# Named explicitly: under `python -m` __name__ would be "__main__".
log = logging.getLogger("pipelines.crawl")

KIND = "tmdb-raw"
PARTIAL_DIR = ".partial"
# Kept pages older than this are refetched: yesterday's popular list is not today's.
PARTIAL_MAX_AGE_S = 24 * 3600

MOVIES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("title", pa.string()),
        ("original_title", pa.string()),
        ("original_language", pa.string()),
        ("overview", pa.string()),
        ("genre_ids", pa.list_(pa.int64())),
        ("popularity", pa.float64()),
        ("vote_average", pa.float64()),
        ("vote_count", pa.int64()),
        ("release_date", pa.string()),  # YYYY-MM-DD or null
        ("poster_path", pa.string()),
        ("backdrop_path", pa.string()),
        ("adult", pa.bool_()),
        ("video", pa.bool_()),
        ("page", pa.int64()),  # page the record was first seen on
        ("rank", pa.int64()),  # 1-based position in the popular list at crawl time
    ]
)


class ProgressMode(str, Enum):
    AUTO = "auto"  # a live bar when stderr is a terminal, log lines otherwise
    BAR = "bar"
    LOG = "log"


@dataclass(frozen=True)
class CrawlSettings:
    """Everything one crawl needs, validated; credentials are kept out of `repr`."""

    data_dir: Path = DATA_DIR.default_path
    base_url: str = DEFAULT_BASE_URL
    access_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    start_page: int = 1
    end_page: int = 10
    region: str = "KR"
    language: str = "ko-KR"
    rate_limit: float = 10.0
    timeout: float = 10.0
    max_retries: int = 5
    backoff_factor: float = 0.5
    progress: ProgressMode = ProgressMode.AUTO

    def __post_init__(self) -> None:
        for name in ("start_page", "end_page"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_PAGE:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"invalid page: {flag} {value} is outside 1..{MAX_PAGE}, the pages TMDB serves"
                )
        if self.start_page > self.end_page:
            raise ConfigError(
                f"invalid page range: --start-page {self.start_page} is after "
                f"--end-page {self.end_page}"
            )
        if self.rate_limit < 0:
            raise ConfigError(f"--rate-limit must be >= 0 (0 = unlimited), got {self.rate_limit}")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.backoff_factor < 0:
            raise ConfigError(f"--backoff-factor must be >= 0, got {self.backoff_factor}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"TMDB_BASE_URL must be an http(s) URL, got {public_url(self.base_url)!r}"
            )

    @property
    def raw_dir(self) -> Path:
        return layout.DataLayout(Path(self.data_dir)).raw

    def resume_key(self) -> str:
        """Names the kept pages of a crawl: same source, region and language, same pages."""
        ident = {
            "base_url": public_url(self.base_url),
            "endpoint": "/movie/popular",
            "region": self.region,
            "language": self.language,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CrawlResult:
    """What a crawl published."""

    snapshot_id: str
    path: Path
    movies: int
    quarantined: int
    duplicates: int
    records_seen: int
    pages: int
    pages_resumed: int
    elapsed_s: float

    def summary(self) -> str:
        return (
            f"raw snapshot {self.snapshot_id}: {self.movies} movies, "
            f"{self.quarantined} quarantined, {self.duplicates} duplicates merged, "
            f"{self.pages} pages ({self.pages_resumed} resumed) in {self.elapsed_s:.1f} s"
        )


# -- kept pages ---------------------------------------------------------------------------


class PartialPages:
    """Pages fetched by an unfinished crawl, one atomic JSON file each, under an exclusive lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def page_file(self, page: int) -> Path:
        return self.path / f"page-{page:04d}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[PartialPages]:
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise ConfigError(
                    f"another crawl with the same parameters is running (lock {self.path}/.lock)"
                ) from err
            for tmp in self.path.glob(".page-*.tmp-*"):  # left by a killed writer
                tmp.unlink(missing_ok=True)
            yield self

    def load(self, page: int) -> PopularPage | None:
        file = self.page_file(page)
        try:
            age = time.time() - file.stat().st_mtime
            if age > PARTIAL_MAX_AGE_S:
                log.info("page %d: kept copy is %.0f h old, fetching it again", page, age / 3600)
                return None
            return PopularPage.from_json(json.loads(file.read_text(encoding="utf-8")), page)
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as err:
            log.warning("page %d: kept copy is unreadable (%s), fetching it again", page, err)
            return None

    def save(self, page: PopularPage) -> None:
        """Write-then-rename, so a killed crawl never leaves half a page under the final name.

        No fsync: kept pages are a cache. After a power loss a torn file fails to parse in
        `load` and the page is fetched again; syncing every page would halve the crawl speed.
        """
        file = self.page_file(page.page)
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        data = json.dumps(page.to_json(), ensure_ascii=False, separators=(",", ":"))
        try:
            tmp.write_text(data, encoding="utf-8")
            os.replace(tmp, file)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if is_storage_failure(err):
                raise StorageError.from_os_error(
                    err, file, len(data.encode("utf-8")), what="pages fetched so far are kept"
                ) from err
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # other crawls' pages may still be kept there
            self.path.parent.rmdir()


# -- progress -----------------------------------------------------------------------------


class _Progress:
    """A live rich bar on a terminal, otherwise a log line about every 10% of the pages."""

    def __init__(self, total: int, mode: ProgressMode) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._bar = mode is ProgressMode.BAR or (mode is ProgressMode.AUTO and sys.stderr.isatty())
        self._every = max(1, math.ceil(total / 10))

    @contextlib.contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self._bar:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("crawl"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages {task.fields[rate]:.1f}/s"),
            TimeRemainingColumn(),
            redirect_stderr=True,
            transient=False,
        )
        self._task = progress.add_task("pages", total=self.total, rate=0.0)
        with progress, _log_through(sys.stderr):
            self._progress = progress
            yield self
        self._bar = False

    def advance(self, page: int, resumed: bool) -> None:
        self.done += 1
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        if self._bar:
            self._progress.update(self._task, advance=1, rate=rate)
            return
        log.debug("page %d %s", page, "resumed from kept copy" if resumed else "fetched")
        if self.done % self._every == 0 or self.done == self.total:
            eta = (self.total - self.done) / rate
            log.info("%d/%d pages (%.1f pages/s, ETA %.0f s)", self.done, self.total, rate, eta)


@contextlib.contextmanager
def _log_through(stream: Any) -> Iterator[None]:
    """Point stderr log handlers at rich's proxy while the bar runs, so lines print above it."""
    swapped = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
            swapped.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, old in swapped:
            handler.setStream(old)


# -- the stage ----------------------------------------------------------------------------


def _row(movie: MovieRecord, page: int, rank: int) -> dict[str, Any]:
    return {
        "id": movie.id,
        "title": movie.title,
        "original_title": movie.original_title,
        "original_language": movie.original_language,
        "overview": movie.overview,
        "genre_ids": list(movie.genre_ids),
        "popularity": float(movie.popularity),
        "vote_average": float(movie.vote_average),
        "vote_count": movie.vote_count,
        "release_date": movie.release_date.isoformat() if movie.release_date else None,
        "poster_path": movie.poster_path,
        "backdrop_path": movie.backdrop_path,
        "adult": movie.adult,
        "video": movie.video,
        "page": page,
        "rank": rank,
    }


def _fetch_pages(
    settings: CrawlSettings, client: TMDBClient, partial: PartialPages
) -> tuple[list[PopularPage], int]:
    """Every page of the range, from the kept copies or TMDB; stops after TMDB's last page."""
    pages: list[PopularPage] = []
    resumed = 0
    end = settings.end_page
    progress = _Progress(end - settings.start_page + 1, settings.progress)
    with progress.running():
        for number in range(settings.start_page, settings.end_page + 1):
            if number > end:
                break
            page = partial.load(number)
            was_kept = page is not None
            if page is not None:
                resumed += 1
            else:
                page = client.popular_page(
                    number, language=settings.language, region=settings.region
                )
                partial.save(page)
            pages.append(page)
            progress.advance(number, was_kept)
            last = min(page.total_pages, MAX_PAGE)
            if last < end:
                log.info("TMDB has %d pages only; stopping there", last)
                end = last
    return pages, resumed


def crawl(settings: CrawlSettings) -> CrawlResult:
    """Fetch the page range, validate and merge the records, publish a raw snapshot."""
    started_at = utc_now()
    t0 = time.monotonic()
    store = SnapshotStore(settings.raw_dir)
    partial = PartialPages(settings.raw_dir / PARTIAL_DIR / settings.resume_key())
    log.info(
        "crawling %s/movie/popular pages %d..%d (region %s, language %s, %s req/s)",
        public_url(settings.base_url),
        settings.start_page,
        settings.end_page,
        settings.region,
        settings.language,
        settings.rate_limit or "unlimited",
    )
    with (
        TMDBClient(
            settings.base_url,
            access_token=settings.access_token,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            backoff_factor=settings.backoff_factor,
            rate_limit=settings.rate_limit,
        ) as client,
        partial.locked(),
    ):
        genres = client.movie_genres(language=settings.language)
        pages, resumed = _fetch_pages(settings, client, partial)

        rows: list[dict[str, Any]] = []
        quarantine: list[dict[str, Any]] = []
        seen_ids: set[int] = set()
        records_seen = duplicates = 0
        for page in pages:
            for index, record in enumerate(page.results):
                records_seen += 1
                movie = validate_movie(record)
                if isinstance(movie, str):
                    quarantine.append(
                        {"page": page.page, "index": index, "reason": movie, "record": record}
                    )
                elif movie.id in seen_ids:
                    duplicates += 1
                else:
                    seen_ids.add(movie.id)
                    rank = (page.page - 1) * 20 + index + 1
                    rows.append(_row(movie, page.page, rank))
        if quarantine:
            log.warning("%d invalid records quarantined", len(quarantine))

        finished_at = utc_now()
        snapshot_id = f"{finished_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        last = pages[-1] if pages else None
        manifest = {
            "kind": KIND,
            "schema_version": 1,
            "params": {
                "start_page": settings.start_page,
                "end_page": settings.end_page,
                "region": settings.region,
                "language": settings.language,
                "rate_limit": settings.rate_limit,
                "timeout": settings.timeout,
                "max_retries": settings.max_retries,
            },
            "source": {
                "base_url": client.public_base_url,
                "endpoint": "/movie/popular",
                "auth": client.auth_mode,
            },
            "pages": {
                "fetched": [p.page for p in pages],
                "count": len(pages),
                "resumed": resumed,
            },
            "counts": {
                "records_seen": records_seen,
                "movies": len(rows),
                "duplicates_merged": duplicates,
                "quarantined": len(quarantine),
                "genres": len(genres),
            },
            "tmdb": {
                "total_pages": last.total_pages if last else None,
                "total_results": last.total_results if last else None,
            },
            "columns": {f.name: str(f.type) for f in MOVIES_SCHEMA},
            "started_at": isoformat(started_at),
            "finished_at": isoformat(finished_at),
            "code_version": code_version(),
        }
        # serialised first, so a full disk is reported with the space needed before writing
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=MOVIES_SCHEMA), sink)
        files = {
            layout.RAW_MOVIES: sink.getvalue().to_pybytes(),
            layout.RAW_QUARANTINE: "".join(
                json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n" for entry in quarantine
            ).encode("utf-8"),
            layout.RAW_GENRES: (
                json.dumps({"genres": genres}, ensure_ascii=False, indent=2) + "\n"
            ).encode("utf-8"),
        }
        with store.staging(snapshot_id) as staging:
            store.write_files(staging, files)
            path = store.publish(staging, snapshot_id, manifest).path
        partial.remove()

    return CrawlResult(
        snapshot_id=snapshot_id,
        path=path,
        movies=len(rows),
        quarantined=len(quarantine),
        duplicates=duplicates,
        records_seen=records_seen,
        pages=len(pages),
        pages_resumed=resumed,
        elapsed_s=time.monotonic() - t0,
    )


# -- CLI ----------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    start_page: Annotated[int, typer.Option(help="First page (TMDB serves 1..500).")] = 1,
    end_page: Annotated[int, typer.Option(help="Last page, inclusive (<= 500).")] = 10,
    region: Annotated[str, typer.Option(help="ISO 3166-1 region.")] = "KR",
    language: Annotated[str, typer.Option(help="ISO 639-1 language, e.g. ko-KR.")] = "ko-KR",
    data_dir: Annotated[
        Path, typer.Option(envvar=DATA_DIR.name, help="Root of the snapshots.")
    ] = DATA_DIR.default_path,
    base_url: Annotated[
        str, typer.Option(envvar="TMDB_BASE_URL", help="TMDB API root.")
    ] = DEFAULT_BASE_URL,
    rate_limit: Annotated[
        float, typer.Option(envvar="TMDB_RATE_LIMIT", help="Requests per second; 0 = unlimited.")
    ] = 10.0,
    timeout: Annotated[float, typer.Option(help="Seconds to connect and to read.")] = 10.0,
    max_retries: Annotated[int, typer.Option(help="Retries per request.")] = 5,
    backoff_factor: Annotated[
        float, typer.Option(help="Exponential backoff base, seconds (plus as much jitter).")
    ] = 0.5,
    progress: Annotated[ProgressMode, typer.Option(help="Progress display.")] = ProgressMode.AUTO,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Crawl TMDB's popular movies into an immutable raw snapshot under DATA_DIR/raw.

    The credential comes from the environment only (never a flag, which `ps` would show):
    TMDB_ACCESS_TOKEN (preferred, sent as a Bearer token) or TMDB_API_KEY.
    """
    configure_logging(verbose)
    access_token = os.environ.get("TMDB_ACCESS_TOKEN") or None
    api_key = os.environ.get("TMDB_API_KEY") or None
    redactor = RedactingFilter([access_token, api_key])
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)

    def stage() -> CrawlResult:
        settings = CrawlSettings(
            data_dir=data_dir,
            base_url=base_url,
            access_token=access_token,
            api_key=api_key,
            start_page=start_page,
            end_page=end_page,
            region=region,
            language=language,
            rate_limit=rate_limit,
            timeout=timeout,
            max_retries=max_retries,
            backoff_factor=backoff_factor,
            progress=progress,
        )
        return crawl(settings)

    result = run(stage)
    typer.echo(result.summary())


if __name__ == "__main__":  # run the imported module, so loggers and classes keep their names
    from pipelines.crawl import app as _app

    _app()
