"""A finished `tunelab train` leaves without the interpreter's teardown: exit handlers still run, output is
flushed, the exit code is kept; a process with other live threads exits the normal way."""

from __future__ import annotations

import json
import subprocess
import sys


# an object whose destructor runs only when the interpreter is torn down (a normal exit)
TEARDOWN = ("class Teardown:\n"
            "    def __del__(self):\n"
            "        print('torn down', flush=True)\n"
            "keep = Teardown()\n")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TEARDOWN + code], capture_output=True, text=True, timeout=300)


def test_fast_exit_runs_handlers_flushes_and_keeps_the_code():
    out = run_python(
        "import atexit, sys\n"
        "from tunelab.utils.exit import fast_exit\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered line')\n"          # stdout is a pipe here: block-buffered until flushed
        "sys.stderr.write('to stderr')\n"
        "fast_exit(3)\n"
        "print('never')\n")
    assert out.returncode == 3
    assert out.stdout.splitlines() == ["buffered line", "handler ran"]
    assert out.stderr == "to stderr"


def test_another_live_thread_means_the_normal_exit():
    out = run_python(  # a fresh process: other tests may leave threads of their own in this one
        "import threading, time\n"
        "from tunelab.utils.exit import can_exit_fast\n"
        "alone = can_exit_fast()\n"
        "stop = threading.Event()\n"
        "worker = threading.Thread(target=stop.wait)\n"
        "worker.start()\n"
        "with_worker = can_exit_fast()\n"      # a normal exit would wait for it; leaving now would cut it off
        "stop.set(); worker.join()\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "with_daemon = can_exit_fast()\n"      # daemon threads never hold a normal exit either
        "print(alone, with_worker, with_daemon)\n")
    assert out.stdout.splitlines()[0] == "True False True", out.stderr


def test_an_attached_profiler_means_the_normal_exit():
    """`python -m cProfile -m tunelab train ...` writes its report after the command returns: no fast exit then."""
    out = run_python(
        "import cProfile\n"
        "from tunelab.utils.exit import can_exit_fast\n"
        "profiler = cProfile.Profile()\n"
        "profiler.enable()\n"
        "profiled = can_exit_fast()\n"
        "profiler.disable()\n"
        "print(can_exit_fast(), profiled)\n")
    assert out.stdout.splitlines()[0] == "True False", out.stderr


def test_train_command_exits_fast_with_its_results_written(tmp_path, addition_file):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({
        "model": {"name": "tiny-llama"}, "data": {"train": str(addition_file), "val_size": 0.0},
        "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "batch_size": 4, "report": False},
        "output_dir": str(tmp_path / "run")}))
    out = run_python(
        "import atexit, sys\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        f"sys.argv = ['tunelab', 'train', {str(config)!r}, '--quiet']\n"
        "from tunelab.cli import main\n"
        "main()\n"
        "print('after main: the interpreter was not left')\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str(tmp_path / "run"), "handler ran"]   # no teardown, handlers ran
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_failed_train_command_exits_the_normal_way_with_its_code(tmp_path):
    out = run_python(
        "import sys\n"
        f"sys.argv = ['tunelab', 'train', {str(tmp_path / 'missing.yaml')!r}]\n"
        "from tunelab.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('SystemExit', e.code)\n")
    assert out.stdout.splitlines()[0].startswith("SystemExit") and "SystemExit 0" not in out.stdout
    assert out.stdout.splitlines()[-1] == "torn down"                             # Python's own exit
