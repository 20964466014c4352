"""Sticky assignment of users to the arms of a canary (A/B by user).

During a canary every request that names a user (the ``X-User-Id`` header,
`contracts.events.USER_ID_HEADER`, else ``instances[0].user_id`` of a V1 body) goes to the same
arm for as long as the percent does not change:

    bucket = bucket(user id)            # 0..99, a stable hash of the id
    canary  iff  bucket < percent       # is_canary

so raising the percent only moves users from the stable arm into the canary, never back.

The hash is nginx's: ``split_clients`` hashes its key with MurmurHash2 (seed 0, as in nginx's
``src/core/ngx_murmurhash.c``) and sends a key to its first part ``P%`` when the hash is below
``floor(P * 100 * 0xffffffff / 10000)``. `bucket` uses exactly those thresholds, so the cluster's
nginx (``split_clients "${http_x_user_id}" … { P% latest; * prev; }`` in
docker/frontend/default.conf.template) and the local ingress put every user on the same arm;
tests/integration/test_frontend_nginx.py checks the two agree on real nginx.
"""

from __future__ import annotations

from bisect import bisect_right

ARM_HEADER = "X-Canary-Arm"  # response header during a canary: which arm answered
CANARY, STABLE = "canary", "stable"
# Knative's tags of the two arms (KServe names them so when canaryTrafficPercent is set); the
# cluster's nginx sends the chosen one as the Knative-Serving-Tag request header
CANARY_TAG, STABLE_TAG = "latest", "prev"
BUCKETS = 100

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
# nginx's split_clients threshold of a first part of k %: hash < _THRESHOLDS[k - 1] -> that part
_THRESHOLDS = [k * 100 * _MASK // 10000 for k in range(1, BUCKETS)]


def murmur_hash2(data: bytes) -> int:
    """MurmurHash2, 32 bit, seed 0: nginx's ``ngx_murmur_hash2`` (the hash of split_clients)."""
    length = len(data)
    h = length & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - full
    if rest:
        if rest == 3:
            h ^= data[full + 2] << 16
        if rest >= 2:
            h ^= data[full + 1] << 8
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def bucket(key: str) -> int:
    """The user's bucket, 0..99: the same key always gets the same bucket, here and in nginx."""
    return bisect_right(_THRESHOLDS, murmur_hash2(key.encode("utf-8")))


def is_canary(bucket: int, percent: int) -> bool:
    """Whether a user in ``bucket`` is on the canary arm when the canary has ``percent`` %."""
    return bucket < percent
