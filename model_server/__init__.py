"""The KServe custom predictor of movie-mlops (V1 protocol).

``python -m model_server --model_name movie-recommender --model_dir DIR`` loads a
recommender artefact (`recommenders.load`, checksums verified) and serves it with
`kserve.ModelServer`:

- `model_server.settings`: flags (KServe's own parser, extended) -> one frozen `Settings`;
- `model_server.source`: where the artefact comes from (a directory or ``models:/name/version``);
- `model_server.request`: the request schema (pydantic, strict) and its error messages;
- `model_server.model`: `RecommenderModel`, the `kserve.Model` (load once, predict many);
- `model_server.server`: the HTTP wiring (bind address, content types, error mapping, logging);
- `model_server.errors`: the domain errors, each with its HTTP status and metric reason.

Importing this package does nothing; ``kserve`` (which parses ``sys.argv`` when imported) is only
imported by the modules that need it.
"""
