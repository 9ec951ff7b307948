"""The clinic side: follow and manage a fleet of boxes over MQTT.

:mod:`appliance.fleet.ingest` (the MQTT ingest and fleet view) and :mod:`appliance.fleet.cli`
(``bedtime-fleet``). The web console builds on the same ingest. Importing this package imports
nothing heavy; the web parts load only when ``bedtime-fleet serve`` runs.
"""
