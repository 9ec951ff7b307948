"""Signed model/config rollouts: start one (operator; an upload, or a file the console signs), follow them.

The upload is the one request whose body may be large (``settings.max_request_bytes``), so who is asking
is settled before a byte of it is read or spooled: its dependencies (an operator's session, a same-site
request) run first, and the route declares no form fields, so FastAPI does not read the body for it. The
CSRF token, in the body, is checked once the form is parsed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.fleet import auth
from appliance.fleet.rollout import RolloutRunner, create_rollout
from appliance.fleet.web.deps import VERSION_RE, ConsoleDep, CurrentUser, check_csrf, require_role, same_site
from appliance.fleet.web.notify import NotifyingDB
from appliance.fleet.web.state import Console
from appliance.fleet.web.templating import render
from appliance.protocol.ids import BOX_ID_RE
from appliance.protocol.signing import SignatureError, parse_manifest, sign_bytes
from appliance.protocol.updates import MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES

logger = logging.getLogger(__name__)
router = APIRouter()

#: The path of the upload, which alone may carry up to ``settings.max_request_bytes``.
UPLOAD_PATH = "/rollouts"
MAX_UPLOAD_BYTES = MAX_PAYLOAD_BYTES  # what a box accepts; a larger upload could only be refused by every box
#: The upload form's fields: text and files.
TEXT_FIELDS = ("kind", "version", "canary", "rest", "csrf_token")
FILE_FIELDS = ("payload", "manifest")


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    db = console.db
    boxes = db.list_boxes()
    return render(request, "rollouts.html", user, rollouts=db.list_rollouts(), boxes=boxes, error=None,
                  canary_default=",".join(b["box_id"] for b in boxes if b["group_name"] == "canary"),
                  can_sign=console.signing_key is not None, last_event=db.last_live_event_id())


@router.post(UPLOAD_PATH, response_class=HTMLResponse)
async def start_rollout(request: Request,
                        user: Annotated[auth.User, Depends(require_role("operator", action="rollout"))],
                        _same_site: Annotated[None, Depends(same_site)], console: ConsoleDep) -> Response:
    # Only now is the body read (bounded by the middleware): the dependencies above have run.
    try:
        form = await request.form(max_files=2, max_fields=8)
    except HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed multipart body
        raise HTTPException(status_code=400, detail="malformed form") from e
    try:
        fields = {k: form.get(k) for k in TEXT_FIELDS}
        texts = {k: v if isinstance(v, str) else "" for k, v in fields.items()}
        files = {k: form.get(k) for k in FILE_FIELDS}
        uploads = {k: v if hasattr(v, "file") and hasattr(v, "filename") else None for k, v in files.items()}
        return await anyio.to_thread.run_sync(lambda: _start_rollout(
            request, console, user, kind=texts["kind"], version=texts["version"], canary=texts["canary"],
            rest=texts["rest"], csrf_token=texts["csrf_token"], payload=uploads["payload"],
            manifest=uploads["manifest"]))
    finally:
        await form.close()


def _box_list(text: str) -> list[str]:
    return [b.strip() for b in text.replace("\n", ",").split(",") if b.strip()]


def _start_rollout(request: Request, console: Console, user: auth.User, *, kind: str, version: str, canary: str,
                   rest: str, csrf_token: str, payload: UploadFile | None, manifest: UploadFile | None) -> Response:
    check_csrf(request, console, csrf_token)
    db, signing_key = console.db, console.signing_key

    def again(error: str, status: int = 400) -> HTMLResponse:
        boxes = db.list_boxes()
        return render(request, "rollouts.html", user, status_code=status, rollouts=db.list_rollouts(),
                      boxes=boxes, error=error, canary_default=canary, can_sign=signing_key is not None,
                      last_event=db.last_live_event_id())

    if kind not in ("model", "config"):
        return again("kind must be model or config")
    if len(canary) > 20_000 or len(rest) > 200_000:
        return again("box lists too long")
    canary_ids, rest_ids = _box_list(canary), _box_list(rest)
    if rest.strip() == "*":
        # "*": every other box that is online now; an offline box would only time out and stop it.
        rest_ids = [b["box_id"] for b in db.list_boxes() if b["box_id"] not in canary_ids and b["online"]]
    bad = [b for b in canary_ids + rest_ids if not BOX_ID_RE.match(b) or db.get_box(b) is None]
    if bad:
        return again(f"unknown box id(s): {', '.join(bad[:10])}")
    if not canary_ids:
        return again("choose at least one canary box")
    if payload is None or not payload.filename:
        return again("choose the model or config file")
    data = payload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES or not data:
        return again("file empty or too large")
    if manifest is not None and manifest.filename:
        try:
            man = parse_manifest(manifest.file.read(MAX_MANIFEST_CHARS))
        except SignatureError as e:
            return again(f"signature manifest: {e}")
    elif signing_key is not None:
        version = version.strip()
        if not VERSION_RE.match(version):
            return again("version: use letters, digits, '.', '_', '+' and '-' (max 64)")
        # bound to exactly the boxes of this rollout
        man = sign_bytes(data, signing_key, kind=kind, name=Path(payload.filename).name[:128], version=version,
                         boxes=canary_ids + rest_ids)
    else:
        return again("upload the .sig.json manifest from `bedtime-fleet sign` (this console holds no key)")
    if console.channel is None:
        return again("not connected to the broker; nothing was sent", 503)
    try:
        rid = create_rollout(db, kind=kind, payload=data, manifest=man, canary=canary_ids, rest=rest_ids,
                             created_by=user.username, public_key_pem=console.public_pem)
    except (SignatureError, ValueError) as e:
        return again(f"refused: {e}")
    settings = console.settings
    runner = RolloutRunner(NotifyingDB(db, console.notifier), console.channel, timeout_s=settings.rollout_health_timeout_s,
                           batch_size=settings.rollout_batch_size, actor=f"rollout:{user.username}")
    console.workers.submit(_run_logged, runner, rid)
    console.notifier.notify()
    return RedirectResponse(f"/rollouts/{rid}", status_code=303)


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: int, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    ro = console.db.get_rollout(rollout_id)
    if ro is None:
        raise HTTPException(status_code=404, detail="no such rollout")
    return render(request, "rollout.html", user, ro=ro, last_event=console.db.last_live_event_id())


@router.get("/fragments/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_fragment(request: Request, rollout_id: int, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    ro = console.db.get_rollout(rollout_id)
    if ro is None:
        raise HTTPException(status_code=404, detail="no such rollout")
    return render(request, "_rollout.html", user, ro=ro)


def _run_logged(runner: RolloutRunner, rollout_id: int) -> None:
    try:
        runner.run(rollout_id)
    except Exception:  # noqa: BLE001 - a crashed rollout must be visible, not silently lost
        logger.exception("rollout %d crashed", rollout_id)
        runner.db.set_rollout_state(rollout_id, "stopped", "internal error; see the console log", finished=True)
        runner.db.audit("console", "rollout.crashed", f"rollout:{rollout_id}")
