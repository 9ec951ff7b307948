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
it is back online (that one notice may exceed the bound by a row rather than evict an alert). The
defaults (10,000 rows, 8 MB) hold weeks of nights offline.

A full disk (ENOSPC, SQLite's "database or disk is full") is a different limit: the file system, shared
with recordings and logs, can fill before the outbox reaches its own bound. Then:

- deleting needs no new space: the database uses a rollback journal that stays allocated between
  transactions (``PERSIST``), sized at start to hold :data:`JOURNAL_RESERVE_PAGES` pages, and a deletion
  only rewrites existing pages. (With WAL, rows land in the WAL first and moving them into the database
  later needs new space: on a full disk the WAL could neither be checkpointed nor shrink, and even
  deletions failed.) Sizing the journal also leaves as many free pages inside the database for new rows;
- a new row that does not fit evicts droppable rows (delivered rows not yet deleted first, then the
  oldest events; never an alert) until it fits, so every alert is kept while anything droppable remains;
  only then is a message refused, with :class:`OutboxFullError`;
- a delivered row whose deletion still fails stays marked delivered in memory (never offered again in
  this run, so never re-sent in a loop) and its deletion is retried with a backoff (:meth:`Outbox.retry_pending`);
- :attr:`Outbox.problem` says what is wrong (the box puts it in its status as ``outbox_problem``), the
  first occurrence is logged as an error, and it clears once deferred deletions are done and the file
  system has room again.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from appliance.protocol import schema

log = logging.getLogger(__name__)

PRIORITY_EVENT = 0
PRIORITY_ALERT = 1

#: Pages (of the database's page size, 4 KiB by default) the persistent journal is sized to hold, so that
#: deletions never need new space; as many free pages are left in the database for new rows.
JOURNAL_RESERVE_PAGES = 64

#: Most rows deleted in one transaction when making room on a full disk (fits the sized journal).
MAX_EVICT_BATCH = 16

#: Free space (bytes) the file system must have again before a full-disk problem is declared over.
ROOM_AGAIN_BYTES = 256 * 1024

#: Backoff (s) between retries of deferred deletions and of the free-space check on a full disk.
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0

#: Cap (bytes) on the persistent rollback journal kept between transactions.
JOURNAL_LIMIT_BYTES = 1024 * 1024

_T = TypeVar("_T")


class OutboxFullError(RuntimeError):
    """The disk is full and nothing droppable is left in the outbox: the message was not stored."""


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` is SQLite's SQLITE_FULL ("database or disk is full") or an ENOSPC."""
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


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
    clock : callable
        Monotonic seconds, for the retry backoff (injectable for tests).
    """

    def __init__(self, path: Path, *, max_rows: int = 10_000, max_bytes: int = 8 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("max_rows and max_bytes must be positive")
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + "-journal")
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Full-disk state (under self._lock): rows acknowledged by the broker whose deletion is still
        # pending, the problem text, and the backoff of the retries.
        self._delivered: set[int] = set()
        self._problem: str | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        self._forget_on_commit: list[int] = []
        self._full_disk_drops = 0
        self.disk_full_events = 0
        self._open()
        try:
            self._size_journal()
        except sqlite3.Error as e:
            if not _disk_full(e):
                raise
            self._on_disk_full(e)  # started on a full disk: run with the journal there is

    def _open(self) -> None:
        # One connection shared by the daemon's threads, serialised by self._lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._init_db()
        except BaseException:
            self._db.close()
            raise

    def _init_db(self) -> None:
        # A rollback journal kept allocated between transactions (PERSIST), not WAL: see the module
        # docstring (a full disk). An insert that needs space fails at once and is retried after
        # evicting; a deletion only rewrites existing pages, with a journal already allocated.
        self._db.execute("PRAGMA journal_mode=PERSIST").fetchall()
        self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}").fetchall()
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
            CREATE TABLE IF NOT EXISTS ballast (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
            """
        )
        row = self._db.execute("SELECT value FROM meta WHERE key='outbox_id'").fetchone()
        if row is None:
            self.outbox_id = os.urandom(6).hex()
            self._db.execute("INSERT INTO meta VALUES ('outbox_id', ?)", (self.outbox_id,))
        else:
            self.outbox_id = row[0]

    def _size_journal(self) -> None:
        """Make the persistent journal hold :data:`JOURNAL_RESERVE_PAGES` pages, once.

        SQLite journals the old content of every page a transaction changes, and in PERSIST mode keeps
        the file for the next transaction. Writing that many pages of ballast, then rewriting and
        deleting them in one transaction, grows the journal to that size and leaves the pages free
        inside the database for new rows.
        """
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        want = JOURNAL_RESERVE_PAGES * (page + 8)
        try:
            if self.journal_path.stat().st_size >= want:
                return
        except FileNotFoundError:
            pass
        pad = page - 64  # one row per page
        self._transaction(lambda cur: cur.executemany(
            "INSERT INTO ballast (pad) VALUES (zeroblob(?))", [(pad,)] * JOURNAL_RESERVE_PAGES))

        def rewrite_and_free(cur: sqlite3.Cursor) -> None:
            cur.execute("UPDATE ballast SET pad = randomblob(?)", (pad,))
            cur.execute("DELETE FROM ballast")

        self._transaction(rewrite_and_free)

    # ---- writing --------------------------------------------------------------------------------
    def put(self, topic: str, payload: dict, *, channel: str, priority: int = PRIORITY_EVENT,
            qos: int = 1, retain: bool = False, over_bound: bool = False) -> int:
        """Store a message; return the ``seq`` it was given on its channel.

        ``payload`` gets ``outbox_id`` and ``seq`` added (strictly increasing per channel, never reused
        while this database exists). ``over_bound=True`` stores it without making room (only for the
        ``outbox_overflow`` notice: announcing a drop must not itself drop an alert).

        Raises
        ------
        OutboxFullError
            The disk is full and no droppable row (delivered, or an event) is left to make room.
        ValueError
            The message alone is larger than ``max_bytes``.
        """
        def insert(cur: sqlite3.Cursor) -> int:
            cur.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                        (channel,))
            seq = cur.execute("SELECT value FROM counters WHERE name=?", (channel,)).fetchone()[0]
            data = schema.encode({**payload, "outbox_id": self.outbox_id, "seq": seq})
            if not over_bound:
                self._make_room(cur, len(data), priority)
            cur.execute("INSERT INTO outbox (topic, payload, qos, retain, priority) VALUES (?,?,?,?,?)",
                        (topic, data, qos, int(retain), priority))
            return seq

        with self._lock:
            clean = True
            try:
                seq = self._transaction(insert)
            except sqlite3.Error as e:
                if not _disk_full(e):
                    raise
                clean = False
                seq = self._insert_on_full_disk(insert, channel=channel, priority=priority)
            self._after_write(clean=clean)
        return seq

    def _insert_on_full_disk(self, insert: Callable[[sqlite3.Cursor], int], *, channel: str, priority: int) -> int:
        """The disk is full: evict droppable rows in growing batches (each its own transaction, so the
        pages they free are reusable by the insert) until it fits."""
        self._on_disk_full()
        batch = 4
        evicted = 0
        while True:
            try:
                freed = self._transaction(lambda cur: self._evict_droppable(cur, batch))
            except sqlite3.Error as e:
                if not _disk_full(e):
                    raise
                if batch > 1:  # a smaller deletion fits the journal there is
                    batch //= 2
                    continue
                msg = f"outbox disk full in {self.path.parent}: {channel} not stored, cannot even delete rows ({e})"
                self._set_problem(msg)
                raise OutboxFullError(msg) from e
            if freed == 0:
                msg = (f"outbox disk full in {self.path.parent}: {channel} not stored, nothing droppable left "
                       f"({self._count_priority(PRIORITY_ALERT)} alerts kept)")
                self._set_problem(msg)
                raise OutboxFullError(msg)
            evicted += freed
            try:
                seq = self._transaction(insert)
            except sqlite3.Error as e:
                if not _disk_full(e):
                    raise
                batch = min(batch * 2, MAX_EVICT_BATCH)
                continue
            log.debug("outbox disk full: made room for a %s by removing %d delivered or event rows",
                      channel, evicted)
            self._on_disk_full()  # refresh the problem text's count
            return seq

    def _evict_droppable(self, cur: sqlite3.Cursor, n: int) -> int:
        """Delete up to ``n`` droppable rows: delivered ones first (not counted as drops), then the
        oldest events (counted). Never an alert that was not delivered. Returns how many went."""
        gone = 0
        delivered = sorted(self._delivered)[:n]
        for row_id in delivered:
            cur.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
            gone += 1
        victims = cur.execute("SELECT row_id FROM outbox WHERE priority < ? ORDER BY row_id LIMIT ?",
                              (PRIORITY_ALERT, n - gone + len(self._delivered))).fetchall()
        dropped = 0
        for (row_id,) in victims:
            if gone >= n:
                break
            if row_id in self._delivered:
                continue
            cur.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
            gone, dropped = gone + 1, dropped + 1
        if dropped:
            cur.execute("INSERT INTO counters VALUES ('_dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + ?", (dropped, dropped))
            self._full_disk_drops += dropped
            log.debug("outbox disk full: dropped the %d oldest events", dropped)
        # Forget the deleted delivered rows only once this transaction commits (see _transaction).
        self._forget_on_commit.extend(delivered)
        return gone

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

    # ---- transactions and the full disk ---------------------------------------------------------
    def _transaction(self, body: Callable[[sqlite3.Cursor], _T]) -> _T:
        """``body`` in one BEGIN IMMEDIATE .. COMMIT; rolled back on any error.

        SQLite may end a transaction by itself on SQLITE_FULL; a ROLLBACK then fails with "cannot
        rollback - no transaction is active", which used to hide the real error. Roll back only what
        is still open, and always re-raise the original error.
        """
        cur = self._db.cursor()
        self._forget_on_commit = []
        cur.execute("BEGIN IMMEDIATE")
        try:
            out = body(cur)
            cur.execute("COMMIT")
        except BaseException:
            self._forget_on_commit = []
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error as e:
                    log.debug("rollback after a failed outbox write: %s", e)
            raise
        self._delivered.difference_update(self._forget_on_commit)
        self._forget_on_commit = []
        return out

    def _on_disk_full(self, e: BaseException | None = None) -> None:
        self.disk_full_events += 1
        self._set_problem(f"outbox disk full in {self.path.parent}: keeping every alert, dropping the oldest events "
                          f"to make room ({self._full_disk_drops} dropped so far)" + (f": {e}" if e is not None else ""))

    def _set_problem(self, text: str) -> None:
        if self._problem is None:
            log.error("%s", text)  # once per episode: a full disk must not also flood the log
        self._problem = text

    def _after_write(self, *, clean: bool) -> None:
        """After a write succeeded: retry deferred deletions (with backoff) and clear the problem once
        none are left, writes need no eviction (``clean``) and there is room for
        :data:`ROOM_AGAIN_BYTES` more (free pages inside the database plus free space on the disk)."""
        if self._problem is None and not self._delivered:
            return
        now = self._clock()
        if self._delivered:
            if now < self._retry_at:
                return
            self._flush_delivered()
            if self._delivered:
                self._back_off(now)
                return
        if self._problem is None or not clean:
            return
        if self._room_bytes() < ROOM_AGAIN_BYTES:
            return
        try:
            self._size_journal()  # in case it could not be sized at start
        except sqlite3.Error as e:
            if not _disk_full(e):
                raise
            return
        log.warning("outbox: room again in %s (%d events dropped while the disk was full)",
                    self.path.parent, self._full_disk_drops)
        self._problem = None
        self._full_disk_drops = 0
        self._retry_delay, self._retry_at = RETRY_MIN_S, 0.0

    def _back_off(self, now: float) -> None:
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)

    def _room_bytes(self) -> int:
        """Bytes the outbox could still store: free pages in the database plus free space on the disk."""
        page, free_pages = (self._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "freelist_count"))
        try:
            st = os.statvfs(self.path.parent)
            disk = st.f_bavail * st.f_frsize
        except OSError:
            disk = 0
        return page * free_pages + disk

    def _flush_delivered(self) -> None:
        """Delete delivered rows whose deletion was deferred."""
        if not self._delivered:
            return
        ids = sorted(self._delivered)
        try:
            self._transaction(lambda cur: self._delete_delivered(cur, ids))
        except sqlite3.Error as e:
            if not _disk_full(e):
                raise
            log.debug("deferred outbox deletions still failing: %s", e)

    def _delete_delivered(self, cur: sqlite3.Cursor, ids: list[int]) -> None:
        cur.executemany("DELETE FROM outbox WHERE row_id=?", [(i,) for i in ids])
        self._forget_on_commit.extend(ids)

    @property
    def problem(self) -> str | None:
        """What is wrong with the outbox's storage (a full disk), or None."""
        return self._problem

    def retry_pending(self) -> None:
        """Retry deferred deletions and the free-space check if their backoff has passed (the link
        calls this often; it does nothing when all is well)."""
        with self._lock:
            if self._problem is None and not self._delivered:
                return
            if self._delivered and self._clock() < self._retry_at:
                return
            self._after_write(clean=True)

    def _count_priority(self, priority: int) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE priority=?", (priority,)).fetchone()[0]

    # ---- reading / acknowledging ----------------------------------------------------------------
    def peek(self, *, after_row_id: int = 0, limit: int = 50) -> list[OutboxRow]:
        """Oldest undelivered rows with ``row_id > after_row_id``, in insertion order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id, topic, payload, qos, retain, priority FROM outbox WHERE row_id > ? "
                "ORDER BY row_id LIMIT ?", (after_row_id, limit + len(self._delivered))).fetchall()
            rows = [r for r in rows if r[0] not in self._delivered][:limit]
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, row_id: int) -> None:
        """Delete a row the broker has acknowledged (see :meth:`ack_many`)."""
        self.ack_many([row_id])

    def ack_many(self, row_ids: list[int]) -> None:
        """Delete rows the broker has acknowledged, in one transaction (a commit costs a few fsyncs).

        Never raises for a full disk: the rows are then marked delivered (never peeked again in this run)
        and their deletion retried later (:meth:`retry_pending`).
        """
        if not row_ids:
            return
        ids = list(row_ids)
        with self._lock:
            self._delivered.update(ids)
            try:
                self._transaction(lambda cur: self._delete_delivered(cur, ids))
            except sqlite3.Error as e:
                if not _disk_full(e):
                    raise
                self._set_problem(f"outbox disk full in {self.path.parent}: cannot delete delivered rows ({e})")
                if self._clock() >= self._retry_at:
                    self._back_off(self._clock())
                return
            self._after_write(clean=True)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - len(self._delivered)

    @property
    def size_bytes(self) -> int:
        """Summed payload bytes currently stored (delivered rows awaiting deletion included)."""
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
                try:
                    self._transaction(lambda cur: cur.execute(
                        "INSERT INTO counters VALUES ('_dropped_reported', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = ?", (total, total)))
                except sqlite3.Error as e:
                    if not _disk_full(e):
                        raise
                    return 0  # announced next time there is room
        return total - seen

    def close(self) -> None:
        """Close the database (rows stay on disk for the next start)."""
        with self._lock:
            self._db.close()
