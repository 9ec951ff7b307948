"""Send commands to Home Assistant's websocket API and print the results as JSON (one list).

Run with the Home Assistant venv's Python (it has aiohttp); the interop tests call it as a subprocess so the
project's own venv needs no websocket client:

    build/ha-venv/bin/python tests/interop/ha_ws.py ws://127.0.0.1:8123/api/websocket TOKEN '[{"type": ...}]'

Some things Home Assistant keeps only behind its websocket API (persistent notifications, the device
registry's full entries); REST covers the rest.
"""
from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def run(url: str, token: str, commands: list[dict], *, timeout_s: float = 60.0) -> list[dict]:
    """Authenticate, send each command with its own id, return each ``result`` message in order."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url, timeout=timeout_s) as ws:
        hello = await ws.receive_json(timeout=timeout_s)
        if hello.get("type") != "auth_required":
            raise RuntimeError(f"unexpected greeting: {hello}")
        await ws.send_json({"type": "auth", "access_token": token})
        auth = await ws.receive_json(timeout=timeout_s)
        if auth.get("type") != "auth_ok":
            raise RuntimeError(f"authentication refused: {auth}")
        out = []
        for i, cmd in enumerate(commands, start=1):
            await ws.send_json({"id": i, **cmd})
            while True:
                msg = await ws.receive_json(timeout=timeout_s)
                if msg.get("id") == i and msg.get("type") == "result":
                    out.append(msg)
                    break
        return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: ha_ws.py WS_URL TOKEN COMMANDS_JSON")
    print(json.dumps(asyncio.run(run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))))
