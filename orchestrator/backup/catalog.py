"""The backup catalog: one SQLite file (stdlib) in the state directory.

It records sets, their directories, every part (sizes, sha256, tree hash,
archive id, store) and the incremental chain.  The store holds the same facts
(part descriptions and a manifest per set), so a lost catalog can be rebuilt.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import OrchestratorError

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sets (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
    parent_id TEXT,
    chain_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('inflight', 'complete', 'discarded')),
    local_state TEXT NOT NULL DEFAULT 'inflight' CHECK (local_state IN ('inflight', 'complete', 'pruned')),
    store TEXT NOT NULL,
    codec TEXT NOT NULL,
    encrypted INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    manifest_id TEXT,
    error TEXT,
    verified REAL
);
CREATE TABLE IF NOT EXISTS set_dirs (
    set_id TEXT NOT NULL REFERENCES sets(id) ON DELETE CASCADE,
    slug TEXT NOT NULL,
    path TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    tar_rc INTEGER,
    bytes_in INTEGER,
    entries INTEGER,
    PRIMARY KEY (set_id, slug)
);
CREATE TABLE IF NOT EXISTS parts (
    set_id TEXT NOT NULL REFERENCES sets(id) ON DELETE CASCADE,
    slug TEXT NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    plain_size INTEGER NOT NULL,
    plain_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    tree_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'local' CHECK (status IN ('local', 'uploading', 'stored')),
    archive_id TEXT,
    store TEXT,
    leaves BLOB,
    upload_id TEXT,
    PRIMARY KEY (set_id, slug, idx)
);
CREATE TABLE IF NOT EXISTS retrievals (
    store TEXT NOT NULL,
    archive_id TEXT NOT NULL,
    job_id TEXT,
    tier TEXT NOT NULL,
    requested REAL NOT NULL,
    eta_hours REAL,
    PRIMARY KEY (store, archive_id)
);
CREATE TABLE IF NOT EXISTS files (
    set_id TEXT NOT NULL,
    slug TEXT NOT NULL,
    path BLOB NOT NULL,
    type TEXT NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    link BLOB,
    keep BLOB,
    PRIMARY KEY (set_id, slug, path),
    FOREIGN KEY (set_id, slug) REFERENCES set_dirs(set_id, slug) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_deletes (
    set_id TEXT PRIMARY KEY REFERENCES sets(id) ON DELETE CASCADE,
    since REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sets_by_host ON sets (host, status, created);
"""


class Catalog:
    """Thread-safe access to the catalog: compress workers and uploaders record parts concurrently."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    @contextmanager
    def open(cls, path: Path, timeout: float = 10.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            catalog = cls(conn, path)
            catalog._init_schema()
            yield catalog
        except sqlite3.OperationalError as exc:
            raise _catalog_error(path, exc) from None
        finally:
            conn.close()

    def _init_schema(self) -> None:
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.conn.execute(statement)
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise OrchestratorError(
                    f"catalog {self.path} has schema v{row[0]}, newer than this tool's v{SCHEMA_VERSION}: "
                    "upgrade gentoo-ec2-orchestrator (the catalog was left untouched)"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                self._migrate(int(row[0]))

    def _migrate(self, version: int) -> None:
        """Bring an older catalog forward in place, inside the opening transaction."""
        added = {2: [("parts", "leaves BLOB"), ("parts", "upload_id TEXT")],
                 3: [("sets", "verified REAL"), ("set_dirs", "entries INTEGER")]}
        for since, columns in added.items():
            if version < since:
                for table, column in columns:
                    self._add_column(table, column)
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _add_column(self, table: str, column: str) -> None:
        existing = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
        if column.split()[0] not in existing:
            self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    @contextmanager
    def transaction(self):
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _catalog_error(self.path, exc) from None
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def _write(self, sql: str, args=()) -> None:
        with self.transaction() as conn:
            conn.execute(sql, args)

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def snapshot_to(self, path: Path) -> None:
        """A consistent copy of the catalog (SQLite's online backup) without the file index.

        The index of every set is in that set's manifest already; leaving it out
        keeps the copy stored after each set small however many files are backed up.
        """
        target = sqlite3.connect(path, isolation_level=None)
        try:
            with self._lock:
                self.conn.backup(target)
            target.execute("DELETE FROM files")
            target.execute("VACUUM")
        finally:
            target.close()

    # sets -------------------------------------------------------------------------------
    def new_set(self, *, set_id, host, kind, parent_id, chain_id, store, codec, encrypted, directories) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sets (id, host, kind, parent_id, chain_id, status, store, codec, encrypted, created)"
                " VALUES (?, ?, ?, ?, ?, 'inflight', ?, ?, ?, ?)",
                (set_id, host, kind, parent_id, chain_id, store, codec, int(encrypted), time.time()),
            )
            conn.executemany(
                "INSERT INTO set_dirs (set_id, slug, path, position) VALUES (?, ?, ?, ?)",
                [(set_id, slug, path, i) for i, (slug, path) in enumerate(directories)],
            )

    def get_set(self, set_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM sets WHERE id = ?", (set_id,))
        return rows[0] if rows else None

    def sets(self, host: str | None = None, status: str | None = None) -> list[sqlite3.Row]:
        """Sets oldest first; a set being deleted from the store is never listed as complete."""
        sql, args = "SELECT * FROM sets WHERE 1=1", []
        if status == "complete":
            sql += " AND id NOT IN (SELECT set_id FROM pending_deletes)"
        if host:
            sql, args = sql + " AND host = ?", args + [host]
        if status:
            sql, args = sql + " AND status = ?", args + [status]
        return self._query(sql + " ORDER BY created, id", args)

    def latest_complete(self, host: str) -> sqlite3.Row | None:
        rows = self.sets(host, "complete")
        return rows[-1] if rows else None

    def chain(self, set_id: str) -> list[sqlite3.Row]:
        """The sets a restore of ``set_id`` applies, oldest (the full) first."""
        chain, current = [], self.get_set(set_id)
        while current is not None:
            chain.append(current)
            current = self.get_set(current["parent_id"]) if current["parent_id"] else None
        return chain[::-1]

    def finish_set(self, set_id: str, manifest_id: str | None) -> None:
        self._write(
            "UPDATE sets SET status = 'complete', finished = ?, manifest_id = ?, error = NULL WHERE id = ?",
            (time.time(), manifest_id, set_id),
        )

    def set_status(self, set_id: str, status: str, error: str | None = None) -> None:
        self._write("UPDATE sets SET status = ?, error = ? WHERE id = ?", (status, error, set_id))

    def set_error(self, set_id: str, error: str) -> None:
        self._write("UPDATE sets SET error = ? WHERE id = ?", (error, set_id))

    def set_local_state(self, set_id: str, state: str) -> None:
        self._write("UPDATE sets SET local_state = ? WHERE id = ?", (state, set_id))

    def set_manifest(self, set_id: str, manifest_id: str | None) -> None:
        """The set's manifest is in the store (the set is still inflight until ``finish_set``)."""
        self._write("UPDATE sets SET manifest_id = ? WHERE id = ?", (manifest_id, set_id))

    def set_verified(self, set_id: str, when: float) -> None:
        self._write("UPDATE sets SET verified = ? WHERE id = ?", (when, set_id))

    # sets being deleted from the store ------------------------------------------------------
    def mark_for_deletion(self, set_id: str) -> None:
        """Recorded before the first archive goes: a killed deletion is finished by the next run."""
        self._write("INSERT OR IGNORE INTO pending_deletes VALUES (?, ?)", (set_id, time.time()))

    def pending_deletions(self, host: str | None) -> list[str]:
        """Sets whose deletion from the store was started (``host`` None: every host's)."""
        return [r[0] for r in self._query(
            "SELECT p.set_id FROM pending_deletes p JOIN sets s ON s.id = p.set_id WHERE ? IS NULL OR s.host = ?"
            " ORDER BY s.created, s.id", (host, host))]

    def forget_set(self, set_id: str) -> None:
        self._write("DELETE FROM sets WHERE id = ?", (set_id,))

    # directories ------------------------------------------------------------------------
    def dirs(self, set_id: str) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM set_dirs WHERE set_id = ? ORDER BY position", (set_id,))

    def dir_done(self, set_id: str, slug: str, tar_rc: int, bytes_in: int) -> None:
        self._write(
            "UPDATE set_dirs SET status = 'done', tar_rc = ?, bytes_in = ? WHERE set_id = ? AND slug = ?",
            (tar_rc, bytes_in, set_id, slug),
        )

    def dir_reset(self, set_id: str, slug: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM parts WHERE set_id = ? AND slug = ?", (set_id, slug))
            conn.execute("DELETE FROM files WHERE set_id = ? AND slug = ?", (set_id, slug))
            conn.execute(
                "UPDATE set_dirs SET status = 'pending', tar_rc = NULL, bytes_in = NULL, entries = NULL"
                " WHERE set_id = ? AND slug = ?",
                (set_id, slug),
            )

    # the file index: what each directory's stream holds ---------------------------------------
    def add_files(self, set_id: str, slug: str, entries) -> None:
        """Record a directory's index (replacing any earlier one) and its entry count, in one transaction."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM files WHERE set_id = ? AND slug = ?", (set_id, slug))
            conn.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             ((set_id, slug) + e.as_row() for e in entries))
            conn.execute("UPDATE set_dirs SET entries = ? WHERE set_id = ? AND slug = ?", (len(entries), set_id, slug))

    def files(self, set_id: str, slug: str) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM files WHERE set_id = ? AND slug = ? ORDER BY path", (set_id, slug))

    # parts ------------------------------------------------------------------------------
    def add_part(self, *, set_id, slug, idx, name, plain_size, plain_sha256, size, sha256, tree_hash,
                 leaves=None) -> None:
        self._write(
            "INSERT OR REPLACE INTO parts (set_id, slug, idx, name, plain_size, plain_sha256, size, sha256, tree_hash,"
            " leaves) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (set_id, slug, idx, name, plain_size, plain_sha256, size, sha256, tree_hash, leaves),
        )

    def upload_journal(self, set_id: str, slug: str, idx: int) -> "PartUploadJournal":
        return PartUploadJournal(self, (set_id, slug, idx))

    def meta_journal(self, key: str) -> "MetaJournal":
        return MetaJournal(self, f"journal:{key}")

    # retrievals from cold storage ---------------------------------------------------------
    def retrieval(self, store: str, archive_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM retrievals WHERE store = ? AND archive_id = ?", (store, archive_id))
        return rows[0] if rows else None

    def record_retrieval(self, store: str, archive_id: str, job_id: str | None, tier: str, eta_hours) -> None:
        self._write("INSERT OR REPLACE INTO retrievals VALUES (?, ?, ?, ?, ?, ?)",
                    (store, archive_id, job_id, tier, time.time(), eta_hours))

    def forget_retrieval(self, store: str, archive_id: str) -> None:
        self._write("DELETE FROM retrievals WHERE store = ? AND archive_id = ?", (store, archive_id))

    def part_uploading(self, set_id: str, slug: str, idx: int, store: str) -> None:
        self._write(
            "UPDATE parts SET status = 'uploading', store = ? WHERE set_id = ? AND slug = ? AND idx = ?",
            (store, set_id, slug, idx),
        )

    def part_stored(self, set_id: str, slug: str, idx: int, archive_id: str, store: str) -> None:
        self._write(
            "UPDATE parts SET status = 'stored', archive_id = ?, store = ? WHERE set_id = ? AND slug = ? AND idx = ?",
            (archive_id, store, set_id, slug, idx),
        )

    def parts(self, set_id: str, slug: str | None = None) -> list[sqlite3.Row]:
        if slug is None:
            return self._query("SELECT * FROM parts WHERE set_id = ? ORDER BY slug, idx", (set_id,))
        return self._query("SELECT * FROM parts WHERE set_id = ? AND slug = ? ORDER BY idx", (set_id, slug))

    def get_part(self, set_id: str, slug: str, idx: int) -> sqlite3.Row:
        return self._query("SELECT * FROM parts WHERE set_id = ? AND slug = ? AND idx = ?", (set_id, slug, idx))[0]

    def all_parts(self) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM parts ORDER BY set_id, slug, idx")

    def stored_bytes(self, store: str) -> int:
        """Bytes that complete sets keep in ``store``."""
        return self._query(
            "SELECT COALESCE(SUM(p.size), 0) FROM parts p JOIN sets s ON s.id = p.set_id"
            " WHERE s.status = 'complete' AND s.store = ?", (store,))[0][0]

    def set_totals(self, set_id: str) -> sqlite3.Row:
        return self._query(
            "SELECT COUNT(*) AS parts, COALESCE(SUM(plain_size), 0) AS plain, COALESCE(SUM(size), 0) AS stored"
            " FROM parts WHERE set_id = ?",
            (set_id,),
        )[0]


class PartUploadJournal:
    """A part's multipart upload id, kept in the catalog so a rerun resumes the upload."""

    def __init__(self, catalog: Catalog, key: tuple[str, str, int]):
        self.catalog = catalog
        self.key = key

    def load(self) -> str | None:
        return self.catalog.get_part(*self.key)["upload_id"]

    def save(self, upload_id: str) -> None:
        self.catalog._write("UPDATE parts SET upload_id = ? WHERE set_id = ? AND slug = ? AND idx = ?",
                            (upload_id, *self.key))

    def clear(self) -> None:
        self.catalog._write("UPDATE parts SET upload_id = NULL WHERE set_id = ? AND slug = ? AND idx = ?", self.key)


class MetaJournal:
    """An upload journal for archives that are not parts (manifests, catalog copies), in ``meta``."""

    def __init__(self, catalog: Catalog, key: str):
        self.catalog = catalog
        self.key = key

    def load(self) -> str | None:
        return self.catalog.meta(self.key)

    def save(self, value: str) -> None:
        self.catalog.set_meta(self.key, value)

    def clear(self) -> None:
        self.catalog._write("DELETE FROM meta WHERE key = ?", (self.key,))


def _catalog_error(path: Path, exc: sqlite3.OperationalError) -> OrchestratorError:
    if "locked" in str(exc) or "busy" in str(exc):
        return OrchestratorError(
            f"catalog {path} is locked by another process (an open sqlite3 shell?); nothing was changed"
        )
    return OrchestratorError(f"catalog {path}: {exc}")
