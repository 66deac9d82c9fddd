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
import redis
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


def test_a_channel_publishes_through_one_client_and_a_new_one_after_its_pool_is_dropped(
    redis_url: str,
) -> None:
    """kombu built a `redis.Redis` per publish; counted here on the class, across 20 publishes, which
    must all arrive. A dropped pool (a lost connection) gets a client on the new pool."""
    name = f"one-client-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name), routing_key=name)
    built: list[object] = []
    real_init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: object, **kwargs: object) -> None:
        built.append(self)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    with Connection(redis_url, transport=redis_transport.PATH) as conn:
        producer = conn.Producer()
        producer.publish({"n": 0}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(redis.Redis, "__init__", counting_init)
            for n in range(1, 21):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key)
            assert len(built) == 0  # the client of the first publish served all twenty
            producer.channel._disconnect_pools()
            producer.publish({"n": 21}, exchange=queue.exchange, routing_key=queue.routing_key)
            assert len(built) == 1 and built[0].connection_pool is producer.channel.pool  # type: ignore[attr-defined]
        received = []
        while (message := queue.bind(conn.channel()).get(no_ack=True)) is not None:
            received.append(message.payload["n"])
    assert sorted(received) == list(range(22))
