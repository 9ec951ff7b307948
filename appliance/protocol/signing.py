"""Ed25519 signatures for model files and configs (the clinic signs; the box verifies).

``bedtime-fleet keys`` makes a keypair; ``bedtime-fleet sign FILE`` writes ``FILE.sig.json``, a detached
*manifest* the box checks before it applies anything::

    {"schema": "bedtime.signature/2", "kind": "model", "name": "stager.tflite", "version": "2026.11.2",
     "sha256": "<hex of the file>", "size_bytes": 41234, "signed_at": "2026-11-23T18:00:00Z",
     "boxes": ["box-0007"], "groups": ["canary"], "serial": 1795456800123456,
     "expires_at": "2026-12-07T18:00:00Z",
     "key_id": "<first 16 hex of sha256(raw public key)>", "signature": "<base64 Ed25519 signature>",
     "model_card": {...}}

Every manifest is bound (all signed): to the boxes and/or groups it is for (``boxes``, ``groups``: a box applies
it only when it is named or is in a named group, ``box.groups`` in its own file), to a ``serial`` that grows with
every signature (default: microseconds since 1970 at signing; a box refuses a serial below the highest it has
accepted for that kind, so an older update cannot be replayed to roll it back), and to a lifetime
(``expires_at``; a box refuses an expired manifest, one signed in the future, or one living longer than
:data:`MAX_LIFETIME_S`). The box's side of these checks is :func:`check_binding`.

A model's manifest also carries its ``model_card`` (the ``model_card.json`` object the box's stager needs:
standardisation constants, context length, transition matrix, and the model's own ``sha256``), so an update
delivers the model and its card together. The signature covers every other field of the manifest (canonical JSON: sorted keys, no spaces), so the
kind and version are signed too: a signed config cannot be replayed as a model, nor an old version
passed off as a new one. The crypto is ``cryptography``'s Ed25519; nothing here is hand-rolled.

The box side is :mod:`appliance.updates`; it needs only :func:`verify_manifest` and the public key PEM.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.protocol.ids import BOX_ID_RE
from appliance.protocol.updates import MAX_CONFIG_PAYLOAD_BYTES, MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES
from appliance.protocol.userfiles import (MAX_KEY_FILE_BYTES, UserFileError, parse_json, read_user_file, read_user_text,
                                         replace_file)

SCHEMA = "bedtime.signature/2"
"""Manifest format; /1 (no box or group, serial or expiry) is refused."""
KINDS = ("model", "config")
PASSPHRASE_ENV = "BEDTIME_SIGNING_PASSPHRASE"

DEFAULT_LIFETIME_S = 14 * 86400
"""How long a manifest stays valid unless the signer says otherwise (seconds): two weeks for a rollout."""
MAX_LIFETIME_S = 366 * 86400
"""Longest lifetime a box accepts (seconds): a signature is never good forever."""
MAX_CLOCK_SKEW_S = 600
"""How far in the future a ``signed_at`` may be (seconds) before a box refuses it: clocks differ a little."""
AUDIENCE_RE = BOX_ID_RE
"""Box ids and group names in a manifest's audience follow the one box-id rule."""
MAX_AUDIENCE = 10_000
"""Most boxes plus groups one manifest may name."""
_last_serial = 0
_serial_lock = threading.Lock()


def next_serial() -> int:
    """A serial above every earlier one from this signer: microseconds since 1970, strictly increasing here."""
    global _last_serial
    with _serial_lock:
        _last_serial = max(time.time_ns() // 1000, _last_serial + 1)
        return _last_serial


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: object, field: str) -> dt.datetime:
    """A manifest time (``YYYY-MM-DDTHH:MM:SSZ``), aware UTC (raises :class:`SignatureError`)."""
    if not isinstance(s, str) or len(s) > 40:
        raise SignatureError(f"signature manifest field {field!r} must be a UTC time string")
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError(f"signature manifest field {field!r} is not an ISO-8601 time") from None
    if t.tzinfo is None or t.utcoffset() != dt.timedelta(0):
        raise SignatureError(f"signature manifest field {field!r} must be UTC")
    return t


class SignatureError(ValueError):
    """A payload or manifest does not verify. The message says which check failed."""


def generate_keypair(private_path: str | Path, public_path: str | Path, *, passphrase: bytes | None = None) -> str:
    """Write a new Ed25519 keypair as PEM files; return the key id.

    The private key file is created with mode 0600 and is encrypted when ``passphrase`` is given.
    Refuses to overwrite an existing private key (losing it would orphan every box pinned to it).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        raise FileExistsError(f"{private_path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:  # renamed into place (a FIFO there is replaced, not waited on); if that fails, no lone private key stays
        public_path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(public_path, public_pem)
    except BaseException:
        private_path.unlink()
        raise
    return key_id(public_pem)


def load_private_key(path: str | Path, *, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM private key (the passphrase defaults to ``$BEDTIME_SIGNING_PASSPHRASE``)."""
    if passphrase is None and os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV].encode()
    try:  # a regular file of bounded size only (appliance.protocol.userfiles says why)
        pem = read_user_file(path, max_bytes=MAX_KEY_FILE_BYTES)
    except UserFileError as e:
        raise SignatureError(f"private key {path}: {e}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:  # encrypted without a passphrase given, or a passphrase given for a plain key
        raise SignatureError(f"private key {path}: " + (f"encrypted: set ${PASSPHRASE_ENV}" if passphrase is None
                                                        else f"not encrypted, but ${PASSPHRASE_ENV} is set")) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError(f"private key {path}: not a PEM private key (or ${PASSPHRASE_ENV} is wrong)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a PEM public key (as pinned in the box config)."""
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise SignatureError(f"public key is not valid PEM: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("public key is not an Ed25519 key")
    return key


def public_pem_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_pem: str | bytes) -> str:
    """Short fingerprint of a public key: first 16 hex digits of sha256 of its raw 32 bytes."""
    raw = load_public_key(public_pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_bytes(payload: bytes, key: Ed25519PrivateKey, *, kind: str, name: str, version: str,
               boxes: Sequence[str] = (), groups: Sequence[str] = (), serial: int | None = None,
               lifetime_s: float = DEFAULT_LIFETIME_S, model_card: dict | None = None,
               now: dt.datetime | None = None) -> dict:
    """A signed manifest for ``payload``, bound to its boxes or groups, a serial and a lifetime.

    Parameters
    ----------
    payload : bytes
        The model file or config file, exactly as the box will receive it.
    kind : {"model", "config"}
    name : str
        File name, for people reading the manifest.
    version : str
        The version the box will report once it runs this payload.
    boxes, groups : sequence of str
        Who may apply it: these box ids, and boxes in these groups (``box.groups``). At least one of them.
    serial : int, optional
        Must grow with every update of a kind (default :func:`next_serial`).
    lifetime_s : float
        Seconds until it expires (at most :data:`MAX_LIFETIME_S`).
    model_card : dict, optional
        For a model: its ``model_card.json`` object, signed with it (the box refuses a model without one).
        Its ``sha256`` must be the payload's.

    Raises
    ------
    ValueError
        On an unknown kind, a card given for a config, a card whose ``sha256`` is not the payload's, no box or
        group, a malformed box or group name, a serial below 1 or a lifetime out of range.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    boxes, groups = sorted(set(boxes)), sorted(set(groups))
    if not boxes and not groups:
        raise ValueError("name the boxes or groups this update is for (a manifest for every box is not signed)")
    bad = [b for b in boxes + groups if not isinstance(b, str) or not AUDIENCE_RE.match(b)]
    if bad:
        raise ValueError(f"not a box id or group name: {bad[0]!r}")
    if len(boxes) + len(groups) > MAX_AUDIENCE:
        raise ValueError(f"at most {MAX_AUDIENCE} boxes and groups per manifest")
    serial = next_serial() if serial is None else serial
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ValueError("serial must be a positive integer")
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"lifetime must be more than 0 and at most {MAX_LIFETIME_S // 86400} days")
    signed = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    sha256 = hashlib.sha256(payload).hexdigest()
    if model_card is not None:
        if kind != "model":
            raise ValueError("only a model carries a model card")
        if not isinstance(model_card, dict) or model_card.get("sha256") != sha256:
            raise ValueError(f"the model card's sha256 ({model_card.get('sha256') if isinstance(model_card, dict) else None!r}) "
                             f"is not the model's ({sha256}): wrong card for this model")
    manifest = {
        "schema": SCHEMA,
        "kind": kind,
        "name": name,
        "version": str(version),
        "sha256": sha256,
        "size_bytes": len(payload),
        "signed_at": _iso(signed),
        "expires_at": _iso(signed + dt.timedelta(seconds=int(lifetime_s))),
        "boxes": boxes,
        "groups": groups,
        "serial": serial,
        "key_id": key_id(public_pem_of(key)),
    }
    if model_card is not None:
        manifest["model_card"] = model_card
    manifest["signature"] = base64.b64encode(key.sign(_canonical(manifest))).decode()
    return manifest


def sign_file(path: str | Path, key: Ed25519PrivateKey, *, kind: str, version: str,
              boxes: Sequence[str] = (), groups: Sequence[str] = (), serial: int | None = None,
              lifetime_s: float = DEFAULT_LIFETIME_S,
              out: str | Path | None = None, card: str | Path | None = None) -> Path:
    """Sign a file; write and return the manifest path (default ``<file>.sig.json``).

    A model is signed with its model card: ``card``, else the ``model_card.json`` beside the model.

    Raises
    ------
    FileNotFoundError
        For a model with no card (the box would refuse it).
    ValueError
        When the card is not JSON or belongs to another model (its ``sha256`` differs).
    """
    path = Path(path)
    model_card = None
    if kind == "model":
        card_path = Path(card) if card else path.with_name("model_card.json")
        if not card and not card_path.exists():
            raise FileNotFoundError(f"{card_path}: a model is signed with its model card (give --card FILE)")
        try:  # it goes into the manifest, so it is held to the manifest's bound
            model_card = parse_json(read_user_text(card_path, max_bytes=MAX_MANIFEST_CHARS, what="JSON text"))
        except UserFileError as e:
            raise ValueError(f"{card_path}: model card: {e}") from None
    elif card:
        raise ValueError("only a model carries a model card")
    try:
        payload = read_user_file(path, max_bytes=MAX_CONFIG_PAYLOAD_BYTES if kind == "config" else MAX_PAYLOAD_BYTES)
    except UserFileError as e:
        raise ValueError(f"{path}: {e}") from None
    manifest = sign_bytes(payload, key, kind=kind, name=path.name, version=version, boxes=boxes,
                          groups=groups, serial=serial, lifetime_s=lifetime_s, model_card=model_card)
    out = Path(out) if out else path.with_name(path.name + ".sig.json")
    replace_file(out, (json.dumps(manifest, indent=2) + "\n").encode())
    return out


def parse_manifest(data: str | bytes | dict) -> dict:
    """A manifest from JSON text or a dict, with its fields type-checked (raises :class:`SignatureError`)."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as e:  # malformed, not UTF-8, or a number of more than 4300 digits
            raise SignatureError(f"signature manifest is not valid JSON: {e}") from None
        except RecursionError:
            raise SignatureError("signature manifest is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise SignatureError("signature manifest must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise SignatureError(f"signature manifest schema must be {SCHEMA!r} (bound to boxes or groups, a serial "
                             "and an expiry): sign it again with this version of bedtime-fleet sign")
    for field, typ in (("kind", str), ("name", str), ("version", str), ("sha256", str),
                       ("size_bytes", int), ("signature", str), ("key_id", str), ("serial", int),
                       ("boxes", list), ("groups", list), ("signed_at", str), ("expires_at", str)):
        v = data.get(field)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise SignatureError(f"signature manifest field {field!r} missing or not a {typ.__name__}")
    if not all(isinstance(b, str) for b in data["boxes"] + data["groups"]):
        raise SignatureError("signature manifest boxes and groups must be strings")
    if "model_card" in data and not isinstance(data["model_card"], dict):
        raise SignatureError("signature manifest field 'model_card' must be a JSON object")
    return data


def verify_manifest(payload: bytes, manifest: str | bytes | dict, public_pem: str | bytes, *,
                    kind: str | None = None) -> dict:
    """Check that ``payload`` is exactly what the holder of the private key signed; return the manifest.

    Raises
    ------
    SignatureError
        If the manifest is malformed, the signature does not verify against ``public_pem``, the
        payload's sha256 or size differ from the signed ones, or ``kind`` differs from the signed kind.
    """
    m = parse_manifest(manifest)
    public_key = load_public_key(public_pem)
    try:
        signature = base64.b64decode(m["signature"], validate=True)
    except ValueError:
        raise SignatureError("signature is not valid base64") from None
    try:
        public_key.verify(signature, _canonical(m))
    except InvalidSignature:
        raise SignatureError("signature does not verify against the pinned public key") from None
    if kind is not None and m["kind"] != kind:
        raise SignatureError(f"manifest is signed for a {m['kind']!r}, not a {kind!r}")
    if len(payload) != m["size_bytes"] or not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), m["sha256"].encode()):
        raise SignatureError("payload does not match the signed sha256 (tampered or truncated)")
    return m



def check_binding(manifest: dict, *, box_id: str, groups: Sequence[str] = (), now: dt.datetime | None = None,
                  highest_serial: int = 0, highest_sha256: str = "") -> None:
    """The box's checks of a verified manifest's binding: for this box, not expired, not from the future, not
    older than what it already accepted.

    Parameters
    ----------
    manifest : dict
        From :func:`verify_manifest` (its signature already checked).
    box_id : str
        This box's id.
    groups : sequence of str
        This box's groups (``box.groups``).
    now : datetime, optional
        The box's clock (aware UTC).
    highest_serial, highest_sha256 : int, str
        The highest serial this box accepted for the manifest's kind, and that update's sha256: the same one
        again is fine (a retried rollout), anything below or another payload at the same serial is not.

    Raises
    ------
    SignatureError
        Saying which check failed.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if box_id not in manifest["boxes"] and not set(groups) & set(manifest["groups"]):
        names = ", ".join((manifest["boxes"] + [f"group {g}" for g in manifest["groups"]])[:5])
        raise SignatureError(f"signed for other boxes ({names[:200]}), not for {box_id}"
                             + (f" (groups {', '.join(groups)})" if groups else ""))
    signed, expires = parse_time(manifest["signed_at"], "signed_at"), parse_time(manifest["expires_at"], "expires_at")
    if signed > now + dt.timedelta(seconds=MAX_CLOCK_SKEW_S):
        raise SignatureError(f"signed in the future ({manifest['signed_at']}; this box's clock says {_iso(now)})")
    if expires <= now:
        raise SignatureError(f"expired at {manifest['expires_at']} (this box's clock says {_iso(now)})")
    if (expires - signed).total_seconds() > MAX_LIFETIME_S:
        raise SignatureError(f"lifetime longer than {MAX_LIFETIME_S // 86400} days")
    serial = manifest["serial"]
    if serial < highest_serial:
        raise SignatureError(f"older than what this box runs (serial {serial} < {highest_serial}): a replay")
    if serial == highest_serial and highest_sha256 and manifest["sha256"] != highest_sha256:
        raise SignatureError(f"serial {serial} was already used for another {manifest['kind']}")
