"""Names of the prediction log and the feedback events (issues #11 and #12 share them).

The event sink (`pipelines.events`) accepts KServe's payload-logger CloudEvents and the page's
feedback, and writes them under ``DATA_DIR/events/``; the local ingress emits the same
CloudEvents; Prometheus queries the metric names below. Standard library only.
"""

from __future__ import annotations

# -- CloudEvents as KServe's payload logger sends them (kserve pkg/logger/worker.go, v0.20.0) ---
CE_REQUEST_TYPE = "org.kubeflow.serving.inference.request"
CE_RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
CE_SPECVERSION = "1.0"
# binary content mode: every attribute is an HTTP header ``ce-<name>``; the body is the payload
CE_HEADER_PREFIX = "ce-"
CE_REQUIRED = ("specversion", "id", "type", "source")
# extension attributes the logger sets (lowercase alphanumeric, as CloudEvents requires)
CE_EXTENSIONS = ("inferenceservicename", "namespace", "component", "endpoint")
CE_METADATA = "metadata"  # JSON of the request headers named in the logger's metadataHeaders
CE_RECORDED_TIME = "recordedtime"
# structured mode, and batches of it (CloudEvents JSON format 1.0.2, sections 3 and 4): KServe
# sends binary mode only; the sink also takes batches on `POST /`, which the local ingress sends
CE_STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"  # refused (415)
CE_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_CE_BATCH_EVENTS = 1000  # events per batch the sink accepts (and MAX_REQUEST_BYTES per body)

# -- request id, user key ------------------------------------------------------------------------
REQUEST_ID_HEADER = "X-Request-Id"  # the ingress's fresh uuid4 hex; == the CloudEvent's ce-id
USER_ID_HEADER = "X-User-Id"  # the page's user key (sticky assignment, feedback)

# -- routes ----------------------------------------------------------------------------------
FEEDBACK_PATH = "/events/feedback"
MAX_FEEDBACK_EVENTS = 100  # events per feedback request

# -- event kinds: one folder each under DATA_DIR/events/ ---------------------------------------
REQUEST = "request"
RESPONSE = "response"
IMPRESSION = "impression"
CLICK = "click"
PREDICTION_KINDS = (REQUEST, RESPONSE)
FEEDBACK_KINDS = (IMPRESSION, CLICK)
KINDS = (*PREDICTION_KINDS, *FEEDBACK_KINDS)
CE_TYPE_KIND = {CE_REQUEST_TYPE: REQUEST, CE_RESPONSE_TYPE: RESPONSE}

# Layout: DATA_DIR/events/<kind>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet. A part file is
# written to a dot-named temporary in the same folder and renamed when complete, so a reader that
# lists ``part-*.parquet`` never sees a partial file.
EVENTS_DIR = "events"
PART_GLOB = "*/date=*/hour=*/part-*.parquet"

# -- Prometheus metrics of the sink (#12's PromQL uses these names) -------------------------------
METRIC_RECEIVED = "movie_mlops_events_received_total"  # {type}
METRIC_WRITTEN = "movie_mlops_events_written_total"  # {type}
METRIC_DROPPED = "movie_mlops_events_dropped_total"  # {type, reason}
METRIC_FEEDBACK = "movie_mlops_feedback_total"  # {event, model_version}, counted on accept
METRIC_BUFFERED = "movie_mlops_events_buffered"  # gauge: accepted, not yet on disk
# requests refused before their events were read {route: cloudevent|feedback, reason}
METRIC_REJECTED = "movie_mlops_events_rejected_total"

# -- the local ingress's emitter (loopback-only /__local/metrics) --------------------------------
METRIC_INGRESS_EMITTED = "movie_mlops_ingress_events_sent_total"  # delivered to the sink
METRIC_INGRESS_BATCHES = "movie_mlops_ingress_event_batches_total"  # POSTs that delivered them
METRIC_INGRESS_DROPPED = "movie_mlops_ingress_events_dropped_total"  # {reason}
METRIC_INGRESS_QUEUED = "movie_mlops_ingress_events_queued"  # gauge
