"""The config editor and the config push: ``/boxes/<id>/config``.

A pushed config is checked with the box's own schema offline (:func:`appliance.fleet.configcheck.validate_offline`,
never the plain validator, which would read files the config names on *this* host), signed with the clinic
key for this one box and one day, recorded, and sent as the ``update`` command from a worker thread; the
box's answer lands on the push row (and on the page, live) through the bridge.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.fleet import auth
from appliance.fleet.db import utcnow
from appliance.fleet.web.deps import VERSION_RE, Box, ConsoleDep, CurrentUser, csrf_checked, require_role
from appliance.fleet.web.state import Console
from appliance.fleet.web.templating import render
from appliance.protocol.signing import sign_bytes

logger = logging.getLogger(__name__)
router = APIRouter()

CONFIG_PUSH_LIFETIME_S = 86400
"""A config pushed from the editor is signed for one box and one day (it is sent at once)."""
#: Longest config the editor accepts, characters.
MAX_CONFIG_CHARS = 200_000


@router.get("/boxes/{box_id}/config", response_class=HTMLResponse)
def config_page(request: Request, box_id: str, user: CurrentUser, box: Box, console: ConsoleDep) -> HTMLResponse:
    db = console.db
    pushes = db.config_pushes_for_box(box_id, limit=10)
    if pushes:
        text = json.dumps(pushes[0]["body"], indent=2, sort_keys=True)
    else:
        from appliance.protocol.boxconfig import ConfigError, validate_config

        try:
            defaults = validate_config({"box": {"id": box_id}})
        except ConfigError:  # an MQTT box id the config schema does not allow (e.g. with '.')
            defaults = validate_config({})
        text = json.dumps(defaults.to_dict(), indent=2, sort_keys=True)
    return render(request, "config.html", user, box=box, text=text, version="", errors=None, pushes=pushes,
                  can_sign=console.signing_key is not None, last_event=db.last_live_event_id())


@router.post("/boxes/{box_id}/config", response_class=HTMLResponse)
def push_config(request: Request, box_id: str,
                user: Annotated[auth.User, Depends(require_role("operator", action="config:{box_id}"))],
                _csrf: Annotated[None, Depends(csrf_checked)], box: Box, console: ConsoleDep,
                config_json: Annotated[str, Form()] = "", version: Annotated[str, Form()] = "") -> Response:
    from appliance.fleet.configcheck import validate_offline
    from appliance.protocol.boxconfig import ConfigError
    from appliance.protocol.userfiles import UserFileError, parse_json

    db, signing_key = console.db, console.signing_key

    def again(error: str, status: int = 400) -> HTMLResponse:
        return render(request, "config.html", user, status_code=status, box=box, text=config_json, version=version,
                      errors=error, pushes=db.config_pushes_for_box(box_id), can_sign=signing_key is not None,
                      last_event=db.last_live_event_id())

    if len(config_json) > MAX_CONFIG_CHARS:
        return again("config too large")
    version = version.strip() or utcnow().strftime("cfg-%Y%m%dT%H%M%S")
    if not VERSION_RE.match(version):
        return again("version: use letters, digits, '.', '_', '+' and '-' (max 64)")
    try:
        # every way JSON text can fail (nested too deeply, a number of more than 4300 digits: Python's ValueError,
        # which was a 500 here) is one UserFileError naming it
        doc = parse_json(config_json)
        # Never the plain validator here: it would read files the config names on *this* host.
        validate_offline(doc)
    except UserFileError as e:
        return again(str(e))
    except ConfigError as e:
        return again(f"refused by the box's schema: {e}")
    if signing_key is None:
        return again("this console has no signing key (serve --signing-key); boxes accept only signed configs", 409)
    if console.channel is None:
        return again("not connected to the broker; nothing was sent", 503)
    payload = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    # bound to this box, with a short life: it is sent now, and a box refuses it anywhere else or later
    manifest = sign_bytes(payload, signing_key, kind="config", name=f"{box_id}.json", version=version,
                          boxes=[box_id], lifetime_s=CONFIG_PUSH_LIFETIME_S)
    push_id = db.add_config_push(box_id, version, doc, user.username)
    db.audit(user.username, "config.pushed", box_id, {"version": version, "sha256": manifest["sha256"],
                                                       "push_id": push_id})
    console.notifier.notify()
    console.workers.submit(send_push, console, box_id=box_id, push_id=push_id, version=version, payload=payload,
                           manifest=manifest)
    return RedirectResponse(f"/boxes/{box_id}/config", status_code=303)


def send_push(console: Console, *, box_id: str, push_id: int, version: str, payload: bytes, manifest: dict) -> None:
    """Send a recorded push as the ``update`` command and record the box's answer (runs in a worker).

    Parameters
    ----------
    console : Console
    box_id : str
    push_id : int
        The push's row (:meth:`FleetDB.add_config_push`).
    version : str
    payload : bytes
        The config file as signed.
    manifest : dict
        Its signature manifest.
    """
    from appliance.protocol.updates import encode_update_args

    try:
        reply = console.channel.request(box_id, "update", encode_update_args("config", payload, manifest),
                                        timeout_s=console.settings.command_timeout_s)
    except TimeoutError:
        reply = None
    except Exception as e:  # noqa: BLE001 - recorded on the push, not raised into a worker
        reply = {"ok": False, "error": {"code": "send_failed", "message": f"{type(e).__name__}: {e}"}}
    console.bridge.on_config_reply(push_id, reply)
    state = (console.db.get_config_push(push_id) or {}).get("state", "?")
    console.db.audit("console", f"config.{state.replace(' ', '_')}", box_id, {"version": version, "push_id": push_id})
