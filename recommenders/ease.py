"""EASE: closed-form item-item ridge regression for implicit feedback (Steck, WWW 2019).

With X the user x item matrix (binary, or weighted by watch-time/rating confidence), EASE
learns the item-item matrix B minimising ``||X - X B||² + λ||B||²`` subject to ``diag(B) = 0``.
The solution is closed form: ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` (column-wise), with
the diagonal zeroed. A user's scores are ``x_u B``: the sum of the B rows of the items they saw.

Cost: one dense n_items x n_items Cholesky inverse (O(n³), float32, in place, ~0.4 GB at 10k
items) — independent of the number of users and interactions, which is why it trains 1M rows
in seconds. After solving, each row of B is pruned to its ``neighbours`` largest-magnitude
weights and stored as CSR (float32 values, int32 columns: 8 bytes per weight, 16 MB at 10k
items and 200 neighbours instead of 400 MB dense), so serving memory and the per-user cost
(a sparse gather of the profile's rows) grow with the catalog linearly, not quadratically. The
fit still needs the dense inverse, so it suits catalogs up to a few tens of thousands of items.

Memory and size limits of the fit:

- it holds one dense float32 n x n matrix (the Gram matrix, built a block of columns at a time,
  then factorised, inverted and scaled in place) plus bounded work blocks: `fit_memory_bytes`.
  Before allocating it, the fit compares that with `resources.available_memory` and refuses
  (`ModelTooLargeError`) with what is needed, what is available and the ``max_items`` that
  would fit; ``max_items`` keeps the most-interacted items and drops the other interactions;
- above `THREADED_LAPACK_MAX_ITEMS` items the factorisation runs with OpenBLAS on one thread:
  its threaded Cholesky crashes (SIGSEGV) on large matrices (`recommenders.resources`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from recommenders.base import FittedRecommender, Progress, Trainer
from recommenders.data import (
    Weighting,
    build_matrix,
    display_catalog,
    item_popularity,
    validate_interactions,
)
from recommenders.errors import (
    ArtifactCorruptError,
    HyperparameterError,
    ModelTooLargeError,
    TrainingDataError,
)
from recommenders.resources import available_memory, scipy_uses_openblas, single_threaded_blas

log = logging.getLogger(__name__)

# Rows handled at once when mirroring the inverse and when pruning (bounds the temporaries).
_ROW_BLOCK = 1024
# Bytes one work block may take: a sparse block of Gram columns, a pruning block, a mirrored
# block. The fit holds at most a few of them next to the dense matrix (`fit_memory_bytes`).
_BLOCK_BYTES = 64 << 20
# Above this many items the Cholesky inverse runs with OpenBLAS on one thread. Its threaded
# driver crashed (SIGSEGV) from 38,000 rows on 2 threads and not at 36,000 (scipy 1.17.1,
# OpenBLAS 0.3.30, `recommenders.resources`); half of that leaves room for builds whose blocking
# differs. Single-threaded, a 16k-item inverse takes about a minute.
THREADED_LAPACK_MAX_ITEMS = 16_384


# From this many items on, the inverse's expected duration is logged before it starts.
_ETA_MIN_ITEMS = 8192


def _lapack_flops_per_s(n: int = 2048) -> float:
    """spotrf + spotri rate (n³ flops in all) on a small matrix, with the current BLAS threads.

    After a warm-up call (thread start-up); a small matrix runs below a large one's rate, so the
    estimate errs on the long side (measured: within 3x on a busy 2-core machine).
    """
    for size in (256, n):
        a = np.eye(size, dtype=np.float32, order="F") * size + 1.0
        started = time.perf_counter()
        chol, _ = lapack.spotrf(a, lower=0, overwrite_a=1, clean=0)
        lapack.spotri(chol, lower=0, overwrite_c=1)
    return n**3 / max(time.perf_counter() - started, 1e-9)


def fit_memory_bytes(n_items: int, neighbours: int) -> int:
    """Bytes an EASE fit on ``n_items`` allocates beyond its input matrix.

    One dense float32 ``n_items``² matrix (Gram matrix → Cholesky factor → inverse → weights,
    all in place), up to three work blocks, and the pruned weights (8 bytes each, kept twice
    while the CSR arrays are assembled).
    """
    return 4 * n_items**2 + 3 * _BLOCK_BYTES + 16 * n_items * min(neighbours, n_items)


def max_items_within(memory: int, neighbours: int) -> int:
    """The largest item count whose fit (`fit_memory_bytes`) needs at most ``memory`` bytes."""
    n = max(0, int(((max(memory - 3 * _BLOCK_BYTES, 0)) / 4) ** 0.5))
    while n > 0 and fit_memory_bytes(n, neighbours) > memory:
        n -= max(1, n // 1000)
    return n


def gram_matrix(x: sp.csr_matrix) -> np.ndarray:
    """XᵀX as a dense float32 Fortran-ordered array (what `ease_weights` factorises in place).

    Built a block of columns at a time, so the sparse product never exists whole next to the
    dense one (for a catalog with dense co-occurrence it would take 2-3x the dense bytes).
    """
    n = x.shape[1]
    gram = np.zeros((n, n), dtype=np.float32, order="F")
    xt, xc = x.T.tocsr(), x.tocsc()
    width = max(1, min(n, _BLOCK_BYTES // max(1, 12 * n)))  # 8-12 bytes per sparse entry
    progress = Progress("EASE: Gram matrix columns", n)
    for start in range(0, n, width):
        stop = min(n, start + width)
        block = xt @ xc[:, start:stop]
        block.toarray(out=gram[:, start:stop])  # an F-ordered column slice: contiguous
        progress.update(stop)
    return gram


# Rows gathered at once by `FittedEASE._score_profiles` (an 8 x 10k float64 block: 640 KB).
# With 32 (2.5 MB blocks) glibc kept returning the blocks to the OS and faulting them back in:
# up to ~49,000 page faults per 1,000-user request, 2-3x its time (see base._CHUNK_ROWS).
_GATHER_ROWS = 8


def ease_weights(
    gram: np.ndarray, lambda_: float, *, single_threaded: bool | None = None
) -> np.ndarray:
    """B from the Gram matrix XᵀX (float32, overwritten in place to save a copy).

    ``single_threaded`` runs the LAPACK calls with OpenBLAS on one thread; by default it does
    above `THREADED_LAPACK_MAX_ITEMS` items (the threaded Cholesky's crash).
    """
    gram = np.asarray(gram, dtype=np.float32)
    if not gram.flags.f_contiguous:
        gram = gram.T  # symmetric: the transpose is the same matrix, in Fortran order, no copy
    n = gram.shape[0]
    if single_threaded is None:
        single_threaded = n > THREADED_LAPACK_MAX_ITEMS
    gram[np.diag_indices_from(gram)] += lambda_
    guard = single_threaded_blas() if single_threaded else contextlib.nullcontext(True)
    started = time.perf_counter()
    with guard as limited:
        if not limited and scipy_uses_openblas():
            raise ModelTooLargeError(
                f"EASE on {n:,} items: OpenBLAS's threaded Cholesky crashes on matrices above "
                f"{THREADED_LAPACK_MAX_ITEMS:,} rows and its threads could not be limited here; "
                f"run with OPENBLAS_NUM_THREADS=1 or bound the items (max_items, --max-items "
                f"{THREADED_LAPACK_MAX_ITEMS})"
            )
        threads = "1 BLAS thread" if single_threaded else "threaded BLAS"
        # LAPACK reports no progress: say up front how long it should take
        eta = n**3 / _lapack_flops_per_s() if n >= _ETA_MIN_ITEMS else None
        log.info("EASE: Cholesky factorisation and inverse of %d x %d (%s)%s", n, n, threads,
                 f", roughly {eta / 60:.0f} min" if eta is not None else "")  # fmt: skip
        chol, info = lapack.spotrf(gram, lower=0, overwrite_a=1, clean=0)
        if info != 0:
            raise TrainingDataError(f"EASE Gram matrix is not positive definite (info={info})")
        log.info("EASE: factorised in %.1f s; inverting (about twice as long)",
                 time.perf_counter() - started)  # fmt: skip
        inv, info = lapack.spotri(chol, lower=0, overwrite_c=1)
        if info != 0:
            raise TrainingDataError(f"EASE inverse failed (info={info})")
    log.info("EASE: inverse of %d x %d in %.1f s", n, n, time.perf_counter() - started)
    # spotri fills the upper triangle only; mirror it block by block (no n² index arrays).
    rows = max(1, min(_ROW_BLOCK, _BLOCK_BYTES // max(1, 4 * n)))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        inv[start:stop, :start] = inv[:start, start:stop].T
        block = inv[start:stop, start:stop]
        lower = np.tril_indices(stop - start, -1)
        block[lower] = block.T[lower]
    inv = inv.T  # symmetric again: a C-ordered view, still no copy
    diag = np.diag(inv).copy()
    inv /= -diag[None, :]
    inv[np.diag_indices_from(inv)] = 0.0
    return inv


def prune_neighbours(weights: np.ndarray, neighbours: int) -> sp.csr_matrix:
    """Keep each row's ``neighbours`` largest-magnitude weights of a dense B, as CSR.

    Row i of B is what item i adds to every other item's score, so a user's scores are the sum
    of a few sparse rows. Largest |weight| beats largest positive weight on ML-100k (the negative
    weights carry "people who saw i rarely see j"). Exact zeros (the diagonal, items that
    co-occur with nothing) are dropped. Works in row blocks so the temporaries stay small.
    """
    n = weights.shape[0]
    keep = min(neighbours, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    # |block| and its negation (4 bytes each), argpartition's int64 columns (8 bytes)
    rows = max(1, min(_ROW_BLOCK, _BLOCK_BYTES // max(1, 16 * n)))
    progress = Progress("EASE: pruning rows", n)
    for start in range(0, n, rows):
        block = weights[start : start + rows]
        if keep < n:
            cols = np.argpartition(-np.abs(block), keep - 1, axis=1)[:, :keep]
            cols.sort(axis=1)
        else:
            cols = np.broadcast_to(np.arange(n), block.shape)
        vals = np.take_along_axis(block, cols, axis=1)
        nonzero = vals != 0
        indices.append(cols[nonzero].astype(np.int32))
        data.append(vals[nonzero].astype(np.float32))
        stop = start + len(block)
        indptr[start + 1 : stop + 1] = nonzero.sum(axis=1)
        progress.update(stop)
    np.cumsum(indptr, out=indptr)
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr), shape=weights.shape
    )


class FittedEASE(FittedRecommender):
    """Scores = profile @ B with B sparse: a sum of the profile items' neighbour rows."""

    model_type = "ease"

    def _prepare(self) -> None:
        indptr = np.asarray(self.arrays["B_indptr"], dtype=np.int64)
        indices = np.asarray(self.arrays["B_indices"], dtype=np.int32)
        data = np.asarray(self.arrays["B_data"], dtype=np.float32)
        n = self.n_items
        if (
            len(indptr) != n + 1
            or indptr[0] != 0
            or indptr[-1] != len(indices)
            or len(indices) != len(data)
            or np.any(np.diff(indptr) < 0)
            or (len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < n)
        ):
            raise ArtifactCorruptError(
                f"EASE weights do not fit {n} items: {len(indptr)} row pointers, "
                f"{len(indices)} column indices, {len(data)} values (or indices out of range)"
            )
        # Rows padded to one width (column 0, weight 0: adds an exact +0.0), so gathering the
        # rows of a profile is one 2-D fancy index. Columns are held as intp, what np.bincount
        # takes without a conversion (+8 MB at 10k items x 200, ~15% off a batch).
        lengths = np.diff(indptr)
        width = int(lengths.max(initial=0))
        if np.all(lengths == width):
            self._cols = indices.reshape(n, width).astype(np.intp)
            self._vals = data.reshape(n, width)
        else:
            self._cols = np.zeros((n, width), dtype=np.intp)
            self._vals = np.zeros((n, width), dtype=np.float32)
            mask = np.arange(width) < lengths[:, None]
            self._cols[mask] = indices
            self._vals[mask] = data

    @property
    def weights(self) -> sp.csr_matrix:
        """B as a sparse item x item matrix."""
        a = self.arrays
        n = self.n_items
        return sp.csr_matrix((a["B_data"], a["B_indices"], a["B_indptr"]), shape=(n, n))

    # Both paths add the same float32 products in the same order in float64 (np.bincount) and
    # round once to float32, so `recommend` and `recommend_many` give bit-identical scores.

    def _score_one(self, user_index: int, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        vals = self._vals[items]
        vals *= weights[:, None]
        return np.bincount(self._cols[items].ravel(), vals.ravel(), minlength=self.n_items).astype(
            np.float32
        )

    def _score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        n = self.n_items
        out = np.empty(profiles.shape, dtype=np.float32)
        # Sub-blocks of rows keep the float64 accumulator (rows x n) in cache.
        for start in range(0, profiles.shape[0], _GATHER_ROWS):
            stop = min(start + _GATHER_ROWS, profiles.shape[0])
            lo, hi = profiles.indptr[start], profiles.indptr[stop]
            items = profiles.indices[lo:hi]
            rows = np.repeat(np.arange(stop - start), np.diff(profiles.indptr[start : stop + 1]))
            cols = self._cols[items]
            cols += (rows * n)[:, None]  # row r's scores land in bins r*n .. r*n + n-1
            vals = self._vals[items]
            vals *= profiles.data[lo:hi, None].astype(np.float32)
            block = np.bincount(cols.ravel(), vals.ravel(), minlength=(stop - start) * n)
            out[start:stop] = block.reshape(stop - start, n)
        return out


@dataclass(frozen=True)
class EASE(Trainer):
    """Hyperparameters: ridge strength and how interactions are weighted."""

    name: ClassVar[str] = "ease"
    # Chosen on a validation split carved out of ML-100k's training part (the test part was not
    # used): confidence weighting with λ=1000 and binary with λ=500 tie (NDCG@10 0.266 / 0.265).
    lambda_: float = 1000.0
    weighting: Weighting = Weighting.CONFIDENCE
    alpha: float = 1.0
    # Weights kept per item (row of B), by magnitude. ML-100k NDCG@10 (random split): 0.472 at
    # 100, 0.480 at 200, 0.481 at 300, 0.482 dense (1,682 items); the artefact and the scoring
    # cost grow linearly with it (200: 16 MB and ~40 µs per user at 10k items).
    neighbours: int = 200
    # Fit on the most-interacted items only (None: all). Bounds the fit's n_items² memory; the
    # interactions with other items are dropped (their users keep the rest of their history).
    max_items: int | None = None

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise HyperparameterError(f"neighbours must be at least 1, got {self.neighbours}")
        if self.max_items is not None and self.max_items < 1:
            raise HyperparameterError(f"max_items must be at least 1, got {self.max_items}")

    def bounded(self, interactions: pd.DataFrame) -> pd.DataFrame:
        """The interactions with the ``max_items`` items most users interacted with (ties: the
        smaller content id), or all of them without a bound."""
        frame = validate_interactions(interactions)
        if self.max_items is None:
            return frame
        per_item = frame.drop_duplicates(["user_id", "content_id"])["content_id"].value_counts()
        if len(per_item) <= self.max_items:
            return frame
        ids, users = per_item.index.to_numpy(), per_item.to_numpy()
        keep = ids[np.lexsort((ids, -users))[: self.max_items]]
        kept = frame["content_id"].isin(keep).to_numpy()
        dropped = len(frame) - int(kept.sum())
        log.info("EASE: max_items %d: kept the %d most-interacted of %d items; dropped %d of %d "
                 "interactions (%.1f%%)", self.max_items, self.max_items, len(per_item), dropped,
                 len(frame), 100.0 * dropped / len(frame))  # fmt: skip
        return frame[kept]

    def check_memory(self, n_items: int) -> None:
        """Refuse a fit that would not fit in memory, before allocating it."""
        needed = fit_memory_bytes(n_items, self.neighbours)
        available = available_memory()
        if available is None:
            log.info("EASE: %d items need ~%.1f GB (available memory unknown)", n_items,
                     needed / 1e9)  # fmt: skip
            return
        log.info("EASE: %d items need ~%.1f GB; %.1f GB available", n_items, needed / 1e9,
                 available / 1e9)  # fmt: skip
        if needed > available:
            fits = max_items_within(available, self.neighbours)
            raise ModelTooLargeError(
                f"EASE on {n_items:,} items needs ~{needed / 1e9:.1f} GB (a {n_items:,}² float32 "
                f"matrix and work space) but {available / 1e9:.1f} GB is available; bound it "
                f"with max_items (--max-items {fits:,} keeps the {fits:,} most-interacted items "
                "and fits)"
            )

    def fit(
        self,
        interactions: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
    ) -> FittedEASE:
        data = build_matrix(self.bounded(interactions), Weighting(self.weighting), self.alpha)
        x = data.matrix
        n = x.shape[1]
        self.check_memory(n)
        started = time.perf_counter()
        gram = gram_matrix(x)
        log.info("EASE: %d x %d Gram matrix in %.1f s", n, n, time.perf_counter() - started)
        dense = ease_weights(gram, self.lambda_)
        del gram
        started = time.perf_counter()
        weights = prune_neighbours(dense, self.neighbours)
        del dense
        log.info("EASE: kept %d of %d weights in %.1f s", weights.nnz, n**2,
                 time.perf_counter() - started)  # fmt: skip
        return FittedEASE(
            params=self.params(),
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            seen=x,
            popularity=item_popularity(x),
            arrays={
                "B_indptr": weights.indptr.astype(np.int64),
                "B_indices": weights.indices.astype(np.int32),
                "B_data": weights.data.astype(np.float32),
            },
            catalog=display_catalog(catalog, data.item_ids),
            trained_on=trained_on,
        )
