"""A TMDB-compatible HTTP server over a generated catalog, with fault injection.

It serves the two TMDB API v3 endpoints the crawler uses (``/3/movie/popular`` and
``/3/genre/movie/list``) with TMDB's envelopes, status codes and error bodies, over a
deterministic (seeded) catalog, so tests, the offline demo and the dev cluster never need
the real TMDB. Faults (429 with ``Retry-After``, 5xx, slow answers, malformed records,
a shifting popular list, broken JSON, dropped connections) can be scripted per page or drawn
at seeded random rates, set at start or at runtime over ``/__sandbox/*``.

Run it with ``python -m tmdb_sandbox --port 0``; see ``tmdb_sandbox.__main__`` for flags.
"""
