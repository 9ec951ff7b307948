"""Signed model and config updates on the box: verify, apply atomically, health-check, roll back.

The clinic signs every model file and config with its Ed25519 key (``bedtime-fleet sign``, see
:mod:`appliance.protocol.signing`); the box holds only the public key, pinned in its own configuration.
:class:`UpdateManager` applies an update only when all of these hold, in this order:

1. the detached manifest verifies against the pinned public key, names the same kind, and the payload's
   sha256 and size are the signed ones (else: *refused*, nothing on disk changes);
2. the signed binding holds (:func:`appliance.protocol.signing.check_binding`): it names this box or one of its
   groups, it has not expired and was not signed in the future, and its serial is not below the highest this
   box accepted for the kind (kept in ``<kind>/serial.json``, so across restarts): no replay of an older
   update, no update signed for another box;
3. the payload is well-formed for its kind (a config passes the manager's ``check_config``, by default
   :func:`appliance.protocol.boxconfig.validate_config`, which the daemon extends with its pre-flight; a
   model's manifest carries its signed ``model_card`` whose ``sha256`` is the payload's). Nothing in a payload
   is looked at before its signature and binding are checked;
4. it is written beside the current version and switched in with an atomic ``rename`` of a symlink, so a
   power cut leaves either the old or the new version in place, never half of one;
5. the health check passes (the model loads with its card through :class:`appliance.stager.Stager` and its
   self-test runs; config validates; the daemon adds
   "stages flowing"). If it fails, the box switches back to the previous version by itself
   (*rolled_back*).

Every step is appended to an audit log (``<state_dir>/updates/audit.jsonl``, one JSON object per line,
fsynced) and returned as an :class:`UpdateResult` that the daemon sends back to the clinic.

On-disk layout (``<state_dir>/updates/<kind>/``)::

    versions/<version>-<sha12>.json           each applied config, with its .sig.json beside it
    versions/<version>-<sha12>/<version>-<sha12>.tflite
                                             each applied model in its own folder, with its .sig.json and
                                             the signed card as model_card.json (where the stager looks),
                                             so a roll back restores the matching card with the model
    current  -> versions/...                 the version in use (relative symlink to the file)
    previous -> versions/...                 the one before, kept for roll back

The ``update`` command (``bedtime/v1/<box>/cmd/update``) and its wire format are the protocol's
(:data:`appliance.protocol.commands.COMMANDS`, :mod:`appliance.protocol.updates`); :func:`handle_update_command` is
its handler on the box and :func:`attach_to_link` wires
both it and the audit trail into a :class:`~appliance.mqtt.BoxLink`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.jsonl import append_row, read_rows
from appliance.protocol.signing import SignatureError, check_binding, verify_manifest
from appliance.protocol.updates import (MAX_CONFIG_PAYLOAD_BYTES, MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES,
                                         decode_update_args)

if TYPE_CHECKING:
    from appliance.mqtt import BoxLink

logger = logging.getLogger(__name__)

KINDS = {"model": ".tflite", "config": ".json"}
"""File suffix of each update kind's stored versions (the kinds are :data:`appliance.protocol.signing.KINDS`)."""


@dataclass
class HealthReport:
    """Result of a post-update health check.

    Attributes
    ----------
    ok : bool
        True only when every check passed.
    checks : dict[str, bool]
        Each named check, e.g. ``{"model_loads": True, "self_test": True, "stages_flowing": True}``.
    detail : str
        What failed, for people.
    """

    ok: bool
    checks: dict[str, bool] = field(default_factory=dict)
    detail: str = ""


@dataclass
class UpdateResult:
    """What happened to one update request (sent back to the clinic as the command's result).

    ``state`` is ``applied`` (new version running and healthy), ``refused`` (never installed: bad
    signature, wrong kind, malformed payload; the current version untouched), or ``rolled_back``
    (installed, failed its health check, previous version restored).
    """

    ok: bool
    state: str
    kind: str
    version: str = ""
    sha256: str = ""
    running_version: str = ""
    previous_version: str = ""
    reason: str = ""
    health: HealthReport | None = None

    def to_dict(self) -> dict:
        return asdict(self)


HealthCheck = Callable[[str, Path], HealthReport]
"""``health_check(kind, path_of_new_version) -> HealthReport``, run after the switch."""


def default_health_check(kind: str, path: Path) -> HealthReport:
    """The checks the box can make on its own: a model loads as the stager will load it
    (:class:`appliance.stager.Stager`: its ``model_card.json`` beside it fits the features, the sha256 matches,
    the TFLite runtime loads it) and runs on a zero input with finite output (self-test); a config validates. The daemon wraps this and adds
    ``stages_flowing`` (it watches the next epochs come out of the stager)."""
    if kind == "config":
        from appliance.protocol.boxconfig import ConfigError, validate_config

        try:
            validate_config(json.loads(path.read_bytes()))
        except (ConfigError, ValueError) as e:
            return HealthReport(False, {"config_valid": False}, f"config invalid: {e}")
        return HealthReport(True, {"config_valid": True})
    checks = {"model_loads": False, "self_test": False}
    try:
        import numpy as np

        from appliance.stager import Stager

        model = Stager(path).model
        checks["model_loads"] = True
        y = model.predict(np.zeros(model.input_shape, dtype=np.float32))
        checks["self_test"] = bool(np.all(np.isfinite(y)))
    except Exception as e:  # any failure to load or run is a failed health check, never a crash
        return HealthReport(False, checks, f"model health check failed: {type(e).__name__}: {e}")
    return HealthReport(all(checks.values()), checks, "" if checks["self_test"] else "self-test output not finite")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UpdateManager:
    """Applies signed updates to one box's models and config.

    Parameters
    ----------
    state_dir : str or Path
        The box's writable state directory (``box.state_dir``); updates live under ``updates/``.
    public_key_pem : str or bytes
        The clinic's Ed25519 public key (PEM), pinned in the box configuration.
    health_check : callable, optional
        ``(kind, path) -> HealthReport``; default :func:`default_health_check`.
    on_audit : callable, optional
        Called with each audit entry (a dict) after it is written, e.g. to publish it as an MQTT event.
    keep_versions : int
        Old version files kept per kind besides current and previous (bounded disk use).
    box_id : str
        This box's id: a manifest must name it, or one of ``box_groups``.
    box_groups : sequence of str
        This box's rollout groups (``box.groups``).
    check_config : callable, optional
        ``check_config(doc)`` for a config update (after its signature and binding are checked): raises
        ``ConfigError``/``ValueError`` to refuse it, may return a list of ignored keys. Default
        :func:`appliance.protocol.boxconfig.validate_config`.
    clock : callable, optional
        The box's clock, ``clock() -> aware UTC datetime`` (for expiry).
    """

    def __init__(self, state_dir: str | Path, public_key_pem: str | bytes, *, box_id: str,
                 box_groups: Any = (), health_check: HealthCheck | None = None,
                 on_audit: Callable[[dict], None] | None = None, keep_versions: int = 2,
                 check_config: Callable[[Any], Any] | None = None,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        self.box_id, self.box_groups = box_id, tuple(box_groups)
        self.check_config = check_config
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.root = Path(state_dir) / "updates"
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_key_pem = public_key_pem
        self.health_check_fn = health_check or default_health_check
        self.on_audit = on_audit
        self.keep_versions = keep_versions
        self.audit_path = self.root / "audit.jsonl"

    # ---- queries ---------------------------------------------------------------------------------
    def _dir(self, kind: str) -> Path:
        return self.root / kind

    def current_path(self, kind: str) -> Path | None:
        """Path of the version in use, or None before the first update."""
        link = self._dir(kind) / "current"
        return link.resolve() if link.is_symlink() else None

    def previous_path(self, kind: str) -> Path | None:
        link = self._dir(kind) / "previous"
        return link.resolve() if link.is_symlink() else None

    def _version_of(self, path: Path | None) -> str:
        if path is None:
            return ""
        sig = path.with_name(path.name + ".sig.json")
        try:
            return str(json.loads(sig.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return path.stem

    def highest_serial(self, kind: str) -> tuple[int, str]:
        """(serial, sha256) of the newest update this box accepted for ``kind`` ((0, '') before the first)."""
        try:
            data = json.loads((self._dir(kind) / "serial.json").read_bytes()[:4096])
            serial, sha = data["serial"], data["sha256"]
            if isinstance(serial, int) and not isinstance(serial, bool) and isinstance(sha, str):
                return serial, sha
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0, ""

    def _record_serial(self, kind: str, serial: int, sha256: str, version: str) -> None:
        d = self._dir(kind)
        d.mkdir(parents=True, exist_ok=True)
        self._write_atomic(d / "serial.json", json.dumps({"serial": serial, "sha256": sha256,
                                                           "version": version}).encode())

    def current_version(self, kind: str) -> str:
        """Version string of the running model/config ('' before the first update)."""
        return self._version_of(self.current_path(kind))

    def audit_entries(self) -> list[dict]:
        """The update audit's entries, oldest first (a line torn by a power cut while appending is skipped).

        Raises
        ------
        appliance.jsonl.JsonlError
            When a line other than a torn last one is damaged.
        """
        if not self.audit_path.exists():
            return []
        return read_rows(self.audit_path)

    # ---- audit -----------------------------------------------------------------------------------
    def _audit(self, action: str, **fields: Any) -> None:
        entry = {"time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 "action": action, **fields}
        line = append_row(self.audit_path, entry, sort_keys=True, default=str, fsync=True)
        logger.info("update audit: %s", line)
        if self.on_audit is not None:
            try:
                self.on_audit(entry)
            except Exception:  # reporting must never undo or block an update decision
                logger.exception("on_audit callback failed")

    # ---- apply / roll back -----------------------------------------------------------------------
    def apply(self, kind: str, payload: bytes, signature: dict | str | bytes) -> UpdateResult:
        """Verify, install, health-check and (on failure) roll back one update. Never raises for bad input.

        Parameters
        ----------
        kind : {"model", "config"}
        payload : bytes
            The model file or the config JSON, exactly as signed.
        signature : dict or str or bytes
            The detached manifest (``.sig.json``) from ``bedtime-fleet sign``.
        """
        running = self.current_version(kind) if kind in KINDS else ""
        if kind not in KINDS:
            return self._refuse(kind, running, f"unknown update kind {kind!r}; expected one of {sorted(KINDS)}")
        limit = MAX_CONFIG_PAYLOAD_BYTES if kind == "config" else MAX_PAYLOAD_BYTES
        if not isinstance(payload, (bytes, bytearray)) or len(payload) > limit:
            return self._refuse(kind, running, f"payload missing or larger than {limit} bytes")
        if isinstance(signature, (str, bytes)) and len(signature) > MAX_MANIFEST_CHARS:
            return self._refuse(kind, running, f"manifest longer than {MAX_MANIFEST_CHARS} characters")
        try:
            manifest = verify_manifest(bytes(payload), signature, self.public_key_pem, kind=kind)
            highest, highest_sha = self.highest_serial(kind)
            check_binding(manifest, box_id=self.box_id, groups=self.box_groups, now=self.clock(),
                          highest_serial=highest, highest_sha256=highest_sha)
        except SignatureError as e:
            return self._refuse(kind, running, f"signature check failed: {e}")
        except RecursionError:
            return self._refuse(kind, running, "signature check failed: manifest nested too deeply")
        version, sha = manifest["version"], manifest["sha256"]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", version):
            return self._refuse(kind, running, f"version {version[:80]!r} is not a safe file name", sha256=sha)
        ignored: list = []
        if kind == "config":
            from appliance.protocol.boxconfig import ConfigError, validate_config

            try:
                doc = json.loads(payload)
                checked = (self.check_config or validate_config)(doc)
                ignored = checked if isinstance(checked, list) else []
            except (ConfigError, ValueError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:400]
                return self._refuse(kind, running, f"config invalid: {why}", version=version, sha256=sha)
        card = manifest.get("model_card")
        if kind == "model":
            if not isinstance(card, dict):
                return self._refuse(kind, running, "model manifest carries no model_card: sign the model with its "
                                    "model_card.json (bedtime-fleet sign)", version=version, sha256=sha)
            if card.get("sha256") != sha:
                return self._refuse(kind, running, f"model card sha256 {card.get('sha256')!r} is not the model's "
                                    f"sha256 {sha}: the card belongs to another model", version=version, sha256=sha)
        self._record_serial(kind, manifest["serial"], sha, version)  # from now on nothing older is accepted
        self._audit("update.verified", kind=kind, version=version, sha256=sha, key_id=manifest["key_id"],
                    serial=manifest["serial"], **({"ignored_local_keys": ignored} if ignored else {}))

        d = self._dir(kind)
        versions = d / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        stem = f"{version}-{sha[:12]}"
        target = versions / stem / f"{stem}.tflite" if kind == "model" else versions / f"{stem}{KINDS[kind]}"
        if self.current_path(kind) == target.resolve() and target.exists():
            self._audit("update.unchanged", kind=kind, version=version, sha256=sha)
            return UpdateResult(True, "applied", kind, version, sha, running_version=version,
                                previous_version=self.previous_version(kind), reason="already running")
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "model":  # the card first: a model file in place always has its card beside it
            self._write_atomic(target.with_name("model_card.json"), json.dumps(card, indent=2).encode())
        self._write_atomic(target, bytes(payload))
        self._write_atomic(target.with_name(target.name + ".sig.json"), json.dumps(manifest).encode())
        old = self.current_path(kind)
        if old is not None and old != target.resolve():
            self._switch(d / "previous", old)
        self._switch(d / "current", target)
        self._audit("update.installed", kind=kind, version=version, sha256=sha, previous_version=self._version_of(old))

        health = self._run_health_check(kind, target)
        if not health.ok:
            self._audit("update.health_failed", kind=kind, version=version, sha256=sha,
                        checks=health.checks, detail=health.detail)
            self._restore(kind, old)
            restored = self.current_version(kind)
            self._audit("update.rolled_back", kind=kind, failed_version=version, running_version=restored)
            return UpdateResult(False, "rolled_back", kind, version, sha, running_version=restored,
                                previous_version=restored, reason=health.detail or "health check failed", health=health)
        self._prune(kind)
        self._audit("update.applied", kind=kind, version=version, sha256=sha, checks=health.checks)
        return UpdateResult(True, "applied", kind, version, sha, running_version=version,
                            previous_version=self._version_of(old), health=health)

    def previous_version(self, kind: str) -> str:
        return self._version_of(self.previous_path(kind))

    def rollback(self, kind: str, *, reason: str = "requested") -> UpdateResult:
        """Switch back to the previous version of ``kind`` (e.g. when the daemon's later checks fail)."""
        current, previous = self.current_path(kind), self.previous_path(kind)
        if previous is None or not previous.exists():
            self._audit("update.rollback_impossible", kind=kind, reason=reason)
            return UpdateResult(False, "refused", kind, running_version=self._version_of(current),
                                reason="no previous version to roll back to")
        self._switch(self._dir(kind) / "current", previous)
        (self._dir(kind) / "previous").unlink()
        self._audit("update.rolled_back", kind=kind, failed_version=self._version_of(current),
                    running_version=self._version_of(previous), reason=reason)
        return UpdateResult(True, "rolled_back", kind, running_version=self._version_of(previous), reason=reason)

    def health_check(self, kind: str) -> HealthReport:
        """Run the health check on the version in use."""
        path = self.current_path(kind)
        if path is None:
            return HealthReport(False, {}, f"no {kind} installed by an update")
        return self._run_health_check(kind, path)

    # ---- internals -------------------------------------------------------------------------------
    def _refuse(self, kind: str, running: str, reason: str, *, version: str = "", sha256: str = "") -> UpdateResult:
        kind, reason, version, sha256 = str(kind)[:32], str(reason)[:600], str(version)[:64], str(sha256)[:64]
        self._audit("update.refused", kind=kind, version=version, sha256=sha256, reason=reason)
        logger.warning("update refused (%s): %s", kind, reason)
        return UpdateResult(False, "refused", kind, version, sha256, running_version=running,
                            previous_version=running, reason=reason)

    def _run_health_check(self, kind: str, path: Path) -> HealthReport:
        try:
            report = self.health_check_fn(kind, path)
        except Exception as e:  # a crashing check is a failed check
            logger.exception("health check raised")
            return HealthReport(False, {}, f"health check raised {type(e).__name__}: {e}")
        return report if isinstance(report, HealthReport) else HealthReport(False, {}, "health check gave no report")

    def _restore(self, kind: str, old: Path | None) -> None:
        d = self._dir(kind)
        if old is not None:
            self._switch(d / "current", old)
            # `previous` stays pointing at the restored version's predecessor? No: it pointed at `old`
            # itself, which is now current; drop it so a later rollback cannot "roll back" to itself.
            prev = d / "previous"
            if prev.is_symlink() and prev.resolve() == old.resolve():
                prev.unlink()
        else:
            (d / "current").unlink(missing_ok=True)
        _fsync_dir(d)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    @staticmethod
    def _switch(link: Path, target: Path) -> None:
        """Point ``link`` at ``target`` atomically (new symlink, then rename over the old one)."""
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), tmp)
        os.replace(tmp, link)
        _fsync_dir(link.parent)

    def _prune(self, kind: str) -> None:
        versions = self._dir(kind) / "versions"
        keep = {p for p in (self.current_path(kind), self.previous_path(kind)) if p is not None}
        if kind == "model":  # one folder per model version (model, manifest, card)
            keep_dirs = {p.parent for p in keep}
            old_dirs = sorted((d for d in versions.iterdir() if d.is_dir() and d.resolve() not in keep_dirs),
                              key=lambda d: d.stat().st_mtime, reverse=True)
            for d in old_dirs[self.keep_versions:]:
                shutil.rmtree(d, ignore_errors=True)
            return
        old = sorted((p for p in versions.glob(f"*{KINDS[kind]}")
                      if p.resolve() not in keep and not p.name.endswith(".sig.json")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
        for p in old[self.keep_versions:]:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".sig.json").unlink(missing_ok=True)


# ---- the `update` command -------------------------------------------------------------------------
def handle_update_command(manager: UpdateManager, args: dict) -> dict:
    """The box's handler for ``cmd/update``: apply and return the :class:`UpdateResult` as a dict.

    A refused or rolled-back update is still a *handled* command: the result says ``ok: false`` and why,
    so the clinic's rollout sees the health report rather than a bare error.
    """
    try:
        kind, payload, manifest = decode_update_args(args)
    except (KeyError, ValueError) as e:
        return manager._refuse(str(args.get("kind", "")), "", f"bad update arguments: {e}").to_dict()
    return manager.apply(kind, payload, manifest).to_dict()


def attach_to_link(manager: UpdateManager, link: BoxLink) -> None:
    """Wire updates into a box's :class:`appliance.mqtt.BoxLink` (what the daemon calls once at start):
    ``cmd/update`` applies through ``manager``, and every audit entry also goes to the clinic as an
    ``update_audit`` event (QoS 1, through the outbox)."""
    previous = manager.on_audit

    def report(entry: dict) -> None:
        if previous is not None:
            previous(entry)
        # "kind" is the event's own field in the MQTT schema; the update's kind travels as update_kind.
        link.publish_event("update_audit", **{("update_kind" if k == "kind" else k): v
                                              for k, v in entry.items() if k != "time_utc"})

    def on_update(args: dict) -> dict:
        result = handle_update_command(manager, args)
        if result["kind"] == "config" and result["state"] in ("applied", "rolled_back"):
            # The retained status carries the running config version; refresh it (as BoxLink does after a
            # retained-topic config) so the fleet view does not fall back to the old one.
            link.config_version = result["running_version"] or None
            status = getattr(link, "_status", None)
            if isinstance(status, dict) and status.get("state"):
                link.publish_status(**status)
        return result

    manager.on_audit = report
    link.on_command("update", on_update)
