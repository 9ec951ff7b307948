"""What the box does with what the clinic sends: its link, the command handlers, pushed and signed configs.

* :func:`make_link`: the box's MQTT link (:class:`appliance.mqtt.BoxLink`) from ``[mqtt]``; the daemon and
  ``bedtime report --publish`` build it here.
* :class:`ClinicCommands`: the handlers of the clinic's commands (``report``, ``set_breather``, ``selftest``,
  ``restart``; their argument specs are :data:`appliance.protocol.commands.COMMANDS`, checked by the link before a handler
  runs), the retained ``config`` topic (authorised, validated, pre-flighted, then kept by
  :class:`appliance.pushed_config.PushedConfigStore` for the next start, the store ``bedtime run`` chooses its
  configuration from), and the signed-update hooks (a signed config's pre-flight; an applied one stored the same way).
* :func:`find_report`: a finished night's report for the ``report`` command.

A config never changes mid-night: a session must not change its limits while it runs.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from appliance import __version__
from appliance.breather import SESSION_STATES
from appliance.night_journal import NightJournal
from appliance.night_pipeline import NO_DATA_FAULT_S, NightPipeline
from appliance.protocol.boxconfig import BoxConfig, split_pushed_config, validate_config
from appliance.pushed_config import PushedConfigStore

if TYPE_CHECKING:  # built here on demand: a box without MQTT or a clinic key never loads them
    from appliance.loop_model import LoopDetector
    from appliance.mqtt import BoxLink
    from appliance.ring import FrameRing
    from appliance.stager import Stager
    from appliance.updates import UpdateManager

logger = logging.getLogger(__name__)

SIGNED_UPDATES_REQUIRED = "signed updates required: use the update command"
"""Why a box with a pinned update key refuses a config on the unsigned retained ``config`` topic."""


def make_link(cfg: BoxConfig, *, model_versions: dict, simulated: bool = False) -> BoxLink:
    """The MQTT link for this box, configured from ``[mqtt]``, validating pushed configs with the box's validator.

    ``simulated`` (the chip simulator instead of the hardware) is carried by every retained status, the last will
    included."""
    from appliance.mqtt import BoxLink, TLSSettings

    m = cfg.mqtt
    tls = None
    if m.tls_ca:
        tls = TLSSettings(ca_file=Path(m.tls_ca), cert_file=Path(m.tls_cert) if m.tls_cert else None,
                          key_file=Path(m.tls_key) if m.tls_key else None)
    password = Path(m.password_file).read_text().strip() if m.password_file else None
    return BoxLink(box_id=cfg.box.id, host=m.host, port=m.port, outbox_path=Path(cfg.box.state_dir) / "outbox.sqlite",
                   tls=tls, username=m.username or None, password=password, firmware_version=__version__,
                   model_versions=model_versions, keepalive_s=m.keepalive_s, config_validator=validate_config,
                   outbox_max_bytes=int(m.outbox_max_mb * 1024 * 1024), status_fields={"simulated": simulated})


def find_report(recording_dir: Path, night: str = "latest", *, exclude: Path | None = None) -> dict:
    """The report of a finished night: the one the daemon wrote that morning (the record), or one rebuilt from the
    night's files when it has none.

    Parameters
    ----------
    recording_dir : Path
        The folder of nights.
    night : str
        ``latest`` or a date ``YYYY-MM-DD`` (the newest night that started that day, UTC).
    exclude : Path, optional
        The night being recorded (never reported).

    Raises
    ------
    ValueError
        No such finished night with a recording, or the named night's files are damaged (one line).
    """
    from appliance.nightfolder import list_nights
    from appliance.report import build_report
    from appliance.report_load import NightError, load_night, read_saved_report

    nights = [n for n in list_nights(recording_dir) if n != exclude]
    if night != "latest":
        nights = [n for n in nights if n.name.startswith(night.replace("-", ""))]
    for d in reversed(nights):
        # a folder without a recording (a failed start of an older version) is passed over for "latest"
        try:
            saved = read_saved_report(d)
            return saved if saved is not None else build_report(load_night(d))
        except NightError as e:
            if night != "latest":
                raise ValueError(str(e)) from None
            logger.warning("report command: skipping %s: %s", d.name, e)
    raise ValueError(f"no finished night {night!r} with a recording on this box")


class ClinicCommands:
    """The clinic's commands and configs, answered for one running night.

    Parameters
    ----------
    cfg : BoxConfig
        The running configuration.
    file_config : BoxConfig
        The box's own file, without the clinic's pushed configuration: a push is merged over this one.
    journal : NightJournal
        Where the night's events go.
    night : NightPipeline
        The running night (its breather switch, outputs, fault and counters).
    ring : FrameRing
        The ring buffer (its counters, for ``selftest``).
    request_restart : callable
        Ends the night so that systemd starts the daemon again (``restart``).
    current_night : callable
        The folder of the night being recorded, or None (``report`` never reports it).

    Attributes
    ----------
    updates : UpdateManager or None
        The signed-update manager when a clinic key is pinned (then the retained ``config`` topic is refused).
    pushed_store : PushedConfigStore
        Where a pushed or signed config waits for the next start.
    """

    def __init__(self, cfg: BoxConfig, *, file_config: BoxConfig, journal: NightJournal, night: NightPipeline,
                 ring: FrameRing, request_restart: Callable[[], None], current_night: Callable[[], Path | None]) -> None:
        self.cfg, self.file_cfg = cfg, file_config
        self.journal, self.night, self.ring = journal, night, ring
        self._request_restart, self._current_night = request_restart, current_night
        self.pushed_store = PushedConfigStore(file_config.box.state_dir)
        self.updates: UpdateManager | None = None
        self.link: BoxLink | None = None

    def open_link(self, link: BoxLink | None, *, stager: Stager, loop_detector: LoopDetector | None,
                  simulated: bool) -> BoxLink | None:
        """The night's link: ``link`` when one is given (tests), else a new one from ``[mqtt]`` (None when MQTT is
        off) that answers the clinic (:meth:`register`, and the signed ``update`` command when a key is pinned) and
        is started here. Home Assistant discovery is sent on every (re)connect, so a family's Home Assistant shows
        the box."""
        if link is None and self.cfg.mqtt.enabled:
            link = make_link(self.cfg, model_versions={"stager": getattr(stager, "sha256", "?")[:12],
                                                       "loops": getattr(loop_detector, "sha256", "?")[:12]},
                             simulated=simulated)
            self.register(link)
            if self.updates is not None:
                from appliance.updates import attach_to_link

                attach_to_link(self.updates, link)
            link.publish_discovery()
            link.start()
        elif link is not None:
            link.publish_discovery()
        return link

    def register(self, link: BoxLink) -> None:
        """Answer the clinic on ``link``: the retained config and the commands."""
        self.link = link
        # Authorisation first, then validation and pre-flight: nothing in a config the box will refuse anyway is
        # looked at, and no config received over MQTT makes the box open a file it names.
        link.config_validator = self.validate_pushed_config
        link.on_config(self.on_pushed_config)
        link.on_command("report", self.report)
        link.on_command("set_breather", self.set_breather)
        link.on_command("restart", self.restart)
        link.on_command("selftest", self.selftest)

    # ---- signed updates -----------------------------------------------------------------------------
    def make_update_manager(self, *, stages_flowing: Callable[[], tuple[bool, str]]) -> UpdateManager | None:
        """The signed-update manager when ``updates.public_key_file`` pins a clinic key (kept as :attr:`updates`),
        else None. Its health check is :func:`appliance.updates.default_health_check` (model loads and runs /
        config validates) plus ``stages_flowing() -> (ok, why)``: the new model or config takes effect at the
        next start (never mid-night), so this checks that installing it left tonight's pipeline staging."""
        if not self.cfg.updates.public_key_file:
            self.updates = None
            return None
        from appliance.config import read_public_key
        from appliance.updates import HealthReport, UpdateManager, default_health_check

        def health_check(kind: str, path: Path) -> HealthReport:
            base = default_health_check(kind, path)
            flowing, why = stages_flowing()
            detail = "; ".join(x for x in (base.detail, "" if flowing else f"stages not flowing: {why}") if x)
            return HealthReport(base.ok and flowing, {**base.checks, "stages_flowing": flowing}, detail)

        self.updates = UpdateManager(self.cfg.box.state_dir, read_public_key(self.cfg.updates.public_key_file),
                                     health_check=health_check, on_audit=self.on_update_audit,
                                     check_config=self.check_signed_config, box_id=self.cfg.box.id,
                                     box_groups=self.cfg.box.groups)
        return self.updates

    # ---- configs ------------------------------------------------------------------------------------
    def _signed_only(self) -> bool:
        return self.updates is not None or bool(self.cfg.updates.public_key_file)

    def validate_pushed_config(self, doc: Any) -> tuple[dict, list[str]]:
        """The link's validator for the unsigned retained ``config`` topic.

        With a pinned clinic key this path is refused before anything in the config is looked at (the link
        reports ``config_rejected`` with this reason): only ``cmd/update``, verified against the key, may change
        the box. Otherwise local-only keys are dropped, the rest merged over the box's own file and pre-flighted
        (:meth:`appliance.pushed_config.PushedConfigStore.check`). Returns (pushable config, ignored keys)."""
        if self._signed_only():
            raise PermissionError(SIGNED_UPDATES_REQUIRED)
        pushable, _merged, ignored = self.pushed_store.check(doc, base=self.file_cfg)
        return pushable, ignored

    def on_pushed_config(self, validated: tuple[dict, list[str]]) -> None:
        """A config the clinic pushed (already authorised, validated and pre-flighted): kept in the state
        directory, applied at the next start."""
        if self._signed_only():
            raise PermissionError(SIGNED_UPDATES_REQUIRED)
        pushable, ignored = validated
        self.pushed_store.store(pushable, version=str(getattr(self.link, "incoming_config_version", "") or "")[:64],
                                source="retained")
        self.journal.event("config_stored", self.night.signal_s(), applies="next start", ignored_local_keys=ignored)

    def check_signed_config(self, doc: Any) -> list[str]:
        """A signed config's pre-flight (run by the update manager after the signature verified, before it is
        installed): local-only keys dropped, merged over the box's file, and the daemon could start with it.
        Returns the ignored local-only keys; raises ConfigError when the daemon could not start with it."""
        _pushable, _merged, ignored = self.pushed_store.check(doc, base=self.file_cfg)
        return ignored

    def on_update_audit(self, entry: dict) -> None:
        """A config applied (or rolled back to) by a signed update becomes the config of the next start, through
        the same state file a pushed config uses (``appliance.cli`` merges it over the TOML file). The pinned key,
        the box's identity, its broker and every key that names a file come only from the box's own file
        (``appliance.config.LOCAL_ONLY_KEYS``)."""
        if entry.get("kind") != "config" or entry.get("action") not in ("update.applied", "update.rolled_back"):
            return
        current = self.updates.current_path("config") if self.updates is not None else None
        if current is not None:
            pushable, _ignored = split_pushed_config(json.loads(current.read_bytes()))
            self.pushed_store.store(pushable, version=self.updates.current_version("config"), source="update")

    # ---- commands -----------------------------------------------------------------------------------
    def report(self, args: dict) -> dict:
        """``report``: a finished night's report (:func:`find_report`)."""
        return find_report(self.cfg.recording_dir, args.get("night", "latest"), exclude=self._current_night())

    def set_breather(self, args: dict) -> dict:
        """``set_breather``: switch the breather on or off (the detector and alerts keep running)."""
        self.night.set_breather_enabled(bool(args["enabled"]))
        return {"enabled": self.night.breather_enabled}

    def restart(self, args: dict) -> dict:
        """``restart``: end the night; systemd starts the daemon again."""
        self.journal.event("restart_requested", self.night.signal_s(), reason=args.get("reason", ""))
        self._request_restart()
        return {"restarting": True}

    def selftest(self, args: dict) -> dict:
        """The self-test that can run while a night is recorded. The chip checks (ID, test signal, noise,
        lead-off, impedance) and driving the light and speaker would take the chip from acquisition and
        stimulate a sleeper, so they are not run: the reply lists them under ``not_checked``
        (``bedtime selftest`` runs them between nights)."""
        from appliance.selftest import _broker_check

        night, checked = self.night, []
        light, sound = night.outputs.levels()
        in_session = night.breather_state() in SESSION_STATES
        checked.append({"name": "outputs_off", "passed": in_session or (light == 0.0 and sound == 0.0),
                        "detail": f"light {light:.3f}, sound {sound:.3f}"
                                  + (" (breather session running)" if in_session else " (no session: must be 0)")})
        age = None if night.last_frames_wall is None else time.monotonic() - night.last_frames_wall
        c = self.ring.counters
        checked.append({"name": "acquisition_running",
                        "passed": age is not None and age <= NO_DATA_FAULT_S and night.fault_active is None,
                        "detail": (f"last frames {age:.1f} s ago" if age is not None else "no frames yet")
                                  + f"; {night.counters['frames']} frames, {int(c.dropped)} dropped, "
                                    f"{night.counters['frames_lost']} lost"
                                  + (f"; fault: {night.fault_active}" if night.fault_active else "")})
        ok, detail = _broker_check(self.cfg, timeout_s=5.0)
        checked.append({"name": "broker", "passed": ok, "detail": detail})
        skipped = "a night is being recorded: the chip stays with acquisition and nothing stimulates the sleeper"
        not_checked = {name: skipped for name in ("chip_id", "test_signal", "noise", "lead_off", "impedance",
                                                  "light_drive", "sound_drive")}
        passed = all(r["passed"] for r in checked)
        self.journal.event("selftest", night.signal_s(), passed=passed, checked=[r["name"] for r in checked])
        return {"passed": passed, "scope": "partial (night in progress)", "checked": checked,
                "not_checked": not_checked}
