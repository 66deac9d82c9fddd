"""The Redis transport survives a broker restart's close path, on real Redis.

The chaos batch's Redis restart killed a worker's main process: closing the lost connection restored
its unacked message through a client built from connection parameters kombu had already cleared
(AttributeError, "Unrecoverable error"). The state is rebuilt here by hand, as kombu leaves it: the
channel's pools dropped (`_disconnect_pools`) and the transport's `client` gone.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kombu import Connection, Exchange, Queue

from shared.settings import Settings
from workers import redis_transport
from workers.celery_app import create_app

VISIBILITY = 1


def lost_close(redis_url: str, transport: str, queue: Queue) -> None:
    """Publish one message, take it unacknowledged, then close its channel as after a lost broker."""
    with Connection(redis_url, transport=transport) as conn:
        conn.Producer().publish(
            {"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
        )
        channel = conn.channel()
        message = queue.bind(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        channel._disconnect_pools()
        conn.transport.client = None
        channel.close()


def test_kombus_own_transport_crashes_on_this_close(redis_url: str) -> None:
    """The bug the transport works around, reproduced (if kombu fixes it, this fails: drop the guard)."""
    name = f"guard-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with pytest.raises(AttributeError, match="hostname"):
        lost_close(redis_url, "redis", queue)


def test_a_close_after_the_broker_went_away_leaves_the_message_to_the_visibility_timeout(
    redis_url: str,
) -> None:
    name = f"guard-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name)
    lost_close(redis_url, redis_transport.PATH, queue)

    time.sleep(VISIBILITY + 0.2)
    options = {"visibility_timeout": VISIBILITY}
    with Connection(redis_url, transport=redis_transport.PATH, transport_options=options) as conn:
        channel = conn.channel()
        channel.qos.restore_visible()  # what a consumer does on start and every so often
        again = queue.bind(channel).get(no_ack=True)
    assert again is not None and again.payload == {"n": 1}


def test_the_fleet_uses_this_transport_for_redis_and_the_memory_one_embedded(
    fleet_settings: Settings, embedded_settings: Settings
) -> None:
    with create_app(fleet_settings).connection_for_write() as conn:
        assert isinstance(conn.transport, redis_transport.Transport)
    with create_app(embedded_settings).connection_for_write() as conn:
        assert type(conn.transport).__module__ == "workers.memory_transport"
