"""Whether a process is still running: how leftovers named by a process id (an artifact's
``.NAME.tmp-PID``, a shard task's temp directory) are told from the work of a live process."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True when ``pid`` runs on this machine (another user's process included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True
