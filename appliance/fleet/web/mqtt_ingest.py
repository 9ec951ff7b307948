"""Connect the console to the fleet's MQTT ingest (:class:`appliance.fleet.ingest.FleetIngest`)."""
from __future__ import annotations

from typing import Any

from appliance.fleet.web.bridge import IngestBridge
from appliance.fleet.web.settings import ConsoleSettings

#: ingest channel -> bridge method
_CHANNELS = {"status": "on_status", "alert": "on_alert", "report": "on_report", "telemetry": "on_telemetry",
             "event": "on_event"}


def attach_bridge(ingest: Any, bridge: IngestBridge) -> None:
    """Route the ingest's callbacks to ``bridge``, chaining any callback already set (e.g. by a test)."""
    for channel, method in _CHANNELS.items():
        previous = ingest.callbacks.get(channel)
        target = getattr(bridge, method)

        def both(box_id: str, payload: dict, _t=target, _p=previous) -> None:
            _t(box_id, payload)
            if _p is not None:
                _p(box_id, payload)

        ingest.callbacks[channel] = both


def build_ingest(settings: ConsoleSettings, bridge: IngestBridge) -> Any:
    """A :class:`FleetIngest` in the console's shared-subscription group, feeding ``bridge``.

    Several console instances with the same ``share_group`` split the boxes' messages between them
    (MQTT v5 shared subscriptions); retained status reaches every instance.
    """
    from appliance.fleet.ingest import FleetIngest, TLSClientSettings

    tls = TLSClientSettings(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None
    ingest = FleetIngest(settings.mqtt_host, settings.mqtt_port, tls=tls, username=settings.mqtt_username,
                         password=settings.mqtt_password, group=settings.share_group)
    attach_bridge(ingest, bridge)
    return ingest
