"""The clinic console's database: boxes, alerts, night reports, users, config pushes, rollouts, audit.

SQLAlchemy 2.x Core, so one code path serves the two supported engines:

* SQLite (:func:`default_database_url`: ``/var/lib/bedtime-clinic/fleet.db``), the embedded default for a
  clinic that runs one console;
* PostgreSQL (``postgresql+psycopg://...``), for a clinic that outgrows one machine: several console
  instances share one database and split the MQTT ingest between them through shared subscriptions.

Every statement is built with SQLAlchemy expressions (bound parameters), never by formatting SQL strings.

Schema migrations are versioned by hand rather than with Alembic: the schema is small, and a numbered
list of plain functions plus a ``schema_migrations`` table is something a newcomer can read in one go.
:func:`migrate` applies the missing ones in order, each in its own transaction; on PostgreSQL it takes an
advisory lock first so two console instances starting together do not both migrate.

Times are stored as timezone-aware UTC (:func:`utcnow`); SQLite hands them back naive, so every reader
goes through :func:`as_utc`.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from appliance.protocol.userfiles import UserFileError

logger = logging.getLogger(__name__)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# ---- migration 1: the fleet view, people and the audit log ---------------------------------------
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    # Bumped on logout / password change: every session cookie carrying an older epoch stops working,
    # which is how signed-cookie sessions are revoked server-side.
    Column("session_epoch", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False),
    Column("remote", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Index("ix_login_attempts_at", "at"),
)

boxes = Table(
    "boxes",
    metadata,
    Column("box_id", String(64), primary_key=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("last_seen", DateTime(timezone=True)),
    Column("firmware", String(64), nullable=False, default=""),
    Column("model_version", String(64), nullable=False, default=""),
    Column("config_version", String(64), nullable=False, default=""),
    Column("signal_quality", Float),
    Column("loops_last_night", Integer),
    Column("breathers_last_night", Integer),
    # Rollout group: "canary" boxes get a rollout first.
    Column("group_name", String(32), nullable=False, default=""),
    Column("telemetry", JSON),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("box_id", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("severity", String(16), nullable=False, default="info"),
    Column("title", String(200), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("payload", JSON),
    Index("ix_alerts_box", "box_id", "id"),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("box_id", String(64), nullable=False),
    Column("night", String(32), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("box_id", "night", name="uq_reports_box_night"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(128), nullable=False, default=""),
    Column("detail", JSON),
)

# Change feed for the live pages. Every console instance writes here and every instance's event
# stream reads it, so a browser connected to instance A sees an alert that instance B ingested
# (with shared subscriptions each instance only receives part of the messages).
live_events = Table(
    "live_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("box_id", String(64), nullable=False, default=""),
    Column("ref_id", Integer),
)

# ---- migration 2: config pushes and signed rollouts ----------------------------------------------
config_pushes = Table(
    "config_pushes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("box_id", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("body", JSON, nullable=False),
    Column("pushed_by", String(64), nullable=False),
    Column("pushed_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False, default="sent"),  # sent | acknowledged | refused
    Column("detail", Text, nullable=False, default=""),
    Column("acked_at", DateTime(timezone=True)),
    Index("ix_config_pushes_box", "box_id", "id"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # model | config
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # pending|canary|rest|completed|stopped
    Column("created_by", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("detail", Text, nullable=False, default=""),
)

rollout_targets = Table(
    "rollout_targets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rollout_id", Integer, ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("box_id", String(64), nullable=False),
    Column("phase", String(8), nullable=False),  # canary | rest
    # pending | sent | healthy | failed | skipped
    Column("state", String(16), nullable=False, default="pending"),
    Column("detail", Text, nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rollout_targets_rollout", "rollout_id"),
)


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A stored time as aware UTC (SQLite returns naive datetimes)."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _m1_fleet_people_audit(conn: Connection) -> None:
    for t in (users, login_attempts, boxes, alerts, reports, audit_log, live_events):
        t.create(conn)


def _m2_config_pushes_rollouts(conn: Connection) -> None:
    for t in (config_pushes, rollouts, rollout_targets):
        t.create(conn)


#: The numbered migrations, in order. Append; never edit or renumber one that has shipped.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "fleet, people and audit", _m1_fleet_people_audit),
    (2, "config pushes and rollouts", _m2_config_pushes_rollouts),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
MAX_ROW_ID = 2**63 - 1
"""Largest row id (a signed 64-bit integer in both engines); a larger one named in a URL is no such row, not an
overflow inside the database driver."""

#: PostgreSQL advisory lock that serialises the login rate-limit check (count, then record) across every
#: console instance sharing the database ("bedtime-login").
LOGIN_LOCK_KEY = 0x62746C67


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` URL, or None for another engine or an in-memory database."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if not path or path == ":memory:" else path


def secure_sqlite_file(path: str) -> None:
    """Make the console's SQLite file private to its owner (0600): it holds password hashes and
    patients' night reports.

    A new file is created 0600 before SQLite opens it (SQLite gives its ``-wal``/``-shm`` files the same
    mode); an existing file readable by others is fixed and a warning logged.

    Raises
    ------
    UserFileError
        ``path`` (or its ``-wal``/``-shm`` file) exists and is not a regular file: SQLite would wait forever on a
        FIFO, and a device (``/dev/zero``) must not be chmod-ed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    for p in (path, f"{path}-wal", f"{path}-shm"):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise UserFileError(f"{p}: not a regular file (a folder, device or FIFO)")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            try:
                os.chmod(p, 0o600)
            except OSError as e:  # not ours, or a read-only mount: say so, and go on
                logger.warning("%s is readable by others (mode %o) and could not be fixed: %s", p, mode, e)
            else:
                logger.warning("%s was readable by others (mode %o): set to 0600", p, mode)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings each backend needs.

    SQLite gets foreign keys on, WAL journaling and a busy timeout, because the ingest thread and the
    web workers write concurrently.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def current_version(engine: Engine) -> int:
    """The highest applied migration number, 0 for an empty database."""
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, schema_migrations.name):
            return 0
        return conn.execute(select(func.max(schema_migrations.c.version))).scalar() or 0


def migrate(engine: Engine) -> list[int]:
    """Apply the missing migrations in order; return the numbers applied (empty when up to date)."""
    applied: list[int] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Transaction-scoped advisory lock: a second instance waits here, then sees the work done.
            conn.execute(select(func.pg_advisory_xact_lock(0x62656474)))
        schema_migrations.create(conn, checkfirst=True)
        done = set(conn.execute(select(schema_migrations.c.version)).scalars())
        for number, name, fn in MIGRATIONS:
            if number in done:
                continue
            logger.info("applying schema migration %d: %s", number, name)
            with conn.begin_nested():
                fn(conn)
                conn.execute(insert(schema_migrations).values(version=number, name=name, applied_at=utcnow()))
            applied.append(number)
    return applied


def _upsert(conn: Connection, table: Table, key: str, values: dict[str, Any]) -> None:
    """Insert or update one row by primary key, with each dialect's native ON CONFLICT."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(table).values(**values)
    changes = {k: stmt.excluded[k] for k in values if k != key}
    conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changes))


CLINIC_STATE_DIRNAME = "bedtime-clinic"
"""Name of the console's state folder (its SQLite database and session key)."""


def clinic_state_dir() -> Path:
    """The console's state folder: ``/var/lib/bedtime-clinic`` for root (a clinic server), else
    ``$XDG_STATE_HOME/bedtime-clinic`` (by default ``~/.local/state/bedtime-clinic``, a user trying it out).

    Absolute either way, so the database does not depend on the folder the command was started from.
    """
    if os.geteuid() == 0:
        return Path("/var/lib") / CLINIC_STATE_DIRNAME
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / CLINIC_STATE_DIRNAME


def default_database_url() -> str:
    """``BEDTIME_CONSOLE_DB`` when set, else the SQLite file ``fleet.db`` in :func:`clinic_state_dir`."""
    return os.environ.get("BEDTIME_CONSOLE_DB") or f"sqlite:///{clinic_state_dir() / 'fleet.db'}"


class FleetDB:
    """The console's store. One instance per process; thread-safe (a connection per call).

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:port/db``.
    migrate_schema : bool
        Apply missing migrations on open (default True).
    """

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is not None:
            secure_sqlite_file(path)
        self.engine = make_engine(url)
        if migrate_schema:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- users and logins ------------------------------------------------------------------------
    def add_user(self, username: str, password_hash: str, role: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                insert(users).values(username=username, password_hash=password_hash, role=role,
                                     session_epoch=0, created_at=utcnow())
            ).inserted_primary_key[0]

    def get_user(self, *, username: str | None = None, user_id: int | None = None) -> dict | None:
        q = select(users)
        q = q.where(users.c.username == username) if username is not None else q.where(users.c.id == user_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def list_users(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(users.c.id, users.c.username, users.c.role)
                                                  .order_by(users.c.username)).mappings()]

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id)
                         .values(password_hash=password_hash, session_epoch=users.c.session_epoch + 1))

    def bump_session_epoch(self, user_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(session_epoch=users.c.session_epoch + 1))

    def reserve_login_attempt(self, username: str, remote: str, *, since: dt.datetime,
                              max_failures: int) -> int | None:
        """The login rate limit's check and record, as one atomic step.

        Under a lock every console instance shares (PostgreSQL: an advisory transaction lock; SQLite:
        ``BEGIN IMMEDIATE``), count the failures since ``since`` for this user name and for this address,
        and record this attempt as a failure *before* its password is checked. So N parallel attempts can
        never all see "under the limit": at most ``max_failures`` passwords are checked per window.

        Returns
        -------
        int or None
            The attempt's id (call :meth:`mark_login_ok` when the password is right), or None when the
            limit is reached (the attempt is still recorded as a failure).
        """
        username, remote = username[:64], remote[:64]
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(LOGIN_LOCK_KEY)))
            elif conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not at the insert
            failed = select(func.count()).select_from(login_attempts).where(
                login_attempts.c.at >= since, login_attempts.c.ok.is_(False))
            limited = (conn.execute(failed.where(login_attempts.c.username == username)).scalar() >= max_failures
                       or conn.execute(failed.where(login_attempts.c.remote == remote)).scalar() >= max_failures)
            attempt_id = conn.execute(insert(login_attempts).values(
                username=username, remote=remote, at=utcnow(), ok=False)).inserted_primary_key[0]
        return None if limited else attempt_id

    def mark_login_ok(self, attempt_id: int) -> None:
        """The password of a reserved attempt was right: it no longer counts as a failure."""
        with self.engine.begin() as conn:
            conn.execute(update(login_attempts).where(login_attempts.c.id == attempt_id).values(ok=True))

    def prune_login_attempts(self, older_than: dt.datetime) -> int:
        """Delete login attempts older than ``older_than`` (the rate limit only looks at its window;
        logins stay in the audit log); return how many went."""
        with self.engine.begin() as conn:
            return conn.execute(delete(login_attempts).where(login_attempts.c.at < older_than)).rowcount

    def record_login(self, username: str, remote: str, ok: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(login_attempts).values(username=username[:64], remote=remote[:64], at=utcnow(), ok=ok))

    def failed_logins_since(self, since: dt.datetime, *, username: str | None = None,
                            remote: str | None = None) -> int:
        q = select(func.count()).select_from(login_attempts).where(login_attempts.c.at >= since,
                                                                   login_attempts.c.ok.is_(False))
        if username is not None:
            q = q.where(login_attempts.c.username == username[:64])
        if remote is not None:
            q = q.where(login_attempts.c.remote == remote[:64])
        with self.engine.connect() as conn:
            return conn.execute(q).scalar() or 0

    # ---- boxes -----------------------------------------------------------------------------------
    def upsert_box(self, box_id: str, *, live_event: bool = False, **fields: Any) -> None:
        """Create or update a box's row with the given columns (unknown keys are ignored)."""
        values = {k: v for k, v in fields.items() if k in boxes.c and k != "box_id"}
        values["box_id"] = box_id
        values["updated_at"] = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(select(boxes.c.box_id).where(boxes.c.box_id == box_id)).first()
            if exists is None:
                base = {"online": False, "firmware": "", "model_version": "", "config_version": "", "group_name": ""}
                _upsert(conn, boxes, "box_id", {**base, **values})
                live_event = True
            else:
                conn.execute(update(boxes).where(boxes.c.box_id == box_id).values(**values))
            if live_event:
                conn.execute(insert(live_events).values(at=utcnow(), kind="box", box_id=box_id))

    def update_telemetry_bulk(self, rows: list[dict]) -> list[str]:
        """Write many boxes' latest telemetry in one transaction; return the ids of boxes not in the table.

        ``rows``: dicts with ``box_id``, ``last_seen``, ``telemetry`` and ``signal_quality`` (None keeps it).
        """
        if not rows:
            return []
        from sqlalchemy import bindparam

        now = utcnow()
        with self.engine.begin() as conn:
            known = set(conn.execute(select(boxes.c.box_id).where(boxes.c.box_id.in_([r["box_id"] for r in rows])))
                        .scalars())
            params = [{"b_id": r["box_id"], "b_seen": r["last_seen"], "b_tel": r["telemetry"],
                       "b_q": r["signal_quality"], "b_now": now} for r in rows if r["box_id"] in known]
            if params:
                stmt = (update(boxes).where(boxes.c.box_id == bindparam("b_id"))
                        .values(last_seen=bindparam("b_seen"), telemetry=bindparam("b_tel"),
                                signal_quality=func.coalesce(bindparam("b_q", type_=Float), boxes.c.signal_quality),
                                updated_at=bindparam("b_now")))
                conn.execute(stmt, params)
        return [r["box_id"] for r in rows if r["box_id"] not in known]

    def set_box_online(self, box_id: str, online: bool, **fields: Any) -> None:
        """Record a status message; a live event is written only when online/offline changes."""
        with self.engine.connect() as conn:
            was = conn.execute(select(boxes.c.online).where(boxes.c.box_id == box_id)).scalar()
        self.upsert_box(box_id, online=online, live_event=(was is None or bool(was) != online), **fields)

    def list_boxes(self, *, group: str | None = None) -> list[dict]:
        q = select(boxes).order_by(boxes.c.box_id)
        if group is not None:
            q = q.where(boxes.c.group_name == group)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def get_box(self, box_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(boxes).where(boxes.c.box_id == box_id)).mappings().first()
        return dict(row) if row else None

    def fleet_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(boxes)).scalar() or 0
            online = conn.execute(select(func.count()).select_from(boxes).where(boxes.c.online.is_(True))).scalar() or 0
        return {"total": total, "online": online, "offline": total - online}

    # ---- alerts and reports ----------------------------------------------------------------------
    def add_alert(self, box_id: str, *, severity: str, title: str, message: str, payload: dict) -> int:
        with self.engine.begin() as conn:
            alert_id = conn.execute(
                insert(alerts).values(box_id=box_id, received_at=utcnow(), severity=severity[:16],
                                      title=title[:200], message=message, payload=payload)
            ).inserted_primary_key[0]
            conn.execute(insert(live_events).values(at=utcnow(), kind="alert", box_id=box_id, ref_id=alert_id))
        return alert_id

    def recent_alerts(self, *, limit: int = 50, box_id: str | None = None, after_id: int = 0) -> list[dict]:
        q = select(alerts).where(alerts.c.id > after_id).order_by(alerts.c.id.desc()).limit(limit)
        if box_id is not None:
            q = q.where(alerts.c.box_id == box_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def get_alert(self, alert_id: int) -> dict | None:
        if not 1 <= alert_id <= MAX_ROW_ID:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        return dict(row) if row else None

    def add_report(self, box_id: str, night: str, payload: dict) -> None:
        with self.engine.begin() as conn:
            existing = conn.execute(select(reports.c.id).where(reports.c.box_id == box_id,
                                                               reports.c.night == night)).scalar()
            if existing is None:
                conn.execute(insert(reports).values(box_id=box_id, night=night, received_at=utcnow(), payload=payload))
            else:
                conn.execute(update(reports).where(reports.c.id == existing)
                             .values(received_at=utcnow(), payload=payload))
            conn.execute(insert(live_events).values(at=utcnow(), kind="report", box_id=box_id))

    def reports_for_box(self, box_id: str, *, limit: int = 7) -> list[dict]:
        q = select(reports).where(reports.c.box_id == box_id).order_by(reports.c.night.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ---- live change feed ------------------------------------------------------------------------
    def live_events_after(self, after_id: int, *, limit: int = 200) -> list[dict]:
        q = select(live_events).where(live_events.c.id > after_id).order_by(live_events.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def last_live_event_id(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(live_events.c.id))).scalar() or 0

    def add_live_event(self, kind: str, *, box_id: str = "", ref_id: int | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(live_events).values(at=utcnow(), kind=kind, box_id=box_id, ref_id=ref_id))

    def prune_live_events(self, older_than: dt.datetime) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(live_events).where(live_events.c.at < older_than)).rowcount

    # ---- audit -----------------------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str = "", detail: dict | None = None) -> None:
        """Append one entry to the clinic-side audit log (and the process log)."""
        logger.info("audit: %s %s %s %s", actor, action, target, detail or "")
        with self.engine.begin() as conn:
            conn.execute(insert(audit_log).values(at=utcnow(), actor=actor[:64], action=action[:64],
                                                  target=target[:128], detail=detail or {}))

    def audit_entries(self, *, limit: int = 200, action_prefix: str | None = None) -> list[dict]:
        q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if action_prefix:
            q = q.where(audit_log.c.action.startswith(action_prefix, autoescape=True))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ---- config pushes ---------------------------------------------------------------------------
    def add_config_push(self, box_id: str, version: str, body: dict, pushed_by: str) -> int:
        with self.engine.begin() as conn:
            push_id = conn.execute(insert(config_pushes).values(
                box_id=box_id, version=version, body=body, pushed_by=pushed_by, pushed_at=utcnow(),
                state="sent", detail="")).inserted_primary_key[0]
            conn.execute(insert(live_events).values(at=utcnow(), kind="config", box_id=box_id, ref_id=push_id))
        return push_id

    def set_config_push_state(self, push_id: int, state: str, detail: str = "") -> None:
        with self.engine.begin() as conn:
            box_id = conn.execute(select(config_pushes.c.box_id).where(config_pushes.c.id == push_id)).scalar()
            conn.execute(update(config_pushes).where(config_pushes.c.id == push_id)
                         .values(state=state, detail=detail[:2000], acked_at=utcnow()))
            conn.execute(insert(live_events).values(at=utcnow(), kind="config", box_id=box_id or "", ref_id=push_id))

    def config_pushes_for_box(self, box_id: str, *, limit: int = 10) -> list[dict]:
        q = select(config_pushes).where(config_pushes.c.box_id == box_id).order_by(config_pushes.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def get_config_push(self, push_id: int) -> dict | None:
        if not 1 <= push_id <= MAX_ROW_ID:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(config_pushes).where(config_pushes.c.id == push_id)).mappings().first()
        return dict(row) if row else None

    # ---- rollouts --------------------------------------------------------------------------------
    def add_rollout(self, *, kind: str, name: str, version: str, sha256: str, manifest: dict, payload: bytes,
                    created_by: str, canary: Iterable[str], rest: Iterable[str]) -> int:
        now = utcnow()
        with self.engine.begin() as conn:
            rid = conn.execute(insert(rollouts).values(
                kind=kind, name=name[:128], version=version[:64], sha256=sha256, manifest=manifest, payload=payload,
                state="pending", created_by=created_by, created_at=now, detail="")).inserted_primary_key[0]
            rows = [{"rollout_id": rid, "box_id": b, "phase": "canary", "state": "pending", "detail": "",
                     "updated_at": now} for b in canary]
            rows += [{"rollout_id": rid, "box_id": b, "phase": "rest", "state": "pending", "detail": "",
                      "updated_at": now} for b in rest]
            if rows:
                conn.execute(insert(rollout_targets), rows)
            conn.execute(insert(live_events).values(at=now, kind="rollout", ref_id=rid))
        return rid

    def set_rollout_state(self, rollout_id: int, state: str, detail: str = "", *, finished: bool = False) -> None:
        values: dict[str, Any] = {"state": state, "detail": detail[:2000]}
        if finished:
            values["finished_at"] = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))
            conn.execute(insert(live_events).values(at=utcnow(), kind="rollout", ref_id=rollout_id))

    def set_target_state(self, rollout_id: int, box_id: str, state: str, detail: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(update(rollout_targets)
                         .where(rollout_targets.c.rollout_id == rollout_id, rollout_targets.c.box_id == box_id)
                         .values(state=state, detail=detail[:2000], updated_at=utcnow()))
            conn.execute(insert(live_events).values(at=utcnow(), kind="rollout", box_id=box_id, ref_id=rollout_id))

    def get_rollout(self, rollout_id: int, *, with_payload: bool = False) -> dict | None:
        if not 1 <= rollout_id <= MAX_ROW_ID:
            return None
        cols = [c for c in rollouts.c if with_payload or c.name != "payload"]
        with self.engine.connect() as conn:
            row = conn.execute(select(*cols).where(rollouts.c.id == rollout_id)).mappings().first()
            if row is None:
                return None
            out = dict(row)
            out["targets"] = [dict(r) for r in conn.execute(
                select(rollout_targets).where(rollout_targets.c.rollout_id == rollout_id)
                .order_by(rollout_targets.c.phase, rollout_targets.c.box_id)).mappings()]
        return out

    def list_rollouts(self, *, limit: int = 50) -> list[dict]:
        cols = [c for c in rollouts.c if c.name != "payload"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(*cols).order_by(rollouts.c.id.desc()).limit(limit)).mappings()]
