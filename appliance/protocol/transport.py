"""How both ends use MQTT's transport: one socket option each side sets on every connection it makes.

The box (:class:`appliance.mqtt.BoxLink`) and the clinic (:class:`appliance.fleet.ingest.FleetIngest`) both call
:func:`set_tcp_nodelay` once connected; the alert latency the project measures (docs/scaling.md) assumes both do.
"""
from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


def set_tcp_nodelay(client: Any) -> None:
    """Turn Nagle's algorithm off on a connected client's socket (paho leaves it on).

    MQTT packets are small; with Nagle on, a packet sent while the previous one is unacknowledged waits
    for the peer's delayed ACK (up to 40 ms on Linux), which showed as tens of ms of alert latency.

    Parameters
    ----------
    client : paho.mqtt.client.Client
        A connected client (its ``socket()`` may be None before connecting; then nothing is done).
    """
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            log.debug("TCP_NODELAY not set: %s", e)
