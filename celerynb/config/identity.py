"""Which process a PID is: its start time, so that a PID reused by a stranger is never mistaken for ours.

A PID alone names a process only while it lives: after a crash or a reboot, the PIDs written in
the discovery file may belong to unrelated processes. An identity (boot id + start time in
clock ticks on Linux, ``ps``'s start time elsewhere) is recorded with every PID, and nothing is
signalled or trusted unless the process still has it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _linux_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from ``/proc/PID/stat``; None when gone."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    except (OSError, IndexError, ValueError):
        return None
    return fields[0], fields[19]


def _ps_start(pid: int) -> str | None:
    try:
        done = subprocess.run(["ps", "-o", "lstart=", "-p", str(int(pid))], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def process_identity(pid: int | None) -> str | None:
    """A string that only this process will ever have (None when it does not run, or is a zombie)."""
    if not pid or int(pid) <= 0:
        return None
    if sys.platform.startswith("linux"):
        stat = _linux_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        return f"{_boot_id()}:{stat[1]}"
    return _ps_start(pid)


def start_ticks(pid: int | None = None) -> str:
    """The start time part of an identity, short enough for a directory name ("0" when unknown)."""
    identity = process_identity(pid or os.getpid()) or ""
    tail = identity.rsplit(":", 1)[-1]
    return tail if tail.isdigit() else "0"


def is_same_process(pid: int | None, identity: str | None) -> bool:
    """True only if ``pid`` runs and is the very process ``identity`` was recorded from."""
    return bool(identity) and process_identity(pid) == identity


def signal_if_same(pid: int, identity: str | None, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is the process ``identity`` names; True if sent.

    On Linux the check and the signal go through one pidfd, so that the PID cannot be reused
    in between.
    """
    if not identity:
        return False
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(int(pid))
        except ProcessLookupError:
            return False
        except OSError:  # kernels older than 5.3
            pidfd = None
    try:
        if not is_same_process(pid, identity):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(int(pid), sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
