"""Top-k selection: the k best columns of score rows, ties towards the smaller index."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k best scores, best first.

    Ties are broken towards the smaller column index, so the result is a function of the scores
    alone. ``-inf`` marks excluded items: they sort last and callers drop them (a
    `Recommendation` is then shorter than k).

    For wide rows a full sort or ``argpartition`` costs ~90 µs per 10k-item row; instead we split
    each row into ~√m groups (the columns of a ``(depth, groups)`` reshape, whose maxima are one
    vectorised element-wise ``max``) and take the k-th largest group maximum: a lower bound of
    the row's k-th best score (k groups each hold an element at least that large; items left
    out of the reshape only add candidates). Only the few elements above that bound (~k per
    row on real scores) are gathered and sorted.
    """
    n, m = scores.shape
    k = min(k, m)
    depth = int(np.sqrt(m))
    groups = m // depth if depth else 0
    if m <= 256 or k > groups:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)
    maxima = scores[:, : depth * groups].reshape(n, depth, groups).max(axis=1)
    bound = np.partition(maxima, groups - k, axis=1)[:, groups - k]
    flat = np.flatnonzero(scores >= bound[:, None])
    rows, cols = np.divmod(flat, m)
    vals = scores.ravel()[flat]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n))[rows]
    keep = rank < k
    out_idx = np.zeros((n, k), dtype=np.int64)
    out_val = np.full((n, k), -np.inf, dtype=scores.dtype)
    out_idx[rows[keep], rank[keep]] = cols[keep]
    out_val[rows[keep], rank[keep]] = vals[keep]
    return out_idx, out_val


def top_k_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`top_k` of one 1-D row, minus the ``-inf`` entries: the single-request hot path.

    The same algorithm and result as ``top_k(scores[None, :], k)`` (ties towards the smaller
    index) without the batch bookkeeping: ~14 µs instead of ~30 µs on a 10k-item row.
    """
    m = len(scores)
    k = min(k, m)
    depth = int(np.sqrt(m))
    groups = m // depth if depth else 0
    if m <= 256 or k > groups:
        order = np.argsort(-scores, kind="stable")[:k]
    else:
        maxima = scores[: depth * groups].reshape(depth, groups).max(axis=0)
        bound = np.partition(maxima, groups - k)[groups - k]
        candidates = np.flatnonzero(scores >= bound)  # ascending: a stable sort keeps id order
        order = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    values = scores[order]
    if len(values) and values[-1] == -np.inf:  # excluded items sort last: drop them
        keep = values > -np.inf
        order, values = order[keep], values[keep]
    return order, values
