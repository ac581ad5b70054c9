"""The file-descriptor half of :mod:`celerynb.workers.capture`: a process running one task at a
time points fds 1 and 2 at a private memory file while the task runs.

So ``os.write(1, ...)`` and a C library's ``printf`` are caught too, in order with Python's
prints (which reach the same fds). Records of ``logging`` handlers that write elsewhere (the
worker's ``--logfile``) are placed at the file offset where they happened. What came through
the fds is forwarded to the original fds at each flush, so the worker's own output keeps it.
Per task: four ``dup2`` and one ``fstat`` when nothing was written.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import threading


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


class FdFile:
    """The memory file that fds 1 and 2 point at during a task, and what was read from it."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("celerynb-task-output", os.MFD_CLOEXEC)
        else:  # macOS: an unlinked temporary file
            self._file = tempfile.TemporaryFile()
            self.fd = os.dup(self._file.fileno())
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
        self.saved: tuple[int, int] | None = None
        self.sent = 0  # bytes of the file already taken
        self.notes: list[tuple[int, str]] = []  # (file offset, line) of records not written to the fds
        self.lock = threading.Lock()

    def begin(self) -> None:
        _flush_std()  # what was printed before the task is not the task's
        if self.saved is None:
            self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def end(self) -> None:
        _flush_std()
        if self.saved is not None:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)

    def note(self, line: str) -> None:
        """A record that went to no fd: kept at the point of the output where it was logged."""
        _flush_std()
        with self.lock:
            self.notes.append((os.fstat(self.fd).st_size, line))

    def take(self) -> bytes:
        """What is new since the last call (the records in place); forwards fd bytes to the original fds."""
        with self.lock:
            size = os.fstat(self.fd).st_size
            if size <= self.sent and not self.notes:
                return b""
            raw = os.pread(self.fd, size - self.sent, self.sent) if size > self.sent else b""
            base, self.sent = self.sent, max(size, self.sent)
            notes, self.notes = self.notes, []
        if raw and self.saved is not None:
            try:
                os.write(self.saved[0], raw)
            except OSError:
                pass
        if not notes:
            return raw
        parts, position = [], 0
        for offset, line in notes:
            cut = max(position, min(len(raw), offset - base))
            parts += [raw[position:cut], line.encode("utf-8", "replace")]
            position = cut
        parts.append(raw[position:])
        return b"".join(parts)

    def reset(self) -> None:
        """Empty the file for the next task (only if this one wrote to it)."""
        with self.lock:
            if self.sent:
                os.ftruncate(self.fd, 0)
                os.lseek(self.fd, 0, os.SEEK_SET)
                self.sent = 0
            self.notes = []
