"""The protocol layer the box and the clinic share: what both sides must agree on, defined once.

- :mod:`appliance.protocol.ids`: the one rule for box ids (they are MQTT topic levels and broker usernames).
- :mod:`appliance.protocol.stages`: stage codes and names, and the step geometry every hypnogram drawing uses.
- :mod:`appliance.protocol.schema`: MQTT topics (``bedtime/v1/...``, Home Assistant's discovery prefix) and every
  payload's builder and validator.
- :mod:`appliance.protocol.commands`: the clinic's commands, their argument specs and :class:`CommandError`.
- :mod:`appliance.protocol.updates`: the ``update`` command's wire format and size limits.
- :mod:`appliance.protocol.signing`: Ed25519 manifests for models and configs (the clinic signs, the box verifies).
- :mod:`appliance.protocol.safety`: the breather's safety envelope (a pushed ``[breather]`` is checked against it).
- :mod:`appliance.protocol.boxconfig`: the schema of a box configuration, pushable part included.
- :mod:`appliance.protocol.transport`: the socket option both ends set on their MQTT connections.
- :mod:`appliance.protocol.cliparse`, :mod:`appliance.protocol.version`: what both command lines share (one-line
  usage errors; the release's version string).

The box (``appliance/*`` outside ``appliance/fleet``) and the clinic (``appliance/fleet``) both import from here;
this package imports neither, and the clinic imports nothing else of the project (``tests/test_module_graph.py``
enforces both).
"""
