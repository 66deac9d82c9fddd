"""The Redis broker transport: kombu's, with one crash on a broker restart turned into a warning, and
one Redis client per channel where kombu built one per publish (`Channel._create_client`).

When Redis goes away while a worker holds an unacknowledged message, Celery's consumer closes the lost
connection (`on_connection_error_after_connected`), and the channel's close restores its unacked
messages through a new client built from the transport's connection parameters. kombu 5.7 has often
cleared those by then (`transport.client` is None), so `_connparams` raises AttributeError. That is
not a connection error, so `ignore_errors` lets it through, and the worker's main process dies with
"Unrecoverable error" instead of reconnecting (seen in the chaos batch's Redis restart).

Here that restore is skipped with a warning when the connection is already gone. The messages stay in
Redis's unacked set, and kombu restores them to the queue once `visibility_timeout` passes, as it does
for a worker that died. The reconciler re-dispatches their phases sooner (`redispatch_after_seconds`).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger(__name__)
PATH = f"{__name__}:Transport"
"""What `broker_transport` names for a Redis broker (workers/celery_app.py)."""


class QoS(redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        if client is None and getattr(self.channel.connection, "client", None) is None:
            log.warning(
                "broker connection gone while closing: %d unacknowledged message(s) left to the "
                "visibility timeout",
                len(self._delivered),
            )
            return
        super().restore_unacked(client)  # type: ignore[no-untyped-call]


class Channel(redis.Channel):
    QoS = QoS
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One synchronous client per channel and pool. kombu builds a new `redis.Redis` for every
        publish (`conn_or_acquire`), and its constructor is most of a publish's CPU (the task's, and
        its task-sent event's when Flower asks for those). A client is a thin handle on the channel's
        pool (each command checks a connection out of it), so sharing one is safe."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return self._sync_client


class Transport(redis.Transport):
    Channel = Channel
