"""Running cycles: the local runner, `watch`, retention, the demo and its sample data."""
