"""Serving: a TF-Serving-compatible local server, gRPC/REST clients, Kubernetes deployment."""
