"""Operator actions that change what trains or what serves: quarantine, release (promote,
rollback, control) and the live guard. Each is recorded in ML Metadata with its reason."""
