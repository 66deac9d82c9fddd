"""A pipe reader that keeps the head and the tail of a command's output and counts what it drops.

The worker's memory stays flat however much a command prints: at most `max_bytes` (plus one read) is
ever held. Every chunk is also scanned for the limit markers of `limits.py`, including dropped ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

_READ = 65536


class CappedOutput:
    def __init__(
        self,
        max_bytes: int,
        markers: Iterable[bytes] = (),
        stop_after: int = 0,
        alarm: threading.Event | None = None,
    ) -> None:
        self.max_bytes = max(0, max_bytes)
        self.head_limit = self.max_bytes // 4
        self.tail_limit = self.max_bytes - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.markers_wanted = tuple(markers)
        self.markers: set[bytes] = set()
        self.stop_after = stop_after
        self.overflowed = threading.Event()
        """Set once more than `stop_after` bytes arrived (0 = never): a runaway, not a log."""
        self.alarm = alarm or threading.Event()
        """Set on an overflow or a newly seen marker, to wake whoever waits on the command."""
        self._carry = b""

    @property
    def dropped(self) -> int:
        return max(0, self.total - len(self.head) - len(self.tail))

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._scan(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_limit:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]
        if self.stop_after and self.total > self.stop_after and not self.overflowed.is_set():
            self.overflowed.set()
            self.alarm.set()

    def _scan(self, chunk: bytes) -> None:
        if not self.markers_wanted:
            return
        # Keep a little of the previous chunk so a marker split across two reads is still found.
        window = self._carry + chunk
        for marker in self.markers_wanted:
            if marker not in self.markers and marker in window:
                self.markers.add(marker)
                self.alarm.set()
        self._carry = window[-64:]

    def text(self) -> str:
        """The kept output: all of it, or head + `… [N bytes cut] …` + tail."""
        if not self.dropped:
            return (bytes(self.head) + bytes(self.tail)).decode(errors="replace")
        head = bytes(self.head).decode(errors="replace")
        tail = bytes(self.tail).decode(errors="replace")
        if not self.max_bytes:
            return f"… [{self.dropped} bytes cut] …"
        return f"{head}\n… [{self.dropped} bytes cut] …\n{tail}"

    def drain(self, fd: int) -> None:
        """Read `fd` to its end (run on a thread of its own)."""
        while chunk := os.read(fd, _READ):
            self.feed(chunk)
