"""The prediction log and feedback sink (``python -m pipelines.events serve``).

- `pipelines.events.schema`: the CloudEvents KServe's payload logger sends, the feedback body,
  what is extracted from V1/V2 payloads and the Parquet schema of each event kind;
- `pipelines.events.store`: the part files under ``DATA_DIR/events/`` (atomic, partitioned);
- `pipelines.events.sink`: the aiohttp app (bounded buffers, flushing, metrics, flood limits).

Importing this package does nothing.
"""
