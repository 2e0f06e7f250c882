"""Every error the pipeline reports. A `CtpipeError` is one line of text for a person plus the
process exit code the CLI returns for it (`ExitCode`, components/basics.py: the one table);
anything else that escapes is an internal error (exit 1). The server's own errors and TF
Serving's status tables live in serving/errors.py."""
from __future__ import annotations

from ctpipe.components.basics import ExitCode


class CtpipeError(Exception):
    """Root of ctpipe's own errors: one line of text, and an exit code."""

    exit_code = ExitCode.INTERNAL


class BadInput(CtpipeError):
    """Input the pipeline cannot even read, or a usage mistake (exit 2)."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(BadInput, ValueError):
    """The configuration is unusable (unknown key, wrong type, bad value)."""


class KubeflowError(BadInput):
    """A Kubeflow Pipelines operation could not be done (server unreachable, bad cron, ...)."""


class HomeBusy(CtpipeError):
    """Another `ctpipe run` or `ctpipe watch` holds this home (exit 7)."""

    exit_code = ExitCode.HOME_BUSY
