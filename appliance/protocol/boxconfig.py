"""The schema of a box configuration: every key, its type, default, range and documentation, and the validator.

It is the protocol layer's because both sides apply it to the same documents: the box to its own TOML file
(:func:`appliance.config.load_config`) and to every configuration the clinic pushes, the clinic to a configuration
before it signs and sends it (:mod:`appliance.fleet.configcheck`, the console's editor, ``push-config``). One
schema, so a key means the same thing on both sides. It reads no file: what only the box itself can check (the
files and folders a configuration names) is :mod:`appliance.config`'s.

Every error names the key by its dotted path (``breather.max_brightness``) and says what was expected; a
configuration is either accepted whole or refused whole. Values are never clamped silently: the breather's
safety envelope (:mod:`appliance.protocol.safety`) refuses a value outside its hard limits, and so does this module
for the limits it owns. Which keys a push may set at all is :data:`LOCAL_ONLY_KEYS`.

Why hand-written and not a schema library: the checks are small, the error text must name the TOML key a
parent or clinician typed, and the box should not carry another runtime dependency for this.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.protocol.commands import clip
from appliance.protocol.ids import BOX_ID_RULE, is_box_id
from appliance.protocol.safety import BreatherConfig, SafetyEnvelopeError

EXAMPLE_BOX_ID = "box-0001"
"""The documented example's (and the default) box id. ``bedtime run`` on a box refuses it: two boxes with one id
share one set of MQTT topics. install-pi.sh writes ``box-<first 12 hex digits of /etc/machine-id>`` instead."""


MAX_ERROR_CHARS = 400
"""Longest error message about a configuration (it may go back over MQTT and into logs)."""


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or outside its allowed range.

    Attributes
    ----------
    key : str
        Dotted path of the offending key, e.g. ``"mqtt.port"`` (empty for the whole document).
    """

    def __init__(self, key: str, message: str, *, source: str | Path | None = None) -> None:
        # Bounded: the message echoes values, and a value may come from a hostile peer (a 10 MB string).
        key, message = clip(key, 120), clip(message, MAX_ERROR_CHARS)
        self.key = key
        self.message = message
        self.source = source
        text = f"{key}: {message}" if key else message
        super().__init__(f"{source}: {text}" if source else text)


def _opt(default: Any = dataclasses.MISSING, *, doc: str, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its own documentation and range, so the validator needs no second table."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BoxSection:
    """Who the box is and where it keeps its state."""

    id: str = _opt(EXAMPLE_BOX_ID, doc="Box id; the MQTT topics are bedtime/v1/<id>/...")
    state_dir: str = _opt("/var/lib/bedtime", doc="Writable state directory (systemd StateDirectory)")
    name: str = _opt("Bedroom", doc="Human name shown on the parent's phone")
    groups: list = _opt(doc="Rollout groups of this box (e.g. canary, clinic-north): a signed update is applied "
                            "only when it names this box or one of its groups", factory=list)


@dataclass(frozen=True)
class AcquisitionSection:
    """The ADS1299 front end and its SPI/GPIO wiring."""

    sample_rate_sps: int = _opt(250, doc="Chip data rate", choices=(250, 500, 1000, 2000, 4000, 8000, 16000))
    channels: int = _opt(8, doc="Channels to read (ADS1299-4/6/8)", choices=(4, 6, 8))
    gain: int = _opt(24, doc="PGA gain for every channel", choices=(1, 2, 4, 6, 8, 12, 24))
    staging_channel: int = _opt(0, doc="Index (0-based) of the channel the stager reads", min=0, max=7)
    spi_bus: int = _opt(0, doc="spidev bus", min=0, max=6)
    spi_device: int = _opt(0, doc="spidev chip select", min=0, max=3)
    spi_max_speed_hz: int = _opt(2_000_000, doc="SPI clock; ADS1299 allows up to 20 MHz, we stay at <= 4 MHz",
                                 min=100_000, max=4_000_000)
    drdy_pin: int = _opt(25, doc="BCM pin wired to DRDY (active low)", min=0, max=27)
    ring_capacity_frames: int = _opt(16384, doc="C ring buffer capacity in frames (bounded; overflow is counted)",
                                     min=1024, max=1 << 22)
    channel_labels: list = _opt(doc="EDF+ labels per channel (empty: the default montage, EEG Fpz-Cz, EEG Pz-Cz...)",
                                factory=list)


@dataclass(frozen=True)
class StagingSection:
    """The stage model. (How confident it must be before the breather acts is ``breather.min_stage_confidence``.)"""

    model_path: str = _opt("", doc="Override the packaged stage model (.tflite); empty = packaged")


@dataclass(frozen=True)
class LoopsSection:
    """The loop model. (The P(loop) that counts as a loop is ``breather.p_loop_threshold``: one threshold.)"""

    model_path: str = _opt("", doc="Override the packaged loop model (.tflite); empty = packaged")


@dataclass(frozen=True)
class OutputsSection:
    """Bedside light, speaker and the 'I'm OK' button (BCM pin numbers): the one place their defaults live.

    Light and speaker each get a hardware PWM channel of their own: GPIO12 is PWM0 and GPIO13 is PWM1
    (``dtoverlay=pwm-2chan,pin=12,func=4,pin2=13,func2=4``). GPIO18, the other PWM0 pin, is left free because it
    is also the PCM/I2S clock an audio DAC would need; none of the three is an SPI0 pin or the DRDY line.
    """

    light_pin: int = _opt(12, doc="PWM pin of the warm light (GPIO12 = hardware PWM0)", min=0, max=27)
    sound_pin: int = _opt(13, doc="PWM pin of the speaker (GPIO13 = hardware PWM1)", min=0, max=27)
    button_pin: int = _opt(16, doc="Pin of the 'I'm OK / stop' button (to ground, pull-up)", min=0, max=27)


@dataclass(frozen=True)
class HardwareSection:
    """Real chip and pins, or the simulator: chosen here so the systemd unit never has to be edited."""

    simulate: bool = _opt(False, doc="Run on the chip simulator and mock pins instead of the hardware (test rigs, "
                                     "emulated boxes); shown as simulated=true in the status and every report")
    sim_speed: float = _opt(1.0, doc="Simulation only: replay speed (signal seconds per wall second)",
                            min=0.1, max=1000.0)
    sim_seed: int = _opt(0, doc="Simulation only: synthetic subject seed", min=0, max=2**31 - 1)


@dataclass(frozen=True)
class MqttSection:
    """The broker the box reports to."""

    enabled: bool = _opt(True, doc="Report over MQTT at all")
    host: str = _opt("localhost", doc="Broker host name")
    port: int = _opt(1883, doc="Broker port", min=1, max=65535)
    username: str = _opt("", doc="User name (empty: anonymous)")
    password_file: str = _opt("", doc="File holding the password (kept out of this file)")
    tls_ca: str = _opt("", doc="CA certificate file; set to use TLS")
    tls_cert: str = _opt("", doc="Client certificate file (optional)")
    tls_key: str = _opt("", doc="Client key file (optional)")
    keepalive_s: int = _opt(30, doc="MQTT keepalive", min=5, max=3600)
    outbox_max_mb: float = _opt(50.0, doc="Disk cap of the persistent outbox", min=1.0, max=4096.0)


@dataclass(frozen=True)
class RecordingSection:
    """EDF+ recording of the night."""

    enabled: bool = _opt(True, doc="Record EDF+ at all")
    dir: str = _opt("", doc="Where nights are recorded (empty: <state_dir>/nights)")
    flush_interval_s: float = _opt(2.0, doc="Longest stretch of signal a power cut may lose", min=0.5, max=30.0)
    physical_range_uv: float = _opt(3276.8, doc="EDF physical range +/- in microvolts (16-bit: range/32768 per count)",
                                    min=100.0, max=187_500.0)
    max_night_hours: float = _opt(14.0, doc="A night longer than this is closed (report sent) and a new one begun",
                                  min=1.0, max=48.0)
    retention_nights: int = _opt(30, doc="Keep at most this many nights", min=1, max=3650)
    retention_max_mb: float = _opt(8000.0, doc="...and at most this much disk; oldest nights go first", min=10.0,
                                   max=1e7)


@dataclass(frozen=True)
class TelemetrySection:
    """Periodic health reports."""

    interval_s: float = _opt(60.0, doc="Seconds between telemetry messages (signal time)", min=1.0, max=3600.0)


@dataclass(frozen=True)
class UpdatesSection:
    """Signed model and config updates from the clinic (``appliance.updates``)."""

    public_key_file: str = _opt("", doc="The clinic's pinned Ed25519 public key (PEM); set = only signed updates "
                                        "(cmd/update) change the box, unsigned retained configs are refused; "
                                        "empty = signed updates disabled")


@dataclass(frozen=True)
class BoxConfig:
    """The whole validated configuration.

    ``breather`` holds the breather's settings as given; they are checked against the hard safety envelope
    by ``appliance.protocol.safety.BreatherConfig`` during validation, and the daemon builds that object from them.
    """

    box: BoxSection = field(default_factory=BoxSection)
    acquisition: AcquisitionSection = field(default_factory=AcquisitionSection)
    staging: StagingSection = field(default_factory=StagingSection)
    loops: LoopsSection = field(default_factory=LoopsSection)
    breather: dict = field(default_factory=dict)
    outputs: OutputsSection = field(default_factory=OutputsSection)
    hardware: HardwareSection = field(default_factory=HardwareSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    recording: RecordingSection = field(default_factory=RecordingSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    updates: UpdatesSection = field(default_factory=UpdatesSection)

    @property
    def recording_dir(self) -> Path:
        """Directory of the EDF+ nights and their reports."""
        return Path(self.recording.dir) if self.recording.dir else Path(self.box.state_dir) / "nights"

    def to_dict(self) -> dict:
        """Plain dict (TOML/JSON-serialisable) that :func:`validate_config` accepts back."""
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f for f in dataclasses.fields(BoxConfig)}
# With postponed annotations a field's type is its source text; these are the only ones the sections use.
_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list}


def _r(value: Any) -> str:
    """A short repr for an error message (a hostile value may be megabytes or nested thousands deep)."""
    try:
        return clip(repr(value), 80)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply>"


def _check_value(key: str, value: Any, f: dataclasses.Field) -> Any:
    typ = _TYPES.get(f.type, f.type) if isinstance(f.type, str) else f.type
    meta = f.metadata
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_r(value)}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_r(value)}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_r(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits (TOML and JSON allow them): no float holds it
            raise ConfigError(key, f"expected a number, got an integer of {len(str(abs(value)))} digits") from None
        if value != value:
            raise ConfigError(key, "NaN is not a value")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_r(value)}")
    elif typ is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {_r(value)}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(key, f"{_r(value)} is not one of {list(meta['choices'])}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(key, f"{_r(value)} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(key, f"{_r(value)} is above the maximum {meta['max']}")
    return value


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a table [{name}], got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            raise ConfigError(f"{name}.{k}", f"unknown key (known: {', '.join(fields)})")
    kwargs = {k: _check_value(f"{name}.{k}", v, fields[k]) for k, v in raw.items()}
    return cls(**kwargs)


def _validate_breather(raw: Any) -> dict:
    """Check the breather settings against the hard envelope in appliance.protocol.safety (the one place it lives)."""
    if not isinstance(raw, dict):
        raise ConfigError("breather", f"expected a table [breather], got {type(raw).__name__}")
    try:
        BreatherConfig.from_dict(raw)
    except SafetyEnvelopeError as e:
        field_name = getattr(e, "field", "")
        key = f"breather.{field_name}" if field_name and not field_name.startswith("<") else "breather"
        raise ConfigError(key, str(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError("breather", str(e)) from None
    return dict(raw)


def validate_config(d: dict) -> BoxConfig:
    """Validate a configuration document and return the typed configuration.

    Parameters
    ----------
    d : dict
        The parsed TOML (or a JSON object pushed by the clinic). Missing sections and keys take their
        defaults; unknown ones are refused, so a typo never passes silently.

    Returns
    -------
    BoxConfig

    Raises
    ------
    ConfigError
        Naming the first offending key by its dotted path.
    """
    if not isinstance(d, dict):
        raise ConfigError("", f"a configuration is a table of sections, got {type(d).__name__}")
    for name in d:
        if name not in _SECTIONS:
            raise ConfigError(name, f"unknown section (known: {', '.join(_SECTIONS)})")
    kwargs: dict[str, Any] = {}
    for name, f in _SECTIONS.items():
        if name not in d:
            continue
        if name == "breather":
            kwargs[name] = _validate_breather(d[name])
        else:
            kwargs[name] = _build_section(name, f.default_factory, d[name])  # type: ignore[misc]
    cfg = BoxConfig(**kwargs)
    _check_cross_fields(cfg)
    return cfg


def _check_cross_fields(cfg: BoxConfig) -> None:
    a = cfg.acquisition
    if a.staging_channel >= a.channels:
        raise ConfigError("acquisition.staging_channel",
                          f"channel {a.staging_channel} does not exist on a {a.channels}-channel chip")
    if a.channel_labels and len(a.channel_labels) != a.channels:
        raise ConfigError("acquisition.channel_labels",
                          f"{len(a.channel_labels)} labels for {a.channels} channels")
    for i, label in enumerate(a.channel_labels):
        # an EDF+ signal label is at most 16 printable ASCII characters; the recorder could not start otherwise
        if not isinstance(label, str) or not label.isascii() or not label.isprintable() or not 0 < len(label) <= 16:
            raise ConfigError(f"acquisition.channel_labels[{i}]",
                              f"an EDF+ label is 1 to 16 printable ASCII characters, got {label!r:.40}")
    pins = {"acquisition.drdy_pin": a.drdy_pin, "outputs.light_pin": cfg.outputs.light_pin,
            "outputs.sound_pin": cfg.outputs.sound_pin, "outputs.button_pin": cfg.outputs.button_pin}
    seen: dict[int, str] = {}
    for key, pin in pins.items():
        if pin in seen:
            raise ConfigError(key, f"pin {pin} is already used by {seen[pin]}")
        seen[pin] = key
    if not is_box_id(cfg.box.id):
        raise ConfigError("box.id", f"{_r(cfg.box.id)}: {BOX_ID_RULE} (it is an MQTT topic level)")
    for g in cfg.box.groups:
        if not g or len(g) > 64 or not all(c.isalnum() or c in "-_." for c in g):
            raise ConfigError("box.groups", f"{_r(g)}: a group is 1-64 letters, digits, '-', '_' or '.'")
    if bool(cfg.mqtt.tls_cert) != bool(cfg.mqtt.tls_key):
        raise ConfigError("mqtt.tls_key" if cfg.mqtt.tls_cert else "mqtt.tls_cert",
                          "a client certificate needs both tls_cert and tls_key")


LOCAL_ONLY_KEYS: dict[str, frozenset[str] | None] = {
    "box": frozenset({"id", "state_dir", "groups"}),
    "hardware": None,
    "mqtt": None,
    "updates": None,
    "outputs": None,
    "acquisition": frozenset({"spi_bus", "spi_device", "spi_max_speed_hz", "drdy_pin"}),
    "staging": frozenset({"model_path"}),
    "loops": frozenset({"model_path"}),
    "recording": frozenset({"dir"}),
}
"""Keys only the box's own file sets (``None``: the whole section). A configuration the clinic pushes over MQTT
never sets them: they name files the box would read or write (keys, passwords, certificates, models, the
recording folder), say who the box is and where its broker is, wire its GPIO pins, or choose real hardware over
the simulator (a pushed ``hardware.simulate`` would leave a child unwatched). A pushed value for one
is ignored (and reported as ignored), never validated, opened or used."""


def split_pushed_config(doc: Any) -> tuple[Any, list[str]]:
    """Split a pushed configuration into what a push may set and the local-only keys it tried to set.

    Parameters
    ----------
    doc : Any
        The configuration as received (anything JSON can carry).

    Returns
    -------
    pushable : Any
        ``doc`` without the keys of :data:`LOCAL_ONLY_KEYS` (a non-dict is returned as it is, for
        :func:`validate_config` to refuse).
    ignored : list of str
        Dotted keys that were dropped (``"mqtt.*"`` for a whole section), at most 32 of them.
    """
    if not isinstance(doc, dict):
        return doc, []
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for name, section in doc.items():
        if name in LOCAL_ONLY_KEYS and LOCAL_ONLY_KEYS[name] is None:
            ignored.append(f"{name}.*")
            continue
        local = LOCAL_ONLY_KEYS.get(name) or frozenset()
        if isinstance(section, dict) and local:
            out[name] = {k: v for k, v in section.items() if k not in local}
            ignored += [f"{name}.{k}" for k in section if k in local]
        else:
            out[name] = section
    return out, [clip(k, 80) for k in ignored[:32]]


def merge_config(base: BoxConfig, update: dict) -> BoxConfig:
    """Apply a partial configuration (e.g. one pushed by the clinic) on top of ``base`` and validate the result."""
    merged = base.to_dict()
    if not isinstance(update, dict):
        raise ConfigError("", f"a configuration is a table of sections, got {type(update).__name__}")
    for name, section in update.items():
        if isinstance(section, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **section}
        else:
            merged[name] = section
    return validate_config(merged)


def describe_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, documentation) for every key this module owns, for docs and ``config check``."""
    out = []
    for name, f in _SECTIONS.items():
        if name == "breather":
            continue
        for sf in dataclasses.fields(f.default_factory):  # type: ignore[arg-type]
            default = sf.default if sf.default is not dataclasses.MISSING else sf.default_factory()  # type: ignore[misc]
            out.append((f"{name}.{sf.name}", default, sf.metadata.get("doc", "")))
    return out
