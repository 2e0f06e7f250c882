"""What one pipeline home holds: every path under it (`Home`), the ML Metadata store, the
locks, the acceptance ledger, the cycle records and decisions, lineage, and the release state.

Nothing here runs a cycle or talks to a person: `run/`, `ops/` and `observe/` build on it."""
from ctpipe.pipeline.home.home import Home  # noqa: E402,F401 - the one way in
