"""The Prometheus names a model server exports, shared by the exporter (serving/metrics.py) and
its readers (`ctpipe guard`, which scrapes ours or any server with TF Serving's request
metrics and a `version` label).

TF Serving's names and path: model_servers/http_server.cc serves the metrics in Prometheus text
at PrometheusExporter::kPrometheusPath (util/prometheus_exporter.cc) unless its monitoring
config names another path; servables/tensorflow/util.cc defines the request counter and latency
histogram `/tensorflow/serving/request_count` and `/tensorflow/serving/request_latency`, which
the exporter prints with ":" for "/". The `ctpipe_*` families are ours (TF Serving has no
shadow scoring and no per-label figures).
"""
from __future__ import annotations

METRICS_PATH = "/monitoring/prometheus/metrics"

# Per request: labels model_name, version, version_label, API, entrypoint (+ status on counts).
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"

# Shadow scoring (`ctpipe serve --shadow`): labels model_name, stable_version, canary_version.
SHADOW_PREFIX = "ctpipe_shadow"
SHADOW_REQUESTS = f"{SHADOW_PREFIX}_requests_total"          # + status
SHADOW_ROWS = f"{SHADOW_PREFIX}_rows_total"                  # rows both versions scored
SHADOW_DISAGREEMENTS = f"{SHADOW_PREFIX}_disagreements_total"  # rows whose decision differs
SHADOW_ABS_DIFF_SUM = f"{SHADOW_PREFIX}_abs_diff_sum"
SHADOW_DROPPED = f"{SHADOW_PREFIX}_dropped_total"            # label model_name only
SHADOW_LATENCY = f"{SHADOW_PREFIX}_latency_seconds"

# Where each label points (labels model_name, version_label), and the request log's figures.
LABEL_VERSION = "ctpipe_serving_label_version"
REQUEST_LOG_PREFIX = "ctpipe_request_log"
