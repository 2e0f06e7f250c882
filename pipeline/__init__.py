"""ctpipe: a TFX continuous-training pipeline (local Beam runner and Kubeflow from one create_pipeline)."""
