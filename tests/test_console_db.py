"""The console's database on SQLite and on a real PostgreSQL: migrations, the fleet view, audit, rollouts."""
from __future__ import annotations

import pytest
from sqlalchemy import inspect

from appliance.fleet import db as fleetdb
from appliance.fleet.db import FleetDB
from tests.postgres import db_url_for

INJECTIONS = ["'; DROP TABLE boxes; --", "\" OR 1=1 --", "<script>alert(1)</script>", "Robert'); DELETE FROM users;--"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request, tmp_path)


def test_migrations_versioned_and_idempotent(db_url):
    engine = fleetdb.make_engine(db_url)
    assert fleetdb.current_version(engine) == 0
    assert fleetdb.migrate(engine) == [m[0] for m in fleetdb.MIGRATIONS]
    assert fleetdb.current_version(engine) == fleetdb.SCHEMA_VERSION
    assert fleetdb.migrate(engine) == []  # a second start changes nothing
    tables = set(inspect(engine).get_table_names())
    assert {"schema_migrations", "users", "boxes", "alerts", "reports", "audit_log", "rollouts",
            "rollout_targets", "config_pushes", "live_events"} <= tables
    engine.dispose()


def test_upgrade_from_version_1(db_url):
    """A database left at migration 1 by an older console is brought up to date, data kept."""
    engine = fleetdb.make_engine(db_url)
    saved = fleetdb.MIGRATIONS[:]
    try:
        fleetdb.MIGRATIONS[:] = saved[:1]
        assert fleetdb.migrate(engine) == [1]
    finally:
        fleetdb.MIGRATIONS[:] = saved
    db = FleetDB(db_url, migrate_schema=False)
    db.upsert_box("old-box", firmware="0.9")
    assert fleetdb.migrate(engine) == [2]
    assert FleetDB(db_url).get_box("old-box")["firmware"] == "0.9"
    engine.dispose()


def test_fleet_view_alerts_reports_live_feed(db_url):
    db = FleetDB(db_url)
    db.set_box_online("b1", True, firmware="1.2", model_version="stager s1")
    db.set_box_online("b1", True, firmware="1.2")  # no change of online state: no second live event
    db.set_box_online("b2", False)
    kinds = [e["kind"] for e in db.live_events_after(0)]
    assert kinds == ["box", "box"]
    assert db.fleet_counts() == {"total": 2, "online": 1, "offline": 1}
    aid = db.add_alert("b1", severity="warning", title="Loop", message="REM loop", payload={"p_loop": 0.9})
    assert db.get_alert(aid)["payload"] == {"p_loop": 0.9}
    assert db.live_events_after(0)[-1]["ref_id"] == aid
    db.add_report("b1", "2026-11-22", {"hypnogram": [0, 2, 4]})
    db.add_report("b1", "2026-11-22", {"hypnogram": [0, 2, 4, 4]})  # re-sent report replaces, not duplicates
    assert [r["payload"]["hypnogram"] for r in db.reports_for_box("b1")] == [[0, 2, 4, 4]]
    db.close()


def test_injection_strings_stored_verbatim(db_url):
    db = FleetDB(db_url)
    for i, s in enumerate(INJECTIONS):
        db.upsert_box(f"box{i}", firmware=s, group_name=s[:32])
        db.add_alert(f"box{i}", severity="info", title=s, message=s, payload={"x": s})
        db.audit(s, s, s, {"s": s})
    assert len(db.list_boxes()) == len(INJECTIONS)
    assert [b["firmware"] for b in db.list_boxes()] == INJECTIONS
    assert {a["title"] for a in db.recent_alerts()} == set(INJECTIONS)
    assert db.audit_entries(action_prefix="'; DROP")[0]["actor"] == INJECTIONS[0]
    assert db.audit_entries(action_prefix="%") == []  # LIKE wildcards are escaped, not interpreted
    db.close()


def test_rollout_records(db_url):
    db = FleetDB(db_url)
    rid = db.add_rollout(kind="model", name="m.tflite", version="2", sha256="ab" * 32, manifest={"k": 1},
                         payload=b"\x00\x01" * 1000, created_by="op", canary=["c1"], rest=["r1", "r2"])
    db.set_target_state(rid, "c1", "healthy", "ok")
    db.set_rollout_state(rid, "stopped", "because", finished=True)
    ro = db.get_rollout(rid, with_payload=True)
    assert ro["payload"] == b"\x00\x01" * 1000 and ro["finished_at"] is not None
    assert [(t["box_id"], t["phase"], t["state"]) for t in ro["targets"]] == \
        [("c1", "canary", "healthy"), ("r1", "rest", "pending"), ("r2", "rest", "pending")]
    assert "payload" not in db.list_rollouts()[0]
    db.close()


def test_two_instances_share_one_database(db_url):
    """Two console processes on one database (the PostgreSQL scale-out): both migrate safely, and an
    alert ingested by one appears in the other's live feed."""
    a, b = FleetDB(db_url), FleetDB(db_url)
    start = b.last_live_event_id()
    a.add_alert("bx", severity="critical", title="t", message="m", payload={})
    assert [e["kind"] for e in b.live_events_after(start)] == ["alert"]
    a.close()
    b.close()
