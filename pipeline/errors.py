"""Errors a person can act on. Each carries the process exit code the CLI returns for it
(README "Exit codes"); anything else is an internal error (exit 1)."""
from __future__ import annotations


class CtpipeError(Exception):
    """Root of ctpipe's own errors: one line of text, and an exit code."""

    exit_code = 1


class BadInput(CtpipeError):
    """Input the pipeline cannot even read, or a usage mistake (exit 2)."""

    exit_code = 2


class HomeBusy(CtpipeError):
    """Another `ctpipe run` or `ctpipe watch` holds this home (exit 7)."""

    exit_code = 7
