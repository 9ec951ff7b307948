"""The ``update`` command's wire format: what kinds there are, how big each may be, and how its arguments carry a
payload and its signed manifest.

The clinic builds the arguments (:func:`encode_update_args`: the console's config push and rollouts, the CLI), the
box takes them apart (:func:`decode_update_args`) and refuses anything over these bounds before verifying a byte,
and the console refuses an upload the boxes would refuse (its request limit is built from the same numbers). The
command's argument spec is :data:`appliance.protocol.commands.COMMANDS` ``["update"]``; the signature inside the
manifest is :mod:`appliance.protocol.signing`.
"""
from __future__ import annotations

import base64
import binascii
import json

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Largest update the box accepts (a stage model is ~20 kB; this bounds a hostile or broken upload)."""
MAX_MANIFEST_CHARS = 1024 * 1024
"""Longest manifest (JSON text) the ``update`` command takes: the shipped stage model's, with its model card,
is ~16 kB; a card may grow (more features, a bigger transition table) by far before this bound."""
MAX_CONFIG_PAYLOAD_BYTES = 256 * 1024
"""Largest config update (a full configuration is ~3 kB)."""


def b64_len(n: int) -> int:
    """Characters of base64 for ``n`` bytes (with line breaks some encoders add: 1 in 64)."""
    return (n + 2) // 3 * 4 * 65 // 64 + 4


def encode_update_args(kind: str, payload: bytes, manifest: dict) -> dict:
    """The ``update`` command's arguments (the clinic side builds these).

    Parameters
    ----------
    kind : str
        ``"model"`` or ``"config"`` (:data:`appliance.protocol.signing.KINDS`).
    payload : bytes
        The file the manifest signs.
    manifest : dict
        The detached signed manifest (:func:`appliance.protocol.signing.sign_bytes`).

    Returns
    -------
    dict
        ``kind``, ``payload_b64`` (standard base64) and ``manifest`` (its JSON text).
    """
    return {"kind": kind, "payload_b64": base64.b64encode(payload).decode(), "manifest": json.dumps(manifest)}


def decode_update_args(args: dict) -> tuple[str, bytes, str]:
    """(kind, payload bytes, manifest JSON) from the ``update`` command's arguments.

    Raises
    ------
    KeyError
        When an argument is missing.
    ValueError
        When ``payload_b64`` is not valid base64.
    """
    try:
        payload = base64.b64decode(args["payload_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("payload_b64 is not valid base64") from None
    return args["kind"], payload, args["manifest"]
