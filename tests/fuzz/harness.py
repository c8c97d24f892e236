"""Run fuzz cases in-process and check each against the hardening promises (docs/reliability.md).

A case passes when:
  * it is refused: a non-zero exit (CLI) or a 4xx status (HTTP); a case marked `must_fail=False` may also succeed;
  * nothing escaped: no uncaught exception (what the real command prints as a traceback), no "Traceback" text;
  * the refusal is clear: the CLI's first error line starts with `error:` and (with the problem lines indented
    under it) names the file or config key of the case, plus a line/record number where the case asks for one;
    at most 25 lines, none over 1,000 characters (a huge record is not echoed back); an HTTP error is a JSON body
    whose message names the field, file or body;
  * nothing was written outside the run folder (CLI: runs/fuzz; studio: its data dir), nothing at all when the
    input was refused, and no temporary or partial file is left behind.

The CLI runs through typer's CliRunner on the real `tunelab` app: `tunelab.cli.main()` is only `app()`, so the
error mapping the user sees is the same one exercised here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .cases import OUTSIDE, RUN_DIR, WORK, Case

CASE_TIMEOUT_S = 30  # a case that hangs fails instead of stalling the suite
MAX_LINES, MAX_LINE_CHARS = 25, 1000
TEMP_NAME = re.compile(r"(\.tmp|\.part|\.partial|\.incomplete|~)$|^\.?tmp[\w-]*$|\.tmp\.|^\.(upload|tmp|part)",
                       re.IGNORECASE)
LINE_REF = re.compile(r"(:\d+\b|\bline \d+|\[\d+\]|\brow \d+|\brecord \d+|\bbyte \d+|\boffset \d+)", re.IGNORECASE)
LEAK = re.compile(r"Traceback \(most recent call last\)|^\s*File \"[^\"]+\", line \d+", re.MULTILINE)


@dataclass
class Outcome:
    case: Case
    problems: list[str] = field(default_factory=list)
    detail: str = ""  # exit code / status and the first error line, for the report
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return " ".join(f"{self.case.id}: {'; '.join(self.problems)} | {self.detail}".split())[:400]


# ---------------------------------------------------------------------------------------------------- sandbox
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(p for p, v in after.items() if before.get(p) != v)


def _fs_problems(case: Case, before: dict, after: dict, refused: bool, allowed: tuple[str, ...]) -> list[str]:
    """Files written outside the allowed places (nothing when refused, beyond `allowed`), and leftovers."""
    problems = []
    changed = _changed(before, after)
    run = f"{WORK}/{RUN_DIR}/"
    outside = [p for p in changed if not p.startswith(run)
               and not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)]
    if outside:
        problems.append(f"wrote outside the run folder: {', '.join(outside[:4])}")
    # a refused input leaves no run behind: a run folder holding more than a log is a half-written run
    partial = [p for p in changed if p.startswith(run) and not p.endswith(".log")] if refused else []
    if partial:
        problems.append(f"left a partial run folder: {', '.join(partial[:4])}")
    temps = [p for p in after if TEMP_NAME.search(os.path.basename(p)) and p not in before]
    if temps:
        problems.append(f"left half-written files: {', '.join(temps[:4])}")
    gone = [p for p in before if p not in after]
    if gone:
        problems.append(f"removed input files: {', '.join(gone[:4])}")
    return problems


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (no-op off the main thread or on Windows)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def boom(signum, frame):
        raise TimeoutError(f"case ran longer than {seconds}s")

    try:
        old = signal.signal(signal.SIGALRM, boom)
    except ValueError:  # not the main thread
        yield
        return
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make_sandbox(root: Path, case: Case, index: int) -> Path:
    box = root / f"c{index:05d}"
    (box / WORK).mkdir(parents=True)
    (box / OUTSIDE).mkdir()
    for rel, content in case.files.items():
        p = box / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return box


# ---------------------------------------------------------------------------------------------------- CLI
def _message_block(text: str) -> list[str]:
    """The `error:` line and the indented problem lines under it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().lower().startswith("error"):
            block = [line]
            for nxt in lines[i + 1:]:
                if nxt.startswith((" ", "\t")) and nxt.strip():
                    block.append(nxt)
                else:
                    break
            return block
    return []


def check_message(case: Case, text: str) -> list[str]:
    """Is `text` (everything the command printed) one clear refusal of this case?"""
    problems = []
    if LEAK.search(text):
        problems.append("traceback in output")
    block = _message_block(text)
    if not block:
        tail = text.strip().splitlines()[-1:] or ["(no output)"]
        return problems + [f"no 'error:' line (last line: {tail[0][:120]!r})"]
    msg = "\n".join(block)
    if case.names and not any(n in msg for n in case.names):
        problems.append(f"message names none of {list(case.names)}")
    if case.needs_line and not LINE_REF.search(msg):
        problems.append("message gives no line or record number")
    if len(block) > MAX_LINES or any(len(line) > MAX_LINE_CHARS for line in block):
        problems.append(f"message too long ({len(block)} lines, longest {max(map(len, block))} chars)")
    return problems


def run_cli(case: Case, root: Path, index: int, run_dir: Path | None = None) -> Outcome:
    """Run one CLI case in a fresh sandbox under `root`; `run_dir` is the run folder `{RUN}` in argv stands for."""
    t = time.monotonic()
    out = _run_cli(case, root, index, run_dir)
    out.seconds = time.monotonic() - t
    return out


def _run_cli(case: Case, root: Path, index: int, run_dir: Path | None = None) -> Outcome:
    from typer.testing import CliRunner

    from tunelab.cli import app

    box = make_sandbox(root, case, index)
    before = _snapshot(box)
    run_before = _snapshot(run_dir) if run_dir else {}
    argv = [a.replace("{RUN}", str(run_dir)) for a in case.argv or []]
    cwd = os.getcwd()
    os.chdir(box / WORK)
    runner = CliRunner()
    try:
        with _deadline(CASE_TIMEOUT_S):
            result = runner.invoke(app, argv, catch_exceptions=True)
    except TimeoutError as e:
        os.chdir(cwd)
        return Outcome(case, [f"hang: {e}"])
    finally:
        os.chdir(cwd)
    out = Outcome(case)
    text = result.output
    try:
        text = result.stderr + "\n" + result.stdout
    except ValueError:
        pass
    exc = result.exception
    block = _message_block(text)
    out.detail = f"exit {result.exit_code}: " + (block[0][:200] if block else repr(text.strip()[-160:]))
    if exc is not None and not isinstance(exc, SystemExit):
        out.problems.append(f"uncaught {type(exc).__name__}: {str(exc)[:160]}")
        out.detail = f"exit {result.exit_code}"
    refused = result.exit_code != 0
    if not refused and case.must_fail:
        out.problems.append("accepted bad input (exit 0)")
    if refused and not out.problems:
        out.problems += check_message(case, text)
    allowed = (f"{WORK}/{RUN_DIR}",) + tuple(f"{WORK}/{a}" for a in case.allowed_out)
    out.problems += _fs_problems(case, before, _snapshot(box), refused, allowed)
    if run_dir and refused and _changed(run_before, _snapshot(run_dir)):
        changed = _changed(run_before, _snapshot(run_dir))
        out.problems.append(f"changed the run folder it read: {', '.join(changed[:4])}")
    shutil.rmtree(box, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------- HTTP
def http_message(body: bytes) -> str | None:
    """The error message of a JSON error body (OpenAI style {"error": {"message"}}, {"error": str} or {"detail"})."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    err = data.get("error", data.get("detail"))
    if isinstance(err, dict):
        err = err.get("message")
    if isinstance(err, list):  # FastAPI's validation detail: [{loc, msg}]
        err = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" if isinstance(e, dict) else str(e)
                        for e in err)
    return err if isinstance(err, str) and err.strip() else None


def run_http(case: Case, client, box: Path, allowed: tuple[str, ...], prepare: Callable[[str], str]) -> Outcome:
    t = time.monotonic()
    out = _run_http(case, client, box, allowed, prepare)
    out.seconds = time.monotonic() - t
    return out


def _run_http(case: Case, client, box: Path, allowed: tuple[str, ...], prepare: Callable[[str], str]) -> Outcome:
    req = case.http or {}
    before = _snapshot(box)
    kwargs: dict = {"headers": req.get("headers") or {}}
    if req.get("params"):
        kwargs["params"] = req["params"]
    upload = req.get("upload")
    body = req.get("json")
    if upload and upload[0] == "raw":
        kwargs["content"] = upload[1]
        kwargs["headers"] = {**kwargs["headers"], "content-type": "application/json"}
    elif upload:
        kwargs["files"] = {"file": (upload[0], upload[1], "application/octet-stream")}
    elif req.get("content") is not None:
        kwargs["content"] = req["content"]
        kwargs["headers"] = {**kwargs["headers"], "content-type": "application/json"}
    elif body is not None:
        kwargs["content"] = prepare(json.dumps(body, allow_nan=True))
        kwargs["headers"] = {**kwargs["headers"], "content-type": "application/json"}
    out = Outcome(case)
    try:
        with _deadline(CASE_TIMEOUT_S):
            resp = client.request(req.get("method", "POST"), prepare(req["path"]), **kwargs)
    except TimeoutError as e:
        return Outcome(case, [f"hang: {e}"])
    except Exception as e:  # the app raised through the test client: a 500 with a traceback in the server log
        out.problems.append(f"uncaught {type(e).__name__}: {str(e)[:160]}")
        out.problems += _fs_problems(case, before, _snapshot(box), True, allowed)
        return out
    msg = http_message(resp.content)
    out.detail = f"{resp.status_code}: {(msg or resp.text[:160]).splitlines()[0][:200] if (msg or resp.text) else ''}"
    refused = 400 <= resp.status_code < 500
    if resp.status_code >= 500:
        out.problems.append(f"server error {resp.status_code}")
    elif not refused and case.must_fail:
        out.problems.append(f"accepted bad input ({resp.status_code})")
    if refused:
        if "Traceback" in resp.text:
            out.problems.append("traceback in response")
        if msg is None:
            out.problems.append("error body has no message")
        elif case.names and not any(n.lower() in resp.text.lower() for n in case.names):
            out.problems.append(f"message names none of {list(case.names)}")
    out.problems += _fs_problems(case, before, _snapshot(box), refused, allowed)
    return out


def new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="tunelab-fuzz-"))
