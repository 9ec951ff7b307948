"""A persistent, bounded, in-order outbox for QoS 1 events and alerts (SQLite).

Why not rely on paho's own queue: paho keeps unacknowledged messages in memory only, so a power cut
or a daemon restart while the network is down would lose the alert a parent is waiting for. Every
QoS 1 event and alert is therefore written here first (one SQLite transaction, fsynced) and deleted
only when the broker has acknowledged it (PUBACK). :class:`appliance.mqtt.BoxLink` publishes the rows
oldest first after every (re)connect, so delivery is in order and at least once; each payload carries
``outbox_id`` + a per-channel ``seq`` so a receiver can drop the rare duplicate (a PUBACK lost in a
network cut) and see gaps.

Disk policy (bounded): at most ``max_rows`` rows and ``max_bytes`` of payload. When a new row would
exceed either bound, the oldest rows of the *lowest priority* go first (events, priority 0, before
alerts, priority 1); an alert is only dropped when the outbox holds nothing but alerts. Every drop is
logged and counted (``dropped``), and the box reports the count in an ``outbox_overflow`` event once
it is back online (that one notice may exceed the bound by a row rather than evict an alert). The defaults (10,000 rows, 8 MB) hold weeks of nights offline.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance import mqtt_schema as schema

log = logging.getLogger(__name__)

PRIORITY_EVENT = 0
PRIORITY_ALERT = 1


@dataclass(frozen=True)
class OutboxRow:
    """One stored message, ready to publish."""

    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    priority: int


class Outbox:
    """The outbox database of one box.

    Parameters
    ----------
    path : Path
        SQLite file (created, with its folder, if missing). Use a persistent state directory on the box.
    max_rows : int
        Bound on stored rows.
    max_bytes : int
        Bound on the summed payload size (bytes).
    """

    def __init__(self, path: Path, *, max_rows: int = 10_000, max_bytes: int = 8 * 1024 * 1024) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("max_rows and max_bytes must be positive")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by the daemon's threads, serialised by self._lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row is on disk before put() returns, so an alert survives a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                row_id   INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused
                topic    TEXT NOT NULL,
                payload  BLOB NOT NULL,
                qos      INTEGER NOT NULL,
                retain   INTEGER NOT NULL,
                priority INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        row = self._db.execute("SELECT value FROM meta WHERE key='outbox_id'").fetchone()
        if row is None:
            self.outbox_id = os.urandom(6).hex()
            self._db.execute("INSERT INTO meta VALUES ('outbox_id', ?)", (self.outbox_id,))
        else:
            self.outbox_id = row[0]

    # ---- writing --------------------------------------------------------------------------------
    def put(self, topic: str, payload: dict, *, channel: str, priority: int = PRIORITY_EVENT,
            qos: int = 1, retain: bool = False, over_bound: bool = False) -> int:
        """Store a message; return the ``seq`` it was given on its channel.

        ``payload`` gets ``outbox_id`` and ``seq`` added (strictly increasing per channel, never reused
        while this database exists). ``over_bound=True`` stores it without making room (only for the
        ``outbox_overflow`` notice: announcing a drop must not itself drop an alert).
        """
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                            (channel,))
                seq = cur.execute("SELECT value FROM counters WHERE name=?", (channel,)).fetchone()[0]
                data = schema.encode({**payload, "outbox_id": self.outbox_id, "seq": seq})
                if not over_bound:
                    self._make_room(cur, len(data), priority)
                cur.execute("INSERT INTO outbox (topic, payload, qos, retain, priority) VALUES (?,?,?,?,?)",
                            (topic, data, qos, int(retain), priority))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return seq

    def _make_room(self, cur: sqlite3.Cursor, new_bytes: int, priority: int) -> None:
        if new_bytes > self.max_bytes:
            raise ValueError(f"message of {new_bytes} B exceeds the outbox bound of {self.max_bytes} B")
        rows, size = cur.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)),0) FROM outbox").fetchone()
        dropped = 0
        while rows + 1 > self.max_rows or size + new_bytes > self.max_bytes:
            # Oldest row of the lowest priority present (never a higher priority than the newcomer's
            # unless only higher-priority rows are left).
            victim = cur.execute(
                "SELECT row_id, LENGTH(payload), priority FROM outbox ORDER BY priority, row_id LIMIT 1").fetchone()
            if victim is None:
                break
            cur.execute("DELETE FROM outbox WHERE row_id=?", (victim[0],))
            rows, size, dropped = rows - 1, size - victim[1], dropped + 1
            log.warning("outbox full: dropped row %d (priority %d) to make room", victim[0], victim[2])
        if dropped:
            cur.execute("INSERT INTO counters VALUES ('_dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + ?", (dropped, dropped))

    # ---- reading / acknowledging ----------------------------------------------------------------
    def peek(self, *, after_row_id: int = 0, limit: int = 50) -> list[OutboxRow]:
        """Oldest rows with ``row_id > after_row_id``, in insertion order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id, topic, payload, qos, retain, priority FROM outbox WHERE row_id > ? "
                "ORDER BY row_id LIMIT ?", (after_row_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, row_id: int) -> None:
        """Delete a row the broker has acknowledged."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @property
    def size_bytes(self) -> int:
        """Summed payload bytes currently stored."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)),0) FROM outbox").fetchone()[0]

    @property
    def dropped(self) -> int:
        """Rows dropped by the disk policy since this database was created."""
        with self._lock:
            r = self._db.execute("SELECT value FROM counters WHERE name='_dropped'").fetchone()
        return 0 if r is None else r[0]

    def take_unreported_drops(self) -> int:
        """Drops not yet announced in an ``outbox_overflow`` event; marks them announced."""
        with self._lock:
            total = self._db.execute("SELECT value FROM counters WHERE name='_dropped'").fetchone()
            seen = self._db.execute("SELECT value FROM counters WHERE name='_dropped_reported'").fetchone()
            total, seen = (total or (0,))[0], (seen or (0,))[0]
            if total > seen:
                self._db.execute("INSERT INTO counters VALUES ('_dropped_reported', ?) "
                                 "ON CONFLICT(name) DO UPDATE SET value = ?", (total, total))
        return total - seen

    def close(self) -> None:
        """Close the database (rows stay on disk for the next start)."""
        with self._lock:
            self._db.close()
