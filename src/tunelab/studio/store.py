"""The job queue: one SQLite table, so a restart of the studio loses no job.

A job row holds its kind (`train`: `tunelab train CONFIG`, `eval`: `tunelab eval RUN ...`), the
YAML it runs (a train config, or an eval spec), the run folder it writes, its worker's pid and
its state:

    queued -> running -> completed | failed | cancelled | interrupted
                 \\-> cancelling (SIGINT sent; the run saves a checkpoint and exits 130)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

ACTIVE = ("running", "cancelling")
FINISHED = ("completed", "failed", "cancelled", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',
    status TEXT NOT NULL,
    config_yaml TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    pid INTEGER,
    returncode INTEGER,
    message TEXT,
    checkpoint TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
)
"""
COLUMNS = ("id", "name", "kind", "status", "config_yaml", "run_dir", "pid", "returncode", "message", "checkpoint",
           "created", "started", "finished")


class JobStore:
    """Thread-safe access to the jobs table (one connection, one lock; the studio is one process)."""

    def __init__(self, path: str | Path):
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(SCHEMA)
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        if "kind" not in have:  # a queue written before eval jobs existed: every job there trains
            self._conn.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train'")
        self._lock = threading.Lock()

    def add(self, name: str, config_yaml: str, run_dir: str, kind: str = "train") -> int:
        """Queue a job of `kind` (train or eval); returns its id."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO jobs (name, kind, status, config_yaml, run_dir, created) VALUES (?, ?, 'queued', ?, ?, ?)",
                (name, kind, config_yaml, run_dir, time.time()))
            return int(cur.lastrowid)

    def update(self, job_id: int, **fields: Any) -> None:
        """Set columns of one job."""
        bad = [k for k in fields if k not in COLUMNS or k == "id"]
        if bad:
            raise KeyError(f"unknown job column(s): {', '.join(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: int) -> dict | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(zip(COLUMNS, row)) if row else None

    def list(self, status: tuple[str, ...] | None = None) -> list[dict]:
        """Jobs, newest first (or oldest first when filtering by status, the queue order)."""
        q = f"SELECT {', '.join(COLUMNS)} FROM jobs"
        args: tuple = ()
        if status:
            q += f" WHERE status IN ({', '.join('?' * len(status))}) ORDER BY id"
            args = status
        else:
            q += " ORDER BY id DESC"
        with self._lock:
            rows = self._conn.execute(q, args).fetchall()
        return [dict(zip(COLUMNS, r)) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
