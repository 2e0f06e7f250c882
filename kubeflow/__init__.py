"""Kubeflow Pipelines (v2): compile the same create_pipeline, upload it, schedule retraining."""
