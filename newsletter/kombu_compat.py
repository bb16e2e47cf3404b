"""Keep a Celery worker alive when its Redis broker restarts.

kombu's Redis transport (5.7) can use a channel after the transport behind it has let go of
its connection: closing a channel after a lost connection drops its pools and then restores
the unacknowledged messages, which needs a pool again; a task that finishes after the
reconnect acknowledges through the old channel. Either way building the pool raises
AttributeError ('NoneType' object has no attribute 'hostname' / 'client'). That is not a
connection error, so Celery calls it unrecoverable and the whole worker exits instead of
reconnecting. (Failures of this shape are reported upstream, e.g. kombu issues #582 and #970.)

`install()` makes both cases what they are, a lost connection:
- the restore is skipped when the channel has no connection left;
- any other use of such a channel raises redis's ConnectionError, which kombu and Celery
  handle (an acknowledgement is logged as not made, and the worker reconnects).

Nothing is lost: unacknowledged messages stay in Redis's unacked set, which a consumer
restores after the visibility timeout, and every task carries only delivery ids whose rows
the database reaper offers again after CLAIM_TIMEOUT_SECONDS. A late copy finds its rows
re-claimed or sent and sends nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def _has_connection(channel: Any) -> bool:
    transport = getattr(channel, "connection", None)
    return getattr(transport, "client", None) is not None


class _QoS(kombu_redis.QoS):
    """The Redis QoS, which leaves the restore to Redis when the channel's connection is gone."""

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and not _has_connection(self.channel):
            if self._delivered:
                log.warning(
                    "broker connection already closed: %d unacknowledged task(s) stay in "
                    "Redis and are redelivered after the visibility timeout",
                    len(self._delivered),
                )
            self._delivered.clear()
            return None
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]


class _Channel(kombu_redis.Channel):
    """The Redis channel, reporting use after its connection is gone as a lost connection."""

    QoS = _QoS

    def _connparams(self, asynchronous: bool = False) -> Any:
        if not _has_connection(self):
            raise redis.exceptions.ConnectionError(
                "the broker connection of this channel is closed"
            )
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


def install() -> None:
    """Use the tolerant channel for every Redis broker connection of this process."""
    kombu_redis.Transport.Channel = _Channel
