"""Process limits: raise the open-file limit to what the system allows.

A gateway that holds thousands of keep-alive connections (and a client that opens them)
needs a file descriptor for each; the usual soft limit (1024) is far below what the hard
limit lets an unprivileged process take. Every service (`platform/runtime.py`), `paystream
up` (so the servers it starts inherit it) and the bench client call `raise_open_files()`.
"""

from __future__ import annotations

import resource


def raise_open_files() -> int:
    """Set RLIMIT_NOFILE's soft limit to its hard limit; return the soft limit now in force.

    An unlimited hard limit is capped at what the kernel takes (``nr_open``), which setrlimit
    would otherwise refuse. A refusal leaves the limit as it was: raising it is a help, not
    a condition of running.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _kernel_ceiling()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def _kernel_ceiling() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as ceiling:
            return int(ceiling.read().strip())
    except (OSError, ValueError):
        return 1 << 20
