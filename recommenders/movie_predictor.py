"""`movie_predictor`: the original project's 3 → 64 → C MLP, kept for lineage.

The network is a classifier: from one interaction's features ``(rating, popularity,
watch_seconds)`` it predicts which of the C content ids the interaction was about
(ReLU hidden layer of 64, softmax over C).

The fix. The original compared the softmax output (a C-vector) with the integer label, so the
loss had no useful gradient and the network never learned. Here the loss is the cross-entropy
against the one-hot label, ``-log softmax(z)[y]``, whose gradient with respect to the logits is
``softmax(z) - onehot(y)``; training is mini-batch Adam in numpy, seeded, and the per-epoch
mean loss is kept (``loss_history``) so a run can show that it decreased.

Features. Missing ratings / watch times are imputed with the training mean; popularity is the
catalog's TMDB ``popularity`` (catalog median for items the catalog lacks) or, without a
catalog, the item's number of training interactions; popularity is taken as ``log1p`` (it is
heavy-tailed). All three are standardised with the training mean and standard deviation.

Recommending. A classifier over single interactions is not a recommender by itself; we score
a user by feeding the *average feature vector of the user's training interactions* through the
network and ranking content ids by the softmax probability. An anonymous history has no
ratings or watch times, so its vector is the average of the history items' mean feature
vectors (each item's average over its training interactions). This is weak by construction —
it is here to measure the lineage model against the others, not to serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommenders.base import FittedRecommender, Trainer
from recommenders.data import Weighting, build_matrix, display_catalog, item_popularity

FEATURES = ("rating", "popularity", "watch_seconds")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _impute(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    fill = values[finite].mean() if finite.any() else 0.0
    return np.where(finite, values, fill)


class FittedMoviePredictor(FittedRecommender):
    """Forward pass of the MLP on user / history average feature vectors."""

    model_type = "movie_predictor"

    def _prepare(self) -> None:
        a = self.arrays
        self.w1, self.b1 = a["w1"].astype(np.float32), a["b1"].astype(np.float32)
        self.w2, self.b2 = a["w2"].astype(np.float32), a["b2"].astype(np.float32)
        self.user_features = a["user_features"].astype(np.float32)
        self.item_features = a["item_features"].astype(np.float32)
        self.loss_history = a["loss_history"]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax over content ids for standardised feature rows (n x 3)."""
        hidden = np.maximum(features @ self.w1 + self.b1, 0.0)
        return _softmax(hidden @ self.w2 + self.b2)

    def _score_users(self, user_index: np.ndarray) -> np.ndarray:
        return self.probabilities(self.user_features[user_index])

    def _score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        counts = np.maximum(np.diff(profiles.indptr), 1)[:, None]
        binary = sp.csr_matrix(
            (np.ones_like(profiles.data), profiles.indices, profiles.indptr), shape=profiles.shape
        )
        return self.probabilities(np.asarray(binary @ self.item_features) / counts)


@dataclass(frozen=True)
class MoviePredictor(Trainer):
    """Hyperparameters of the MLP and its Adam optimiser."""

    name: ClassVar[str] = "movie_predictor"
    hidden: int = 64
    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.01
    seed: int = 0

    def fit(
        self,
        interactions: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
    ) -> FittedMoviePredictor:
        data = build_matrix(interactions, Weighting.BINARY)
        frame = interactions
        n_items = len(data.item_ids)
        counts = np.bincount(data.item_index, minlength=n_items).astype(np.float64)
        item_pop = counts
        if catalog is not None and {"content_id", "popularity"} <= set(catalog.columns):
            by_id = catalog.drop_duplicates("content_id").set_index("content_id")["popularity"]
            pop = pd.to_numeric(by_id.reindex(data.item_ids), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            if np.isfinite(pop).any():
                item_pop = np.where(np.isfinite(pop), pop, np.nanmedian(pop))
        raw = np.column_stack(
            [
                _impute(_column(frame, "rating")),
                np.log1p(np.maximum(item_pop, 0.0))[data.item_index],
                _impute(_column(frame, "watch_seconds")),
            ]
        )
        mean, std = raw.mean(axis=0), raw.std(axis=0)
        std[std == 0] = 1.0
        x = ((raw - mean) / std).astype(np.float32)
        y = data.item_index.astype(np.int64)
        w1, b1, w2, b2, losses = self._train(x, y, n_items)

        users = sp.csr_matrix(
            (np.ones(len(y), dtype=np.float32), (data.user_index, np.arange(len(y)))),
            shape=(len(data.user_ids), len(y)),
        )
        items = sp.csr_matrix(
            (np.ones(len(y), dtype=np.float32), (y, np.arange(len(y)))), shape=(n_items, len(y))
        )
        per_user = np.asarray(users.sum(axis=1))
        per_item = np.asarray(items.sum(axis=1))
        return FittedMoviePredictor(
            params=self.params(),
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            seen=data.matrix,
            popularity=item_popularity(data.matrix),
            arrays={
                "w1": w1,
                "b1": b1,
                "w2": w2,
                "b2": b2,
                "user_features": (users @ x) / per_user,
                "item_features": (items @ x) / per_item,
                "feature_mean": mean,
                "feature_std": std,
                "loss_history": np.asarray(losses, dtype=np.float64),
            },
            catalog=display_catalog(catalog, data.item_ids),
            trained_on=trained_on,
        )

    def _train(
        self, x: np.ndarray, y: np.ndarray, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float]]:
        """Mini-batch Adam on softmax cross-entropy with one-hot targets."""
        rng = np.random.default_rng(self.seed)
        n_in = x.shape[1]
        params = [
            (rng.standard_normal((n_in, self.hidden)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            np.zeros(self.hidden, dtype=np.float32),
            (rng.standard_normal((self.hidden, n_classes)) * np.sqrt(1.0 / self.hidden)).astype(
                np.float32
            ),
            np.zeros(n_classes, dtype=np.float32),
        ]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        step = 0
        losses: list[float] = []
        for _ in range(self.epochs):
            order = rng.permutation(len(y))
            total = 0.0
            for start in range(0, len(y), self.batch_size):
                batch = order[start : start + self.batch_size]
                xb, yb = x[batch], y[batch]
                w1, b1, w2, b2 = params
                pre = xb @ w1 + b1
                hidden = np.maximum(pre, 0.0)
                probs = _softmax(hidden @ w2 + b2)
                rows = np.arange(len(yb))
                total += float(-np.log(probs[rows, yb] + 1e-12).sum())
                # d(mean CE)/d logits = softmax - onehot, averaged over the batch.
                probs[rows, yb] -= 1.0
                probs /= len(yb)
                g_w2 = hidden.T @ probs
                g_b2 = probs.sum(axis=0)
                g_hidden = (probs @ w2.T) * (pre > 0)
                g_w1 = xb.T @ g_hidden
                g_b1 = g_hidden.sum(axis=0)
                step += 1
                for i, g in enumerate((g_w1, g_b1, g_w2, g_b2)):
                    m[i] = beta1 * m[i] + (1 - beta1) * g
                    v[i] = beta2 * v[i] + (1 - beta2) * (g * g)
                    m_hat = m[i] / (1 - beta1**step)
                    v_hat = v[i] / (1 - beta2**step)
                    params[i] -= (self.learning_rate * m_hat / (np.sqrt(v_hat) + eps)).astype(
                        np.float32
                    )
            losses.append(total / len(y))
        w1, b1, w2, b2 = params
        return w1, b1, w2, b2, losses
