"""bedtime: a bedside sleep appliance.

The package follows the data, one module per job (see docs/architecture.md):
ADS1299 over SPI -> C frame decoder and ring buffer -> DSP and epoching -> stage model ->
loop model -> breather policy -> light and sound; beside it MQTT reporting, EDF+ recording
and the morning report.
"""

from appliance.protocol.version import __version__  # noqa: F401  (the package's conventional name for it)
