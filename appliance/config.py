"""The box's configuration file on the box: reading it, and what only the box itself can check.

On the box the file is ``/etc/bedtime/bedtime.toml``; ``docs/bedtime.example.toml`` documents every key. The
schema (every key, :class:`~appliance.protocol.boxconfig.BoxConfig`, :func:`~appliance.protocol.boxconfig.
validate_config`, :class:`~appliance.protocol.boxconfig.ConfigError`) is the protocol layer's
(:mod:`appliance.protocol.boxconfig`), because the clinic validates what it pushes with the same one. This module
adds what needs the box's own files: :func:`load_config` (TOML, the pinned key's file), :func:`check_on_this_machine`
(the files and folders a configuration names exist and can be used here), :func:`permission_warnings`, and where a
machine without a configuration keeps its state.
"""
from __future__ import annotations

import logging
import os
import stat
import tomllib
from pathlib import Path

from appliance.protocol.boxconfig import AcquisitionSection, BoxConfig, ConfigError, validate_config
from appliance.protocol.commands import clip
from appliance.protocol.userfiles import (MAX_KEY_FILE_BYTES, UserFileError, parse_toml, read_small_regular_file,
                                         read_user_text)

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("/etc/bedtime/bedtime.toml")
"""Where the daemon looks for its configuration on the box."""


SIM_STATE_DIRNAME = "bedtime-sim"
"""Name of the state folder of a machine without a box configuration (a laptop trying the simulator)."""


def simulation_state_dir() -> Path:
    """Where nights and state go when there is no configuration file at all (no ``--config``, no
    :data:`DEFAULT_CONFIG_PATH`): ``$XDG_STATE_HOME/bedtime-sim``, by default ``~/.local/state/bedtime-sim``.

    Every command that reads or writes state (``run --simulate``, ``report``, ``outputs-off --simulate``) uses
    this same folder then, so a simulated night is found by the report that follows it. A box always has its
    configuration file, whose ``box.state_dir`` defaults to ``/var/lib/bedtime``.
    """
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / SIM_STATE_DIRNAME


DEFAULT_MONTAGE: tuple[str, ...] = ("Fpz-Cz", "Pz-Cz", "C3-Cz", "C4-Cz", "F3-Cz", "F4-Cz", "O1-Cz", "O2-Cz")
"""Electrodes of channels 1..8 when ``acquisition.channel_labels`` is empty: each channel's positive input on
the 10-20 site named first, against the common reference (SRB2) on Cz; channel 1 on Fpz gives Sleep-EDF's
Fpz-Cz, the derivation the stager is evaluated on. Set ``channel_labels`` when the electrodes sit elsewhere."""


def edf_channel_labels(acq: AcquisitionSection, *, n_channels: int) -> list[str]:
    """EDF+ signal labels (type and electrodes, e.g. ``"EEG Fpz-Cz"``) for the ``n_channels`` recorded channels.

    The configured ``channel_labels`` when they match the channel count, else :data:`DEFAULT_MONTAGE`.
    """
    if acq.channel_labels and len(acq.channel_labels) == n_channels:
        return [str(label) for label in acq.channel_labels]
    return [f"EEG {m}" for m in DEFAULT_MONTAGE[:n_channels]] + [f"EEG{i + 1}" for i in
                                                                  range(len(DEFAULT_MONTAGE), n_channels)]


def check_local_files(cfg: BoxConfig) -> None:
    """The checks of a configuration that read files it names (the pinned update key).

    Only for the box's own file (:func:`load_config`, ``bedtime config check``): a configuration received over
    MQTT is never checked this way, because its file-naming keys are never used (:data:`LOCAL_ONLY_KEYS`).

    Raises
    ------
    ConfigError
        Naming the key whose file is missing, not a regular file, too large or of the wrong kind.
    """
    if cfg.updates.public_key_file:
        read_public_key(cfg.updates.public_key_file)


MAX_CONFIG_FILE_BYTES = 1024 * 1024
"""Largest configuration file read: the documented example with every key is about 6 KB; a bigger file is a
mistake (the wrong path), refused rather than parsed."""


def read_public_key(path: str | Path) -> bytes:
    """The PEM bytes of the pinned update key at ``path``, checked to be an Ed25519 public key.

    Only a regular file of at most :data:`MAX_KEY_FILE_BYTES` is read (opened without blocking, so a FIFO or
    a device is refused rather than waited on or read without end).

    Raises
    ------
    ConfigError
        On ``updates.public_key_file`` when the file is missing, unreadable, not a regular file, too large or
        not an Ed25519 public key.
    """
    key = "updates.public_key_file"
    try:
        pem = read_small_regular_file(path, max_bytes=MAX_KEY_FILE_BYTES)
    except OSError as e:
        raise ConfigError(key, f"{clip(str(path), 120)}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(key, f"{clip(str(path), 120)}: {e}") from None
    from appliance.protocol.signing import SignatureError, load_public_key

    try:
        load_public_key(pem)
    except (SignatureError, ValueError, TypeError) as e:
        raise ConfigError(key, f"{path}: not an Ed25519 public key in PEM form ({e})") from None
    return pem


def load_config(path: str | Path) -> BoxConfig:
    """Read and validate a TOML configuration file.

    Raises
    ------
    ConfigError
        For unreadable files, TOML syntax errors (with line and column) and invalid values.
    """
    p = Path(path)
    try:
        # a regular file of bounded size only: a FIFO or /dev/zero named by mistake must not hang the box or the
        # person at the terminal (appliance.protocol.userfiles says why)
        doc = parse_toml(read_user_text(p, max_bytes=MAX_CONFIG_FILE_BYTES, what="TOML text"))
    except UserFileError as e:
        raise ConfigError("", str(e), source=p) from None
    try:
        cfg = validate_config(doc)
        check_local_files(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(e.key, e.message, source=p) from None


def check_on_this_machine(cfg: BoxConfig) -> list[ConfigError]:
    """What :func:`validate_config` cannot see: the files and folders the configuration names, here.

    Kept apart from :func:`validate_config` because the clinic's console validates configurations for boxes
    it is not running on; ``bedtime config check`` and ``bedtime run`` call this on the box itself.

    Returns
    -------
    list of ConfigError
        One per missing or unreadable file (``mqtt.password_file``, ``mqtt.tls_ca/cert/key``,
        ``staging.model_path``, ``loops.model_path``) and per state folder that cannot be written or created
        (``box.state_dir``, ``recording.dir``); empty when all is well.
    """
    errors: list[ConfigError] = []
    files = {"mqtt.password_file": cfg.mqtt.password_file, "mqtt.tls_ca": cfg.mqtt.tls_ca,
             "mqtt.tls_cert": cfg.mqtt.tls_cert, "mqtt.tls_key": cfg.mqtt.tls_key,
             "staging.model_path": cfg.staging.model_path, "loops.model_path": cfg.loops.model_path}
    for key, value in files.items():
        if not value:
            continue
        path = Path(value)
        if not path.is_file():
            errors.append(ConfigError(key, f"{path}: {'is not a file' if path.exists() else 'no such file'}"))
        elif not os.access(path, os.R_OK):
            errors.append(ConfigError(key, f"{path}: not readable by this user"))
    folders = {"box.state_dir": cfg.box.state_dir, "recording.dir": cfg.recording.dir}
    for key, value in folders.items():
        if value:
            problem = _unwritable_folder(Path(value))
            if problem:
                errors.append(ConfigError(key, problem))
    return errors


def _unwritable_folder(path: Path) -> str | None:
    """Why ``path`` cannot be used as a writable folder (it, or the nearest existing parent that would hold
    it, is not a writable directory), or None."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{path}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "not writable" if existing == path else f"cannot be created ({existing} is not writable)"
        return f"{path}: {what} by this user"
    return None


def permission_warnings(config_path: str | Path, cfg: BoxConfig) -> list[str]:
    """Loose permissions on the configuration and its secrets, one sentence each (warnings, not errors).

    The configuration file must not be writable by group or others (it decides what the breather may do);
    the MQTT password file and the TLS client key must not be writable by group or others nor readable by
    others.
    """
    out: list[str] = []
    checks = [(Path(config_path), stat.S_IWGRP | stat.S_IWOTH, "configuration")]
    for key, value in (("mqtt.password_file", cfg.mqtt.password_file), ("mqtt.tls_key", cfg.mqtt.tls_key)):
        if value:
            checks.append((Path(value), stat.S_IWGRP | stat.S_IWOTH | stat.S_IROTH, key))
    for path, bad_bits, what in checks:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # a missing file is check_on_this_machine's error
        if mode & bad_bits:
            loose = [name for bit, name in ((stat.S_IWGRP, "group-writable"), (stat.S_IWOTH, "world-writable"),
                                            (stat.S_IROTH, "world-readable")) if mode & bad_bits & bit]
            out.append(f"{path} ({what}) is {' and '.join(loose)} (mode {stat.S_IMODE(mode):04o}); "
                       f"chmod {'600' if what != 'configuration' else '644'} it")
    return out

