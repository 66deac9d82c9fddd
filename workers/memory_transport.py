"""The embedded broker: kombu's in-process memory transport, with consumer waits short enough to stop.

Celery's blocking consumer loop (the `threads` pool's synloop, which the embedded fleet runs) waits in
`drain_events(timeout=2.0)` and reads its stop flag only between waits, so stopping an embedded fleet
took up to 2 s (1.7 s per test that starts one, ~2 minutes of the suite). Each wait is capped at
`WAIT_SECONDS` here; a turn of the loop without a message costs a few attribute reads. A wait with no
timeout (block until a message) is left as it is. The queues stay kombu's process-wide memory state.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import memory

WAIT_SECONDS = 0.05
PATH = f"{__name__}:Transport"
"""What `broker_transport` names in embedded mode (workers/celery_app.py)."""


class Transport(memory.Transport):
    # kombu types its two drain_events apart (base: **kwargs; virtual: timeout); this keeps virtual's.
    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        wait = timeout if timeout is None else min(timeout, WAIT_SECONDS)
        return super().drain_events(connection, timeout=wait)  # type: ignore[no-untyped-call]
