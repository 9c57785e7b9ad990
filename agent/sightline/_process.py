"""Which process is which: a pid and its start time, so that a reused pid is another one.

Kept free of third-party imports: the metrics socket's keeper process uses it too.
"""

from __future__ import annotations

import os


def process_key(pid: int) -> str | None:
    """``<pid>-<start time in clock ticks since boot>`` of a running process, or None if it
    is gone (or a zombie). Raises OSError when that cannot be told (out of descriptors,
    say): a process must never be taken for gone when it may not be.

    The start time since boot is exact. A start time on the wall clock (what psutil
    gives) is rebuilt from a boot time the kernel rounds to whole seconds, and two
    processes reading it can disagree by a second: a live process would then look gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None if os.path.isdir("/proc/self") else _portable_process_key(pid)
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return f"{pid}-{int(fields[19])}"


def running(key: str) -> bool:
    """Whether the process ``key`` names may still run: False only if it is known to be
    gone (its pid free, a zombie, or taken by another process since)."""
    pid, _, _ = key.partition("-")
    try:
        return pid.isdigit() and process_key(int(pid)) == key
    except OSError:
        return True


def _portable_process_key(pid: int) -> str | None:
    import psutil  # where there is no /proc (macOS): its start time is exact there

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{pid}-{round(process.create_time() * 1000)}"
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error as exc:
        raise OSError(f"cannot tell process {pid} apart: {exc}") from None
