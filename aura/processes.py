"""Whether a process still runs: how the processes of a node tell a sibling's files from a dead one's."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists (also one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
