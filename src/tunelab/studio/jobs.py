"""Workers: each job is `tunelab train jobs/<id>/config.yaml` (or, for an eval job, `tunelab eval RUN
--data FILE --compare base`) in its own subprocess.

The studio never trains in its own process, so a crash or a cancel cannot take the server
down, and what the studio runs is exactly what the CLI runs. A watcher thread starts queued
jobs while a slot is free, reaps finished ones, and on start-up re-attaches to workers that
outlived a previous studio (pid still alive and running this job's config) or marks them
interrupted with their last checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.studio import evals
from tunelab.studio.paths import TOKEN_ENV, NotFound, Settings, StudioError
from tunelab.studio.store import ACTIVE, FINISHED, JobStore

# Exit code of `tunelab train` after SIGINT/SIGTERM saved a checkpoint.
EXIT_INTERRUPTED = 130


def train_command(config_path: Path) -> list[str]:
    """The worker command line: the CLI's `tunelab train`, with this interpreter (same venv)."""
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'tunelab'; from tunelab.cli import main; main()",
            "train", str(config_path)]


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest `checkpoints/step-*` folder of a run, or None."""
    steps = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
    return str(steps[-1]) if steps else None


def pid_runs(pid: int | None, marker: Path | str) -> bool:
    """True when `pid` is alive and its command line names `marker` (a training job's config, an eval
    job's run folder): a guard against a reused pid."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():
        try:
            return str(marker) in cmdline.read_bytes().decode(errors="replace")
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Worker:
    """How one kind of job runs: its command line, the text that identifies its process, its log and result."""

    argv: Callable[[JobRunner, dict], list[str]]
    marker: Callable[[JobRunner, dict], str]
    log: str
    done: Callable[[dict], str]


def _eval_spec(job: dict) -> dict:
    return yaml.safe_load(job["config_yaml"])


def _eval_done(job: dict) -> str:
    result = evals.result_of(Path(job["run_dir"]), job["started"])
    return f"done: eval/{result}" if result else "done"


WORKERS: dict[str, Worker] = {
    "train": Worker(argv=lambda r, job: train_command(r.config_path(job["id"])),
                    marker=lambda r, job: str(r.config_path(job["id"])), log="train.log", done=lambda job: "done"),
    "eval": Worker(argv=lambda r, job: evals.eval_command(_eval_spec(job), Path(job["run_dir"])),
                   marker=lambda r, job: str(Path(job["run_dir"])), log="eval.log", done=_eval_done),
}


class JobRunner:
    """Starts, watches and stops training subprocesses for the jobs in a JobStore."""

    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- paths -------------------------------------------------------------------------------
    def job_dir(self, job_id: int) -> Path:
        return self.settings.jobs / str(job_id)

    def config_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / "config.yaml"

    def log_path(self, job_id: int) -> Path:
        job = self.store.get(job_id)
        return self.job_dir(job_id) / WORKERS[job["kind"] if job else "train"].log

    def _marker(self, job: dict) -> str:
        return WORKERS[job["kind"]].marker(self, job)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover jobs left by a previous studio, then watch the queue in a daemon thread."""
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; workers keep running and are picked up again by the next studio."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - keep the watcher alive; the error shows in the server log
                print(f"studio: job watcher error: {e!r}", file=sys.stderr)
            self._stop.wait(self.settings.poll_s)

    def recover(self) -> None:
        """After a restart: re-attach to live workers, mark dead ones interrupted with their checkpoint."""
        for job in self.store.list(ACTIVE):
            if pid_runs(job["pid"], self._marker(job)):
                continue  # still training: tick() watches it by pid
            self._finish_orphan(job)

    def _finish_orphan(self, job: dict) -> None:
        run_dir = Path(job["run_dir"])
        summary = run_dir / "summary.json"
        ckpt = last_checkpoint(run_dir) if job["kind"] == "train" else None
        if job["kind"] == "eval":
            self.store.update(job["id"], status="interrupted" if job["status"] == "running" else "cancelled",
                              finished=time.time(), pid=None, message="worker ended while the studio was away; "
                              "resume queues the evaluation again")
        elif summary.is_file() and job["status"] != "cancelling":
            self.store.update(job["id"], status="completed", finished=time.time(), pid=None,
                              message="finished while the studio was away")
        else:
            self.store.update(job["id"], status="interrupted" if job["status"] == "running" else "cancelled",
                              finished=time.time(), pid=None, checkpoint=ckpt,
                              message=f"worker ended while the studio was away; last checkpoint: {ckpt or 'none'}")

    def tick(self) -> None:
        """One pass: reap finished workers, then start queued jobs while slots are free."""
        with self._lock:
            for job in self.store.list(ACTIVE):
                proc = self._procs.get(job["id"])
                if proc is None:
                    if not pid_runs(job["pid"], self._marker(job)):
                        self._finish_orphan(job)
                    continue
                rc = proc.poll()
                if rc is not None:
                    self._procs.pop(job["id"])
                    self._finish(job, rc)
            running = len(self.store.list(ACTIVE))
            for job in self.store.list(("queued",)):
                if running >= self.settings.slots:
                    break
                self._launch(job)
                running += 1

    def _launch(self, job: dict) -> None:
        cfg = self.config_path(job["id"])
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(job["config_yaml"], encoding="utf-8")
        worker = WORKERS[job["kind"]]
        log = (self.job_dir(job["id"]) / worker.log).open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120", "NO_COLOR": "1"}
        env.pop(TOKEN_ENV, None)  # a worker has no use for the studio's token
        # Own session: a Ctrl-C on the studio does not reach the workers; they outlive a restart.
        try:
            proc = subprocess.Popen(worker.argv(self, job), cwd=self.settings.data_dir, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as e:
            self.store.update(job["id"], status="failed", finished=time.time(), message=f"could not start: {e}")
            return
        finally:
            log.close()
        self._procs[job["id"]] = proc
        self.store.update(job["id"], status="running", pid=proc.pid, started=time.time(), returncode=None,
                          message=None, finished=None)

    def _finish(self, job: dict, rc: int) -> None:
        kind = job["kind"]
        ckpt = last_checkpoint(Path(job["run_dir"])) if kind == "train" else None
        if rc == 0:
            status, msg = "completed", WORKERS[kind].done(job)
        elif rc == EXIT_INTERRUPTED or rc == -signal.SIGINT:
            status = "cancelled" if job["status"] == "cancelling" else "interrupted"
            msg = (f"stopped; checkpoint saved at {ckpt}" if ckpt else
                   "stopped before the first checkpoint" if kind == "train" else "stopped")
        else:
            status, msg = "failed", f"tunelab {kind} exited with code {rc}; see the log"
        self.store.update(job["id"], status=status, returncode=rc, finished=time.time(), pid=None,
                          checkpoint=ckpt, message=msg)

    # ---- actions -----------------------------------------------------------------------------
    def cancel(self, job_id: int) -> dict:
        """Queued: drop it. Running: SIGINT, so the run saves a checkpoint and exits (resumable)."""
        job = self._get(job_id)
        if job["status"] == "queued":
            self.store.update(job_id, status="cancelled", finished=time.time(), message="cancelled before it started")
        elif job["status"] == "running":
            self.store.update(job_id, status="cancelling")
            try:
                os.kill(job["pid"], signal.SIGINT)
            except ProcessLookupError:
                pass
        else:
            raise StudioError(f"job {job_id} is {job['status']}; only queued or running jobs can be cancelled")
        return self._get(job_id)

    def resume(self, job_id: int) -> dict:
        """Queue a stopped job again with train.resume=auto: it continues from its last checkpoint."""
        job = self._get(job_id)
        if job["status"] not in FINISHED or job["status"] == "completed":
            raise StudioError(f"job {job_id} is {job['status']}; only cancelled, interrupted or failed jobs resume")
        if job["kind"] == "eval":  # an evaluation has no checkpoint: it starts over
            self.store.update(job_id, status="queued", message="queued to run the evaluation again")
            return self._get(job_id)
        data = yaml.safe_load(job["config_yaml"])
        data.setdefault("train", {})["resume"] = "auto"
        self.store.update(job_id, status="queued", config_yaml=yaml.safe_dump(data, sort_keys=False),
                          message="queued to resume from its last checkpoint")
        return self._get(job_id)

    def submit_eval(self, name: str, run_dir: Path, stage: Path, data: str | Path,
                    spec: Callable[[str], dict]) -> int:
        """Queue an eval job whose staged data (if any) moves to jobs/<id>/; `spec(data)` builds its YAML.

        Holding the watcher's lock, the job cannot start before its data and YAML are in place.
        """
        with self._lock:
            job_id = self.store.add(name, "", str(run_dir), kind="eval")
            job_dir = self.job_dir(job_id)
            if job_dir.exists():  # left by a queue that was deleted: the id is reused
                import shutil

                shutil.rmtree(job_dir)
            stage.rename(job_dir)
            rel = str(job_dir.relative_to(self.settings.data_dir) / Path(data).name) if Path(data).is_absolute() \
                else str(data)
            text = yaml.safe_dump(spec(rel), sort_keys=False, allow_unicode=True)
            self.store.update(job_id, config_yaml=text)
            self.config_path(job_id).write_text(text, encoding="utf-8")
        return job_id

    def _get(self, job_id: int) -> dict:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def log_tail(self, job_id: int, max_bytes: int = 20000) -> str:
        """The end of a job's train.log (progress bars' carriage returns folded into lines)."""
        p = self.log_path(job_id)
        if not p.is_file():
            return ""
        with p.open("rb") as f:
            f.seek(max(0, p.stat().st_size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(line.split("\r")[-1] for line in text.split("\n"))
