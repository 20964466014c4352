"""Fault injection: scripted per-page faults and seeded random rates, plus request statistics.

A scripted fault applies to the next ``times`` requests of its page (``None``: every request),
in the order given, so "page 3: 429 twice, then OK" is ``[{"page": 3, "kind": "status",
"status": 429, "times": 2, "retry_after": 1}]``. Data faults (``malformed``, ``shift``) apply
to every request by default: bad data stays bad when you fetch it again.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tmdb_sandbox.catalog import MAX_PAGE


class FaultKind(str, Enum):
    STATUS = "status"  # answer `status` (429, 5xx) with TMDB's error body instead of the page
    SLOW = "slow"  # sleep `delay_ms` before answering (trips a client's read timeout)
    MALFORMED = "malformed"  # corrupt the record at `index` (see MalformedVariant)
    SHIFT = "shift"  # serve the page as if the list moved down by `count` (duplicates ids)
    BAD_JSON = "bad_json"  # a 200 whose body is truncated JSON
    DROP = "drop"  # close the connection without answering


class MalformedVariant(str, Enum):
    VOTE_AVERAGE = "vote_average"  # vote_average 42 (outside 0..10)
    MISSING_TITLE = "missing_title"
    STRING_ID = "string_id"  # id "12345" instead of 12345
    NEGATIVE_VOTE_COUNT = "negative_vote_count"
    BAD_DATE = "bad_date"  # release_date "2023-13-45"
    GENRE_IDS = "genre_ids"  # genre_ids "28,12" instead of a list
    # hostile records: what a page showing them must never get
    POSTER_URL = "poster_url"  # poster_path a full URL on another host
    POSTER_MARKUP = "poster_markup"  # poster_path breaking out of an attribute
    LONG_TITLE = "long_title"  # a 10,000-character title
    LONG_OVERVIEW = "long_overview"  # a 100,000-character overview


_ONE_SHOT = {FaultKind.STATUS, FaultKind.SLOW, FaultKind.BAD_JSON, FaultKind.DROP}
_STATUS_CODES = {429, 500, 502, 503, 504}


class PageFault(BaseModel):
    """One scripted fault on one page of `/movie/popular`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    page: int = Field(ge=1, le=MAX_PAGE)
    kind: FaultKind
    times: int | None = Field(default=None, ge=1)
    status: int = 503
    retry_after: int | None = Field(default=None, ge=0)
    delay_ms: int = Field(default=3000, ge=0)
    variant: MalformedVariant = MalformedVariant.VOTE_AVERAGE
    index: int = Field(default=0, ge=0)
    count: int = Field(default=3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_times(cls, data: Any) -> Any:
        # Transport faults happen once unless told otherwise; data faults persist.
        if isinstance(data, dict) and "times" not in data:
            kind = data.get("kind")
            one_shot = kind in {k.value for k in _ONE_SHOT} or kind in _ONE_SHOT
            data = {**data, "times": 1 if one_shot else None}
        return data

    @model_validator(mode="after")
    def _check_status(self) -> PageFault:
        if self.kind is FaultKind.STATUS and self.status not in _STATUS_CODES:
            raise ValueError(f"status must be one of {sorted(_STATUS_CODES)}")
        return self


class Faults(BaseModel):
    """The whole fault configuration (the body of ``PUT /__sandbox/faults``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scripted: list[PageFault] = Field(default_factory=list)
    rate_429: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_5xx: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_ms: int = Field(default=2000, ge=0)
    latency_ms: int = Field(default=0, ge=0)  # added to every page request
    retry_after: int = Field(default=1, ge=0)  # Retry-After of random 429s
    seed: int = 0


def parse_fault_spec(spec: str) -> PageFault:
    """Parse the compact CLI form ``PAGE:KIND[xTIMES][:key=value,...]``.

    KIND is a status code (429, 500, 502, 503, 504) or a kind name; ``x*`` means every request.
    Examples: ``3:429x2:retry_after=1``, ``5:503``, ``7:slow:delay_ms=3000``,
    ``2:malformed:variant=missing_title,index=4``, ``4:shift:count=3``, ``6:bad_json``.
    """
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"fault {spec!r}: expected PAGE:KIND[xTIMES][:key=value,...]")
    data: dict[str, Any] = {"page": parts[0]}
    kind, _, times = parts[1].partition("x")
    if kind.isdigit():
        data.update(kind=FaultKind.STATUS.value, status=int(kind))
    else:
        data["kind"] = kind
    if times:
        data["times"] = None if times == "*" else int(times)
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault {spec!r}: expected key=value, got {item!r}")
            data[key.strip()] = value.strip()
    return PageFault.model_validate(data)


@dataclass
class Decision:
    """What to do to one request of one page."""

    delay_s: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    bad_json: bool = False
    malformed: list[PageFault] = field(default_factory=list)
    shift: int = 0


class FaultState:
    """The active faults and how many times each scripted one may still fire (thread-safe)."""

    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self.set(faults)

    def set(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._remaining: list[int | None] = [f.times for f in faults.scripted]
            self._rng = random.Random(faults.seed)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def decide(self, page: int) -> Decision:
        """Consume the faults that apply to this request of `page`."""
        decision = Decision()
        with self._lock:
            faults = self._faults
            decision.delay_s = faults.latency_ms / 1000
            transport_fired = False
            for i, fault in enumerate(faults.scripted):
                if fault.page != page or self._remaining[i] == 0:
                    continue
                if fault.kind in (FaultKind.STATUS, FaultKind.DROP, FaultKind.BAD_JSON):
                    if transport_fired:
                        continue  # one transport fault per request; the next waits its turn
                    transport_fired = True
                    decision.status = fault.status if fault.kind is FaultKind.STATUS else None
                    decision.retry_after = fault.retry_after
                    decision.drop = fault.kind is FaultKind.DROP
                    decision.bad_json = fault.kind is FaultKind.BAD_JSON
                elif fault.kind is FaultKind.SLOW:
                    decision.delay_s += fault.delay_ms / 1000
                elif fault.kind is FaultKind.MALFORMED:
                    decision.malformed.append(fault)
                elif fault.kind is FaultKind.SHIFT:
                    decision.shift = max(decision.shift, fault.count)
                if self._remaining[i] is not None:
                    self._remaining[i] -= 1
            # Random faults draw from the seeded generator in request order.
            draw_slow, draw_429, draw_5xx = (self._rng.random() for _ in range(3))
            if draw_slow < faults.slow_rate:
                decision.delay_s += faults.slow_ms / 1000
            if not transport_fired:
                if draw_429 < faults.rate_429:
                    decision.status, decision.retry_after = 429, faults.retry_after
                elif draw_5xx < faults.rate_5xx:
                    decision.status = self._rng.choice((500, 502, 503, 504))
        return decision


class Stats:
    """Request counts per endpoint, page and outcome (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int | None, str]] = Counter()

    def record(self, endpoint: str, page: int | None, outcome: str | int) -> None:
        with self._lock:
            self._counts[(endpoint, page, str(outcome))] += 1

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """``{"requests": n, "by_status": {...}, "pages": {"3": {"429": 2, "200": 1}}, ...}``."""
        with self._lock:
            counts = dict(self._counts)
        by_status: Counter[str] = Counter()
        by_endpoint: Counter[str] = Counter()
        pages: dict[str, Counter[str]] = {}
        for (endpoint, page, outcome), n in counts.items():
            by_status[outcome] += n
            by_endpoint[endpoint] += n
            if endpoint == "popular" and page is not None:
                pages.setdefault(str(page), Counter())[outcome] += n
        return {
            "requests": sum(by_status.values()),
            "by_status": dict(by_status),
            "by_endpoint": dict(by_endpoint),
            "pages": {p: dict(c) for p, c in sorted(pages.items(), key=lambda kv: int(kv[0]))},
        }
