"""The curated data contract (schema.pbtxt), shipped as package data of `ctpipe.schema` and
read with importlib.resources, so an installed wheel (the Kubeflow image) carries it too."""
