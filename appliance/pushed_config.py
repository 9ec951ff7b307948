"""The clinic's pushed configuration on the box: checked before it is kept, tried once, kept only if it works.

A configuration the clinic pushes (the retained ``config`` topic, or a signed ``update`` of kind config) is
merged over the box's own file at the next start, never mid-night. Three defences stand between it and a
bricked box:

1. **Local-only keys are dropped** (:data:`appliance.protocol.boxconfig.LOCAL_ONLY_KEYS`): a push never names a
   file the box reads or a folder it writes, so it cannot point the box at ``/dev/zero`` or a folder that cannot exist.
2. **Pre-flight** (:func:`preflight`): before it is kept, the merged configuration must be one the daemon can
   start with: it validates, the breather settings build, the state and recording folders exist (or can be
   made) and take a file, the ring buffer it asks for fits in the memory the box has, and it is not a
   configuration that already failed to start the daemon here.
3. **Try once, fall back by itself** (:class:`PushedConfigStore`): every start with a pushed configuration first
   leaves a *trying* marker. When the night has staged :data:`PROBATION_S` of signal (the chain from the chip
   through the stage model working for ten minutes; not as early as READY=1, which a chip that starts and an
   acquisition that dies at its first epoch would pass) the configuration becomes the *last known good* one and
   the marker goes. When a start fails, with an exception or with the acquisition stopping within that time
   (:meth:`PushedConfigStore.failed`; ``bedtime run`` then starts itself again in the same process image, so
   nothing of the failed start lingers) or by dying (the next start finds the marker), the configuration is
   *rejected*: moved aside, remembered by its sha256 so the same push is
   refused next time, and the box starts with its last known good one (or its own file alone) and reports
   ``config_rejected``. A start is never retried with a configuration that failed, so there is no restart loop.

Files in the state directory::

    clinic-config.json            the pushed configuration for the next start (local-only keys dropped)
    clinic-config.meta.json       its version, sha256 and where it came from
    clinic-config.good.json       the last pushed configuration the daemon started with (+ .meta.json)
    clinic-config.trying          marker: a start with this sha256 is under way
    clinic-config.rejected.json   the configurations that failed (sha256, version, reason), newest last
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.protocol.userfiles import read_small_regular_file, replace_file
from appliance.protocol.boxconfig import BoxConfig, ConfigError, merge_config, split_pushed_config

logger = logging.getLogger(__name__)

PUSHED_CONFIG = "clinic-config.json"
"""The last config the clinic pushed (validated, local-only keys dropped), in the state directory; merged over the
TOML file at the next start."""

PROBATION_S = 600.0
"""Seconds of signal a night must stage with a pushed configuration before it becomes the last known good one.
The unit's StartLimitIntervalSec (600 s): a configuration that fails within its probation is rejected and the box
starts again without it; one that fails later restarts the daemon (exit 70) less often than systemd's start limit
counts, so no configuration can run the box into the start limit. The price: a power cut within those ten
minutes rejects a configuration that was fine (the clinic sees why and can push it again)."""

MAX_PUSHED_BYTES = 256 * 1024
"""Largest pushed configuration kept or read back (a full configuration is ~3 kB)."""

REJECTED_KEPT = 32
"""How many rejected configurations are remembered (by sha256) so the same push is refused at once."""

RING_MEMORY_SHARE = 0.25
"""The ring buffer a configuration asks for may take at most this share of the memory available now."""


class PreflightError(ConfigError):
    """A pushed configuration with which the daemon could not start (the key names what is wrong)."""


def config_sha256(doc: dict) -> str:
    """Fingerprint of a pushed configuration (canonical JSON), to recognise it again."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all, readable by the daemon's user only (0600, as the state dir's files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data, mode=0o600)


def _read_json(path: Path) -> Any:
    """A small JSON state file, or None when missing, unreadable, too large or not JSON."""
    try:
        return json.loads(read_small_regular_file(path, max_bytes=MAX_PUSHED_BYTES))
    except (OSError, ValueError, RecursionError):
        return None


def _probe_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight-"):
            pass
    except OSError as e:
        raise PreflightError(key, f"{folder}: the daemon could not write there: {e.strerror or e}") from None


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ring_bytes(cfg: BoxConfig) -> int:
    """Memory the C ring buffer takes for ``cfg`` (``native/ring.c``: counts, index, timestamp, status)."""
    a = cfg.acquisition
    return a.ring_capacity_frames * (4 * a.channels + 8 + 8 + 4)


def preflight(cfg: BoxConfig, *, rejected: set[str] = frozenset(), sha256: str = "") -> None:
    """Check that the daemon can start with ``cfg`` (the box's file with a pushed configuration merged in).

    Parameters
    ----------
    cfg : BoxConfig
        The merged configuration the next start would use.
    rejected : set of str
        sha256 of pushed configurations that already failed to start the daemon on this box.
    sha256 : str
        This pushed configuration's :func:`config_sha256`.

    Raises
    ------
    PreflightError
        Naming what would stop the daemon.
    """
    if sha256 and sha256 in rejected:
        raise PreflightError("", "this configuration already failed to start the daemon on this box")
    from appliance.protocol.safety import BreatherConfig, SafetyEnvelopeError

    try:
        BreatherConfig.from_dict(cfg.breather)
    except (SafetyEnvelopeError, TypeError, ValueError) as e:
        raise PreflightError("breather", str(e)) from None
    _probe_writable(Path(cfg.box.state_dir), "box.state_dir")
    _probe_writable(cfg.recording_dir, "recording.dir")
    avail = _mem_available_bytes()
    need = ring_bytes(cfg)
    if avail is not None and need > RING_MEMORY_SHARE * avail:
        raise PreflightError("acquisition.ring_capacity_frames",
                             f"the ring buffer would take {need / 1e6:.0f} MB; this box has {avail / 1e6:.0f} MB "
                             f"available (at most {RING_MEMORY_SHARE:.0%} may go to the ring)")


@dataclass
class StartChoice:
    """The configuration a start uses, and what was rejected on the way there.

    Attributes
    ----------
    config : BoxConfig
        The configuration to start with.
    source : str
        ``"pushed"``, ``"last_known_good"`` or ``"box_file"``.
    sha256 : str
        The pushed configuration's fingerprint ('' for the box's file alone).
    version : str
        Its config version ('' when unknown).
    rejected : list of dict
        ``config_rejected`` reports to send once the link is up (``config_version``, ``config_sha256``,
        ``error``, ``fallback``).
    """

    config: BoxConfig
    source: str
    sha256: str = ""
    version: str = ""
    rejected: list[dict] = field(default_factory=list)


class PushedConfigStore:
    """The pushed configuration's files in one box's state directory (see the module docstring).

    Parameters
    ----------
    state_dir : str or Path
        The box's state directory (``box.state_dir`` of its own file).
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.pushed = self.dir / PUSHED_CONFIG
        self.good = self.dir / "clinic-config.good.json"
        self.trying = self.dir / "clinic-config.trying"
        self.rejected_path = self.dir / "clinic-config.rejected.json"

    @staticmethod
    def _meta(path: Path) -> Path:
        return path.with_name(path.name.replace(".json", ".meta.json"))

    # ---- receiving a push ---------------------------------------------------------------------------
    def rejected(self) -> list[dict]:
        """The rejected configurations, oldest first."""
        data = _read_json(self.rejected_path)
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def rejected_shas(self) -> set[str]:
        return {str(r.get("config_sha256")) for r in self.rejected()}

    def check(self, doc: Any, *, base: BoxConfig) -> tuple[dict, BoxConfig, list[str]]:
        """Validate a pushed configuration and pre-flight it; return (what to keep, merged config, ignored keys).

        Never opens a file the configuration names: local-only keys are dropped first.

        Raises
        ------
        ConfigError
            (or :class:`PreflightError`) naming the offending key.
        """
        pushable, ignored = split_pushed_config(doc)
        if not isinstance(pushable, dict):
            raise ConfigError("", f"a configuration is a table of sections, got {type(pushable).__name__}")
        merged = merge_config(base, pushable)
        preflight(merged, rejected=self.rejected_shas(), sha256=config_sha256(pushable))
        return pushable, merged, ignored

    def store(self, doc: dict, *, version: str = "", source: str = "") -> str:
        """Keep ``doc`` (already :meth:`check`-ed) for the next start; return its sha256."""
        sha = config_sha256(doc)
        data = json.dumps(doc, indent=1).encode()
        if len(data) > MAX_PUSHED_BYTES:
            raise ConfigError("", f"configuration larger than {MAX_PUSHED_BYTES} bytes")
        _write_atomic(self._meta(self.pushed), json.dumps(
            {"config_version": version, "config_sha256": sha, "source": source, "stored_utc": _utc_now()}).encode())
        _write_atomic(self.pushed, data)
        return sha

    # ---- starting -----------------------------------------------------------------------------------
    def _load(self, path: Path) -> tuple[dict | None, str, str]:
        doc = _read_json(path)
        meta = _read_json(self._meta(path)) or {}
        version = meta.get("config_version") if isinstance(meta, dict) else ""
        if not isinstance(doc, dict):
            return None, "", ""
        pushable, _ = split_pushed_config(doc)
        return pushable, config_sha256(pushable), version if isinstance(version, str) else ""

    def _reject(self, path: Path, sha: str, version: str, reason: str) -> None:
        entries = [r for r in self.rejected() if r.get("config_sha256") != sha]
        entries.append({"config_sha256": sha, "config_version": version, "reason": reason[:400],
                        "rejected_utc": _utc_now(), "reported": False})
        _write_atomic(self.rejected_path, json.dumps(entries[-REJECTED_KEPT:], indent=1).encode())
        for p in (path, self._meta(path)):
            p.unlink(missing_ok=True)
        logger.error("pushed configuration %s (%s) rejected: %s", version or "?", sha[:12], reason)

    def choose(self, file_config: BoxConfig) -> StartChoice:
        """The configuration this start uses: the pushed one, else the last known good one, else the file.

        A pushed configuration that a previous start was trying when it died (the marker is still there), or
        that no longer validates or pre-flights, is rejected here and the next candidate is taken.
        """
        if not (self.pushed.exists() or self.good.exists() or self.trying.exists()):
            return self._finish(StartChoice(file_config, "box_file"))  # nothing pushed: touch nothing on disk
        marker = _read_json(self.trying)
        died_with = marker.get("config_sha256") if isinstance(marker, dict) else None
        self.trying.unlink(missing_ok=True)
        for source, path in (("pushed", self.pushed), ("last_known_good", self.good)):
            if not path.exists() and not self._meta(path).exists():
                continue
            doc, sha, version = self._load(path)
            reason = ""
            cfg = None
            if doc is None:
                reason = "the stored configuration is unreadable or not a JSON object"
            elif died_with == sha:
                reason = (f"the daemon did not start with it (the previous start ended before it had staged "
                          f"{PROBATION_S / 60:g} min of signal)")
            else:
                try:
                    cfg = merge_config(file_config, doc)
                    preflight(cfg, rejected=self.rejected_shas(), sha256=sha)
                except ConfigError as e:
                    reason = f"the daemon cannot start with it: {e}"
            if reason:
                self._reject(path, sha, version, reason)
                continue
            if source == "pushed" and self.good.exists() and self._load(self.good)[1] == sha:
                source = "last_known_good"
            _write_atomic(self.trying, json.dumps({"config_sha256": sha, "pid": os.getpid(),
                                                   "started_utc": _utc_now()}).encode())
            assert cfg is not None
            return self._finish(StartChoice(cfg, source, sha, version))
        return self._finish(StartChoice(file_config, "box_file"))

    def _finish(self, choice: StartChoice) -> StartChoice:
        """Attach the rejections not yet reported (this start's, or a failed start's before it restarted the
        process), and mark them reported: the daemon queues them in its persistent outbox."""
        entries = self.rejected()
        for r in entries:
            if r.get("reported") is False:
                choice.rejected.append({"config_version": r.get("config_version") or None,
                                        "config_sha256": r.get("config_sha256"), "error": r.get("reason"),
                                        "fallback": choice.source})
                r["reported"] = True
        if choice.rejected:
            _write_atomic(self.rejected_path, json.dumps(entries, indent=1).encode())
        return choice

    def started(self, choice: StartChoice) -> None:
        """The night has staged :data:`PROBATION_S` of signal with ``choice``: it becomes the last known good
        configuration."""
        if choice.source == "box_file":
            return
        if choice.source == "pushed" and self.pushed.exists():
            doc, sha, _ = self._load(self.pushed)
            if sha == choice.sha256 and doc is not None:
                _write_atomic(self._meta(self.good), self._meta(self.pushed).read_bytes()
                              if self._meta(self.pushed).exists() else b"{}")
                _write_atomic(self.good, json.dumps(doc, indent=1).encode())
        self.trying.unlink(missing_ok=True)

    def failed(self, choice: StartChoice, reason: str) -> None:
        """The daemon could not start with ``choice``: reject it (the next :meth:`choose` falls back)."""
        self.trying.unlink(missing_ok=True)
        if choice.source == "box_file":
            return
        for path in (self.pushed, self.good):
            doc, sha, version = self._load(path)
            if doc is not None and sha == choice.sha256:
                self._reject(path, sha, version or choice.version, reason)
