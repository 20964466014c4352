"""The KServe custom predictor of movie-mlops (V1 and V2 protocols).

``python -m model_server --model_name movie-recommender --model_dir DIR`` loads a
recommender artefact (`recommenders.load`, checksums verified) and serves it with
`kserve.ModelServer`, on 127.0.0.1 unless ``--host`` says otherwise:

- V1 REST: ``POST /v1/models/<name>:predict`` ``{"instances": [{"user_id": 42, "k": 10}]}``
  (`model_server.request`);
- V2 (Open Inference Protocol), REST ``POST /v2/models/<name>/infer`` and, with
  ``--enable_grpc true``, gRPC ``ModelInfer``; ``GET /v2/models/<name>`` (gRPC
  ``ModelMetadata``) lists the tensors (`model_server.tensors`)::

      inputs   user_id      INT64 [n]     required; -1: no user, rank the row's history
               history      INT64 [n, h]  optional; -1 pads rows of different lengths
               k            INT64 [1]     optional, 1..100 (default 10)
               exclude_seen BOOL  [1]     optional (default true; false: 400 for known users)
      outputs  content_ids  INT64 [n, k]  best first; -1 pads a row with fewer candidates
               scores       FP32  [n, k]  0 where content_ids is -1
               fallback     BOOL  [n]     popularity ranking used
               reason       BYTES [n]     why, or what was ignored ("" if nothing)

- health and metadata of both protocols, and ``/metrics``; nothing else (no model-repository
  load/unload): live and ready only while the model is loaded.

A known user's seen items are never returned (``exclude_seen`` false is refused for them), and
what one client may cost is bounded: bodies over ``--max_request_bytes`` (1 MiB) get 413
unread, a request not sent within ``--request_read_timeout`` 408, past ``--limit_concurrency``
503 (docs/security.md).

Modules:

- `model_server.settings`: flags (KServe's own parser, extended) -> one frozen `Settings`;
- `model_server.source`: where the artefact comes from (a directory or ``models:/name/version``);
- `model_server.request`: the V1 request schema (pydantic, strict) and its error messages;
- `model_server.tensors`: the V2 tensor layout, its validation and the response tensors;
- `model_server.model`: `RecommenderModel`, the `kserve.Model` (load once, predict many);
- `model_server.server`: the HTTP wiring (bind address, content types, served routes, health,
  error mapping, logging);
- `model_server.grpc_server`: the gRPC wiring (bind address, no repository RPCs, status codes);
- `model_server.limits`: what one client may cost (body size, read deadline, header size);
- `model_server.errors`: the domain errors, each with its HTTP status and metric reason.

Importing this package does nothing; ``kserve`` (which parses ``sys.argv`` when imported) is only
imported by the modules that need it.
"""
