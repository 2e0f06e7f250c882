"""ctpipe.pipeline: config, create_pipeline, the local runner and its bookkeeping, the CLI.

One create_pipeline for the local Beam runner and Kubeflow."""
