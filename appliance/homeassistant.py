"""Home Assistant MQTT discovery: the box announces its own sensors, so a parent's Home Assistant
picks it up with no typing.

Discovery topics follow Home Assistant's ``<prefix>/<component>/<node_id>/<object_id>/config``
with ``node_id`` = the box id, so the broker ACL can allow a box exactly
``homeassistant/+/<box id>/#`` besides its own ``bedtime/v1/<box id>/#`` (docs/mosquitto/acl).
All entities share one device and one availability topic (the retained status, whose last will
turns them unavailable when the box drops off).
"""
from __future__ import annotations

from appliance import mqtt_schema as schema

DISCOVERY_PREFIX = "homeassistant"

#: p_loop at or above this turns the "nightmare loop" binary sensor on. It only mirrors the box's
#: own decision threshold for display; the alert itself comes from the loop detector.
LOOP_DISPLAY_THRESHOLD = 0.5


def discovery_topic(box_id: str, component: str, object_id: str, *, prefix: str = DISCOVERY_PREFIX) -> str:
    """``homeassistant/<component>/<box_id>/<object_id>/config``."""
    return f"{prefix}/{component}/{schema.check_box_id(box_id)}/{object_id}/config"


def discovery_payloads(box_id: str, *, firmware_version: str, model: str = "bedtime box",
                       prefix: str = DISCOVERY_PREFIX) -> dict[str, dict]:
    """Topic -> discovery config for every entity of one box.

    Entities: sleep stage (sensor), loop probability (sensor, %), nightmare loop (binary sensor),
    alert (binary sensor, on for 15 min after an alert), signal quality (sensor, %), signal OK
    (binary sensor, problem class), outbox depth (diagnostic sensor).
    """
    status_t = schema.topic(box_id, "status")
    device = {
        "identifiers": [f"bedtime_{box_id}"],
        "name": f"bedtime {box_id}",
        "manufacturer": "bedtime (open source)",
        "model": model,
        "sw_version": firmware_version,
    }
    availability = {
        "availability_topic": status_t,
        "availability_template": "{{ 'online' if value_json.online else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    stage_t, alert_t, tel_t = (schema.topic(box_id, c) for c in ("stage", "alert", "telemetry"))
    entities: list[tuple[str, str, dict]] = [
        ("sensor", "sleep_stage", {
            "name": "Sleep stage", "state_topic": stage_t, "icon": "mdi:sleep",
            "value_template": "{{ value_json.stage }}",
            "json_attributes_topic": stage_t,
            "json_attributes_template": "{{ {'epoch_index': value_json.epoch_index, "
                                        "'confidence': value_json.confidence} | tojson }}",
        }),
        ("sensor", "loop_probability", {
            "name": "Nightmare loop probability", "state_topic": stage_t, "unit_of_measurement": "%",
            "state_class": "measurement", "icon": "mdi:repeat",
            "value_template": "{{ ((value_json.p_loop or 0) * 100) | round(0) }}",
        }),
        ("binary_sensor", "nightmare_loop", {
            "name": "Nightmare loop", "state_topic": stage_t, "icon": "mdi:weather-lightning",
            "value_template": "{{ 'ON' if (value_json.p_loop or 0) >= %s else 'OFF' }}" % LOOP_DISPLAY_THRESHOLD,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("binary_sensor", "alert", {
            "name": "Alert", "state_topic": alert_t, "device_class": "safety",
            "value_template": "ON", "payload_on": "ON", "payload_off": "OFF", "off_delay": 900,
            "json_attributes_topic": alert_t,
            "json_attributes_template": "{{ {'title': value_json.title, 'message': value_json.message, "
                                        "'severity': value_json.severity} | tojson }}",
        }),
        ("sensor", "signal_quality", {
            "name": "Signal quality", "state_topic": tel_t, "unit_of_measurement": "%",
            "state_class": "measurement", "icon": "mdi:sine-wave", "entity_category": "diagnostic",
            "value_template": "{{ value_json.signal_quality_percent | default(0) }}",
        }),
        ("binary_sensor", "signal_problem", {
            "name": "Signal problem", "state_topic": stage_t, "device_class": "problem",
            "entity_category": "diagnostic",
            "value_template": "{{ 'OFF' if value_json.signal_ok else 'ON' }}",
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("sensor", "outbox_depth", {
            "name": "Undelivered messages", "state_topic": status_t, "entity_category": "diagnostic",
            "icon": "mdi:tray-full", "value_template": "{{ value_json.outbox_depth | default(0) }}",
        }),
    ]
    out = {}
    for component, object_id, cfg in entities:
        out[discovery_topic(box_id, component, object_id, prefix=prefix)] = {
            **cfg,
            "unique_id": f"bedtime_{box_id}_{object_id}",
            "object_id": f"bedtime_{box_id}_{object_id}",
            "device": device,
            **availability,
        }
    return out
