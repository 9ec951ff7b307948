"""How ``bedtime-fleet serve`` runs the console app: uvicorn's options, and a server that stops cleanly.

:class:`ConsoleServer` is uvicorn's :class:`uvicorn.Server` whose SIGTERM/SIGINT handling first tells the app's live
event streams to end. uvicorn waits for open connections to close before it runs the app's shutdown, and a staff
member's open dashboard holds a Server-Sent Events stream (``/events``) that ends only when the app says it is
closing (``app.state.closing``): without this, every stop with a dashboard open waited out the graceful timeout and
then printed the cancelled stream's traceback.
"""
from __future__ import annotations

from types import FrameType

import uvicorn


class ConsoleServer(uvicorn.Server):
    """uvicorn's server for the console app (built by :func:`appliance.fleet.web.create_app`)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self.config.app, "state", None)
        if state is not None:
            state.closing = True  # each stream sees it at its next poll (1 s), or at once when woken
            console = getattr(state, "console", None)
            if console is not None:
                console.notifier.notify()  # thread-safe: call_soon_threadsafe on the app's loop
        super().handle_exit(sig, frame)


def uvicorn_options(*, host: str, port: int) -> dict:
    """How ``serve`` runs uvicorn (the tests run the console the same way).

    uvicorn's own ``X-Forwarded-For`` handling is off (by default it believes any client on 127.0.0.1, so
    behind nothing, or on a host shared with others, anyone could name any address and lock it out): the
    app decides from ``settings.trusted_proxies``, and ``request.client`` is always the TCP peer.
    """
    return {"host": host, "port": port, "proxy_headers": False, "log_level": "info", "timeout_graceful_shutdown": 3}
