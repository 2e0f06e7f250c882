"""Read-only views of a home: reports (pages, data, SVG), Prometheus metrics, serving skew,
schema review and the text formatting every view shares. Nothing here changes a home."""
