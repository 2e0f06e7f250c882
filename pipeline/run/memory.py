"""Memory of a long-running runner (`ctpipe watch`): what each cycle leaves behind, given back.

A cycle builds Keras models (tf_keras keeps a global graph and layer-name counters until
`clear_session()`), runs a Beam pipeline per component (thread pools and their buffers), and
parses large protos. Python frees the objects, but glibc keeps freed heap pages in its per-thread
arenas, so RSS only grows. After each cycle: collect garbage, reset tf_keras' global state
(only if the cycle imported it), and hand free heap pages back to the OS (`malloc_trim`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from typing import Optional, Union

_LIBC: Optional[ctypes.CDLL] = None


def rss_mib(pid: Union[int, str] = "self") -> float:
    """A process's resident set size now (MiB), from /proc (Linux): this one by default. 0.0
    where there is none to read (another OS, a process gone, a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _malloc_trim() -> bool:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return False


def release_after_cycle() -> None:
    """Give back what a finished cycle no longer needs (call between cycles, never inside)."""
    label_check = sys.modules.get("ctpipe.components.label_check")
    if label_check is not None:
        label_check.forget_loaded_models()
    gc.collect()
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None:
        tf_keras.backend.clear_session()
    gc.collect()
    _malloc_trim()
