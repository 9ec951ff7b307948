"""The console's routes, one router per concern; :data:`ROUTERS` is what the app includes."""
from __future__ import annotations

from appliance.fleet.web.routes import auth, boxes, config_push, live, pages, rollouts

ROUTERS = (auth.router, pages.router, boxes.router, config_push.router, rollouts.router, live.router)
