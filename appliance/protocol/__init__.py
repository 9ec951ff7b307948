"""The protocol layer the box and the clinic share: what both sides must agree on, defined once.

- :mod:`appliance.protocol.ids`: the one rule for box ids (they are MQTT topic levels and broker usernames).
- :mod:`appliance.protocol.signing`: Ed25519 manifests for models and configs (the clinic signs, the box verifies).

The box (``appliance/*`` outside ``appliance/fleet``) and the clinic (``appliance/fleet``) both import from here;
this package imports neither (``tests/test_module_graph.py`` enforces it). The MQTT topic and payload schema is
still :mod:`appliance.mqtt_schema`: it builds payloads from the box's ``Epoch`` and ``Stage`` types, so moving it
here would make the protocol depend on the box.
"""
