"""Staged rollouts of a signed model or config: canaries first, then the rest in batches.

A rollout is one signed payload (``bedtime-fleet sign``) sent as the ``update`` command
(:mod:`appliance.updates`) to a list of boxes:

1. **canary** phase: every canary box gets the update at once. Each box verifies the signature, installs
   the payload, runs its health check (model loads, self-test passes, stages flowing) and answers with an
   :class:`~appliance.updates.UpdateResult`. A box whose health check fails has already rolled back by
   itself when its answer arrives.
2. If any canary answers anything but a healthy ``applied`` (refused, rolled back, error, or no answer
   within the timeout) the rollout **stops**: the remaining boxes are marked ``skipped`` and never get it.
3. **rest** phase: the other boxes, ``batch_size`` at a time; a failing batch stops the rollout the same way.

Every step is written to the console's audit log (and each box writes its own, see
:class:`~appliance.updates.UpdateManager`), and to the ``rollouts``/``rollout_targets`` tables the web
console shows live.
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Protocol

from appliance.fleet.db import FleetDB
from appliance.protocol.signing import SignatureError, verify_manifest
from appliance.protocol.updates import encode_update_args

logger = logging.getLogger(__name__)


class CommandChannel(Protocol):
    """Sends one command to one box and returns its reply payload (``appliance.protocol.schema.reply_payload``).

    Must raise :class:`TimeoutError` when no reply arrives within ``timeout_s``.
    """

    def request(self, box_id: str, name: str, args: dict, *, timeout_s: float) -> dict: ...


def create_rollout(db: FleetDB, *, kind: str, payload: bytes, manifest: dict, canary: list[str], rest: list[str],
                   created_by: str, public_key_pem: bytes | None = None) -> int:
    """Record a new rollout (state ``pending``); return its id.

    When ``public_key_pem`` is given, the payload must verify against it here, so a wrongly signed upload
    is refused by the console before any box sees it (the boxes check again regardless).

    Raises
    ------
    SignatureError
        The manifest does not verify (only when ``public_key_pem`` is given).
    ValueError
        No canary boxes, a box in both groups, or a model manifest without its signed model card (every box
        would refuse it).
    """
    if not canary:
        raise ValueError("a rollout needs at least one canary box")
    if set(canary) & set(rest):
        raise ValueError(f"boxes in both canary and rest: {sorted(set(canary) & set(rest))}")
    if public_key_pem is not None:
        verify_manifest(payload, manifest, public_key_pem, kind=kind)
    if kind == "model" and not isinstance(manifest.get("model_card"), dict):
        raise ValueError("the model's manifest carries no model_card: sign it with `bedtime-fleet sign` beside its "
                         "model_card.json and upload that .sig.json")
    rid = db.add_rollout(kind=kind, name=str(manifest.get("name", "")), version=str(manifest.get("version", "")),
                         sha256=str(manifest.get("sha256", "")), manifest=manifest, payload=payload,
                         created_by=created_by, canary=canary, rest=rest)
    db.audit(created_by, "rollout.created", f"rollout:{rid}",
             {"kind": kind, "version": manifest.get("version"), "sha256": manifest.get("sha256"),
              "canary": list(canary), "rest": list(rest)})
    return rid


class RolloutRunner:
    """Drives one rollout to its end (blocking; the web console runs it in a worker thread).

    Parameters
    ----------
    db : FleetDB
    channel : CommandChannel
        How commands reach the boxes (the console's MQTT ingest).
    timeout_s : float
        Longest wait for one box's answer (it includes the box's health check), seconds.
    batch_size : int
        Boxes updated at once after the canary phase.
    actor : str
        Name written to the audit log for the runner's own steps.
    """

    def __init__(self, db: FleetDB, channel: CommandChannel, *, timeout_s: float = 60.0, batch_size: int = 10,
                 actor: str = "rollout") -> None:
        self.db, self.channel = db, channel
        self.timeout_s, self.batch_size, self.actor = timeout_s, max(1, batch_size), actor

    def run(self, rollout_id: int) -> str:
        """Run the rollout; return its final state (``completed`` or ``stopped``)."""
        ro = self.db.get_rollout(rollout_id, with_payload=True)
        if ro is None:
            raise KeyError(f"no rollout {rollout_id}")
        if ro["state"] != "pending":
            raise ValueError(f"rollout {rollout_id} is {ro['state']}, not pending")
        target = f"rollout:{rollout_id}"
        args = encode_update_args(ro["kind"], ro["payload"], ro["manifest"])
        canary = [t["box_id"] for t in ro["targets"] if t["phase"] == "canary"]
        rest = [t["box_id"] for t in ro["targets"] if t["phase"] == "rest"]

        self.db.set_rollout_state(rollout_id, "canary", f"updating {len(canary)} canary box(es)")
        self.db.audit(self.actor, "rollout.canary_started", target, {"boxes": canary, "version": ro["version"]})
        failed = self._update_batch(rollout_id, canary, args)
        if failed:
            return self._stop(rollout_id, "canary", failed, pending=rest)
        self.db.audit(self.actor, "rollout.canary_healthy", target, {"boxes": canary})

        self.db.set_rollout_state(rollout_id, "rest", f"updating {len(rest)} more box(es)")
        for i in range(0, len(rest), self.batch_size):
            batch = rest[i:i + self.batch_size]
            self.db.audit(self.actor, "rollout.batch_started", target, {"boxes": batch})
            failed = self._update_batch(rollout_id, batch, args)
            if failed:
                return self._stop(rollout_id, "rest", failed, pending=rest[i + self.batch_size:])
        self.db.set_rollout_state(rollout_id, "completed", f"{len(canary) + len(rest)} box(es) healthy", finished=True)
        self.db.audit(self.actor, "rollout.completed", target, {"boxes": len(canary) + len(rest)})
        return "completed"

    def _stop(self, rollout_id: int, phase: str, failed: dict[str, str], *, pending: list[str]) -> str:
        for box in pending:
            self.db.set_target_state(rollout_id, box, "skipped", "rollout stopped before this box")
        why = "; ".join(f"{b}: {r}" for b, r in sorted(failed.items()))
        self.db.set_rollout_state(rollout_id, "stopped", f"{phase} failed health check: {why}", finished=True)
        self.db.audit(self.actor, "rollout.stopped", f"rollout:{rollout_id}",
                      {"phase": phase, "failed": failed, "skipped": pending})
        logger.warning("rollout %d stopped in %s phase: %s", rollout_id, phase, why)
        return "stopped"

    def _update_batch(self, rollout_id: int, boxes: list[str], args: dict) -> dict[str, str]:
        """Send the update to ``boxes`` at once; return {box: reason} for each that did not end healthy."""
        for box in boxes:
            self.db.set_target_state(rollout_id, box, "sent", "waiting for the box's health report")
        failed: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(boxes)))) as pool:
            futures = {pool.submit(self._update_one, box, args): box for box in boxes}
            for fut in concurrent.futures.as_completed(futures):
                box = futures[fut]
                healthy, detail, result = fut.result()
                self.db.set_target_state(rollout_id, box, "healthy" if healthy else "failed", detail)
                self.db.audit(self.actor, "rollout.box_healthy" if healthy else "rollout.box_failed",
                              f"rollout:{rollout_id}", {"box_id": box, "detail": detail, "result": result})
                if not healthy:
                    failed[box] = detail
        return failed

    def _update_one(self, box: str, args: dict) -> tuple[bool, str, dict]:
        try:
            reply = self.channel.request(box, "update", args, timeout_s=self.timeout_s)
        except TimeoutError:
            return False, f"no answer within {self.timeout_s:.0f} s", {}
        except Exception as e:  # a transport failure for one box must not crash the whole rollout
            logger.exception("update command to %s failed", box)
            return False, f"could not send: {type(e).__name__}: {e}", {}
        if not reply.get("ok"):
            err = reply.get("error") or {}
            return False, f"box refused the command: {err.get('code', 'error')}: {err.get('message', '')}", {}
        result = reply.get("result") or {}
        health = result.get("health") or {}
        checks = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in (health.get("checks") or {}).items())
        if result.get("ok") and result.get("state") == "applied":
            return True, f"running {result.get('running_version', '')}" + (f" ({checks})" if checks else ""), result
        state = result.get("state", "unknown")
        reason = result.get("reason", "")
        running = result.get("running_version", "")
        return False, f"{state}: {reason}" + (f" ({checks})" if checks else "") + \
            (f"; running {running}" if running else ""), result


__all__ = ["CommandChannel", "RolloutRunner", "create_rollout", "SignatureError"]
