"""Home Assistant MQTT discovery: the box announces its own entities, so a family's Home Assistant
picks it up with no typing.

Discovery topics follow Home Assistant's ``<prefix>/<component>/<node_id>/<object_id>/config``
with ``node_id`` = the box id, so the broker ACL can allow a box exactly
``homeassistant/+/<box id>/#`` besides its own ``bedtime/v1/<box id>/#``, and a family's Home
Assistant account can be given read access to exactly that one box (docs/mosquitto/acl.conf).
All entities share one device (identifier ``bedtime_<box id>``) and one availability topic: the
retained ``status``, whose MQTT last will turns every entity ``unavailable`` when the box drops off.

What Home Assistant 2024.3 checks in a discovery payload (and :func:`discovery_payloads` respects,
tested in tests/test_homeassistant.py and against a real Home Assistant in tests/interop):
a ``sensor`` with ``device_class: enum`` has neither a unit nor a ``state_class`` (its ``options`` are
read by later releases; 2024.3 drops the key and takes any state);
a numeric sensor's template renders a number or ``None`` (unknown), never text; an ``event`` entity's
template renders a JSON object whose ``event_type`` is one of its ``event_types``.
"""
from __future__ import annotations

from appliance.protocol import schema
from appliance.protocol.safety import P_LOOP_THRESHOLD
from appliance.protocol.stages import STAGE_NAMES, Stage


#: Seconds the "alert active" binary sensor stays on after an alert.
ALERT_ACTIVE_S = 900

#: Stage names as the ``stage`` payload carries them: the scored ones, then UNSCORED.
STAGE_OPTIONS = (*STAGE_NAMES, Stage.UNSCORED.name)

#: The breather as the status reports it: its own states (appliance.breather.BreatherState), ``disabled``
#: (turned off by the clinic) and ``off`` (no night running). Listed here, not imported, because this
#: module sits below the breather; tests/test_homeassistant.py checks the two agree.
BREATHER_OPTIONS = ("off", "disabled", "idle", "cue", "light", "escalate", "refractory", "fault")

#: The "status" sensor's states; ``offline`` is shown as unavailable (availability follows it).
STATUS_OPTIONS = schema.STATUS_STATES

# Numeric sensors: Home Assistant refuses text in a numeric sensor but turns the string "None" into
# "unknown", which is what a missing or null field means.
_NONE = "'None'"


def discovery_topic(box_id: str, component: str, object_id: str, *,
                    prefix: str = schema.HA_DISCOVERY_PREFIX) -> str:
    """``homeassistant/<component>/<box_id>/<object_id>/config``."""
    return f"{prefix}/{component}/{schema.check_box_id(box_id)}/{object_id}/config"


def device_identifier(box_id: str) -> str:
    """The identifier Home Assistant's device registry keeps for one box (``bedtime_<box id>``)."""
    return f"bedtime_{schema.check_box_id(box_id)}"


def entity_object_id(box_id: str, object_id: str) -> str:
    """The entity id's object part, e.g. ``bedtime_box_7_sleep_stage`` (Home Assistant slugifies
    ``-`` and ``.`` to ``_``)."""
    return f"bedtime_{schema.check_box_id(box_id)}_{object_id}"


def discovery_payloads(box_id: str, *, firmware_version: str, model: str = "bedtime box",
                       prefix: str = schema.HA_DISCOVERY_PREFIX) -> dict[str, dict]:
    """Topic -> discovery config for every entity of one box.

    Parameters
    ----------
    box_id : str
        The box (its topics, its device).
    firmware_version : str
        Shown as the device's software version.
    model : str
        Shown as the device's model.
    prefix : str
        Home Assistant's discovery prefix (its default is ``homeassistant``).

    Returns
    -------
    dict
        ``{topic: config}``; publish each retained (QoS 1). Entities:

        - ``sleep_stage``: sensor, ``enum`` (W N1 N2 N3 REM UNSCORED), from ``stage``;
        - ``loop_probability``: sensor, % (0-100), measurement, from ``stage``'s ``p_loop``;
        - ``signal_quality``: sensor, % of good epochs among the last ten, measurement, from ``telemetry``;
        - ``breather``: sensor, ``enum`` (:data:`BREATHER_OPTIONS`), from ``status``'s ``breather_state``;
        - ``status``: sensor, ``enum`` (online recording idle fault offline), from ``status``;
        - ``alert``: event entity (``event_type`` = the alert's severity; ``title``, ``message``, ``kind``
          as attributes), from ``alert``: what an automation turns into a phone notification;
        - ``alert_active``: binary sensor, ``safety``, on for :data:`ALERT_ACTIVE_S` after an alert;
        - ``nightmare_loop``: binary sensor, on at p_loop >= :data:`appliance.protocol.safety.P_LOOP_THRESHOLD` (the
          default decision threshold, for display; the alert itself comes from the box);
        - ``signal_problem``: binary sensor, ``problem``, diagnostic;
        - ``outbox_depth``: sensor, diagnostic (messages waiting on the box).
    """
    status_t = schema.topic(box_id, "status")
    stage_t, alert_t, tel_t = (schema.topic(box_id, c) for c in ("stage", "alert", "telemetry"))
    device = {
        "identifiers": [device_identifier(box_id)],
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
    entities: list[tuple[str, str, dict]] = [
        ("sensor", "sleep_stage", {
            "name": "Sleep stage", "state_topic": stage_t, "icon": "mdi:sleep",
            "device_class": "enum", "options": list(STAGE_OPTIONS),
            "value_template": "{{ value_json.stage }}",
            "json_attributes_topic": stage_t,
            "json_attributes_template": "{{ {'epoch_index': value_json.epoch_index, "
                                        "'confidence': value_json.confidence} | tojson }}",
        }),
        ("sensor", "loop_probability", {
            "name": "Nightmare loop probability", "state_topic": stage_t, "unit_of_measurement": "%",
            "state_class": "measurement", "suggested_display_precision": 0, "icon": "mdi:repeat",
            "value_template": "{{ (value_json.p_loop * 100) | round(1) if value_json.p_loop is number "
                              f"else {_NONE} }}}}",
        }),
        ("sensor", "signal_quality", {
            "name": "Signal quality", "state_topic": tel_t, "unit_of_measurement": "%",
            "state_class": "measurement", "suggested_display_precision": 0, "icon": "mdi:sine-wave",
            "value_template": "{{ value_json.signal_quality_percent if value_json.signal_quality_percent "
                              f"is number else {_NONE} }}}}",
        }),
        ("sensor", "breather", {
            "name": "Breather", "state_topic": status_t, "icon": "mdi:weather-night",
            "device_class": "enum", "options": list(BREATHER_OPTIONS),
            "value_template": "{{ value_json.breather_state if value_json.breather_state is defined "
                              "and value_json.breather_state else 'off' }}",
        }),
        ("sensor", "status", {
            "name": "Status", "state_topic": status_t, "icon": "mdi:bed-clock",
            "device_class": "enum", "options": list(STATUS_OPTIONS),
            "value_template": "{{ value_json.state }}",
        }),
        ("event", "alert", {
            "name": "Alert", "state_topic": alert_t, "icon": "mdi:bell-alert",
            "event_types": list(schema.SEVERITIES),
            "value_template": "{{ {'event_type': value_json.severity, 'title': value_json.title, "
                              "'message': value_json.message, 'kind': value_json.kind | default(''), "
                              "'seq': value_json.seq | default(0)} | tojson }}",
        }),
        ("binary_sensor", "alert_active", {
            "name": "Alert active", "state_topic": alert_t, "device_class": "safety",
            "value_template": "ON", "payload_on": "ON", "payload_off": "OFF", "off_delay": ALERT_ACTIVE_S,
            "json_attributes_topic": alert_t,
            "json_attributes_template": "{{ {'title': value_json.title, 'message': value_json.message, "
                                        "'severity': value_json.severity} | tojson }}",
        }),
        ("binary_sensor", "nightmare_loop", {
            "name": "Nightmare loop", "state_topic": stage_t, "icon": "mdi:weather-lightning",
            "value_template": "{{ 'ON' if value_json.p_loop is number and value_json.p_loop >= %s "
                              "else 'OFF' }}" % P_LOOP_THRESHOLD,
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("binary_sensor", "signal_problem", {
            "name": "Signal problem", "state_topic": stage_t, "device_class": "problem",
            "entity_category": "diagnostic",
            "value_template": "{{ 'OFF' if value_json.signal_ok else 'ON' }}",
            "payload_on": "ON", "payload_off": "OFF",
        }),
        ("sensor", "outbox_depth", {
            "name": "Undelivered messages", "state_topic": status_t, "entity_category": "diagnostic",
            "state_class": "measurement", "icon": "mdi:tray-full",
            "value_template": "{{ value_json.outbox_depth if value_json.outbox_depth is number "
                              f"else {_NONE} }}}}",
        }),
    ]
    out = {}
    for component, object_id, cfg in entities:
        out[discovery_topic(box_id, component, object_id, prefix=prefix)] = {
            **cfg,
            "unique_id": entity_object_id(box_id, object_id),
            "object_id": entity_object_id(box_id, object_id),
            "device": device,
            "origin": {"name": "bedtime", "sw_version": firmware_version},
            **availability,
        }
    return out
