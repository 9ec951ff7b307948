"""Two console instances, one PostgreSQL, one shared-subscription group: the broker splits the boxes'
messages between them, nothing is stored twice, and both show everything."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.console_helpers import add_staff, console_settings, create_app, login, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_two_instances_share_ingest_and_database(tmp_path, broker, postgres):
    url = postgres.new_database()
    apps = []
    for name in ("a", "b"):
        settings = console_settings(url, tmp_path, mqtt_host=broker.host, mqtt_port=broker.port,
                                    share_group="clinic-consoles", secret_key="shared-session-key-" + "x" * 32)
        apps.append(create_app(settings))
    add_staff(apps[0].state.db)
    with TestClient(apps[0]) as ca, TestClient(apps[1]) as cb:
        from appliance.mqtt import BoxLink

        link = BoxLink(box_id="ward-9", host=broker.host, port=broker.port, outbox_path=tmp_path / "outbox.db",
                       firmware_version="1.4.2", model_versions={"stager": "s1"})
        link.start()
        try:
            assert link.wait_connected(10)
            for i in range(20):
                link.publish_alert(title=f"Loop {i}", message="REM loop", severity="warning")
            assert link.wait_delivered(10)
            db = apps[0].state.db
            wait_for(lambda: len(db.recent_alerts(limit=100)) >= 20, 15)
        finally:
            link.stop()
        titles = sorted(a["title"] for a in db.recent_alerts(limit=100))
        assert titles == sorted(f"Loop {i}" for i in range(20))  # each alert stored exactly once
        got = [app.state.ingest.stats["alert"] for app in apps]
        assert sum(got) == 20 and min(got) > 0, got  # the broker split them between the instances
        # one login works on both instances (shared session key, shared users), and both show all 20
        login(ca, "victor")
        cb.cookies.update(dict(ca.cookies))
        for client in (ca, cb):
            page = client.get("/alerts").text
            assert all(f"Loop {i}<" in page for i in range(20))
    for app in apps:
        app.state.db.close()
