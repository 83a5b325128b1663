"""The sandbox on real programs in real child processes: output, failures, limits, secrets and the network."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from conductor_mcp.workers.sandbox import Limits, ProgramRun, network_isolation, run_program, run_program_async

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the sandbox runs on POSIX systems")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], within_s: float = 3.0) -> list[int]:
    """The pids still alive after waiting up to `within_s` for the kernel to finish killing them."""
    deadline = time.monotonic() + within_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def test_prints_and_runs_as_main() -> None:
    run = run_program("print('hello')\nif __name__ == '__main__':\n    print('as main')\n")
    assert run.ok, run.output()
    assert (run.stdout, run.exit_status, run.timed_out, run.refused) == ("hello\nas main\n", 0, False, None)
    assert run.output() == "hello\nas main\n"
    assert run_program("x = 1").output() == "[the program printed nothing]"


def test_raises() -> None:
    run = run_program("print('before')\ndef f():\n    raise ValueError('boom')\nf()\n")
    assert not run.ok
    assert run.exit_status == 1
    out = run.output()
    assert out.startswith("before\n[stderr]\nTraceback (most recent call last):")
    assert 'File "main.py", line 4, in <module>' in out
    assert "ValueError: boom" in out
    assert out.endswith("\n[exit status 1]")
    assert run_program("import sys\nsys.exit(3)").output() == "[exit status 3]"


def test_infinite_loop_is_stopped_by_the_time_limit() -> None:
    run = run_program("while True:\n    pass\n", Limits(timeout_s=2))
    assert run.timed_out and not run.ok
    assert 1.9 <= run.seconds < 4.0
    assert run.output().endswith("[killed: timed out after 2s]")


def test_cpu_limit_kills_with_sigxcpu() -> None:
    # the program lowers its own CPU limit so the signal comes before the wall clock
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n"
    run = run_program(code, Limits(timeout_s=5))
    assert not run.timed_out
    assert run.exit_status == -signal.SIGXCPU
    assert run.output() == "[killed by signal SIGXCPU: CPU time limit]"


def test_fork_bomb_ends_and_leaves_no_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    # Guarded so that the test machine survives even where RLIMIT_NPROC is not enforced (root): a process
    # stops forking once about 100 have noted their pids. The group kill must end them all.
    code = f"""
import os, time
PIDS = {str(pid_file)!r}
def note():
    fd = os.open(PIDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)
note()
while True:
    if os.path.getsize(PIDS) > 100 * 8:
        time.sleep(0.05)
        continue
    try:
        if os.fork() == 0:
            note()
    except OSError:
        time.sleep(0.01)
"""
    run = run_program(code, Limits(timeout_s=2))
    assert run.timed_out
    assert run.seconds < 5.0
    pids = [int(line) for line in pid_file.read_text().split()]
    assert len(pids) > 10
    assert wait_gone(pids) == []


def test_a_process_that_left_the_group_is_killed_too(tmp_path: Path) -> None:
    if network_isolation() is not None:
        pytest.skip("without its own network namespace, a program's setsid child escapes the group kill")
    pid_file = tmp_path / "pid"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    with open({str(pid_file)!r}, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
while not os.path.exists({str(pid_file)!r}):
    time.sleep(0.01)
print("left one behind")
"""
    run = run_program(code, Limits(timeout_s=5))
    assert run.ok, run.output()
    pid = int(pid_file.read_text())
    try:
        assert wait_gone([pid]) == []
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_huge_output_is_capped(tmp_path: Path) -> None:
    code = "import sys\nline = 'x' * 999_999 + '\\n'\nfor _ in range(50):\n    sys.stdout.write(line)\n"  # 50 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = run_program(code, Limits(file_size_bytes=64 * 1024 * 1024))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / (1024 if sys.platform != "darwin"
                                                                              else 1024 * 1024)
    assert run.ok, run.output()
    assert run.stdout == "x" * 200_000 + "\n[... 49,800,000 more characters cut]"
    assert grown_mb < 20  # the parent never held the 50 MB
    # under the default 16 MiB file size limit the program fails to write the rest, and says so
    run = run_program(code)
    assert not run.ok
    assert run.stdout.endswith("[stdout stopped at the file size limit of 16 MiB]")
    assert "File too large" in run.stderr


def test_environment_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUCTOR_TEST_SECRET", "s3cret")
    run = run_program("import os\nprint(dict(os.environ))\nprint(os.getcwd())")
    assert run.ok, run.output()
    assert "s3cret" not in run.output()
    assert "CONDUCTOR_TEST_SECRET" not in run.output()
    env_line, cwd = run.stdout.splitlines()
    assert "'PATH'" in env_line and f"'HOME': '{cwd}'" in env_line
    assert not Path(cwd).exists()  # the working directory was removed


@pytest.fixture
def local_server() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 (the kernel completes the handshake; nothing is accepted)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def connect_program(port: int, ran_file: Path) -> str:
    return f"""
import socket
open({str(ran_file)!r}, "w").close()
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("connected")
except OSError as exc:
    print("blocked:", exc)
"""


def test_network_is_cut_or_the_run_refused(local_server: int, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    run = run_program(connect_program(local_server, ran))
    if network_isolation() is None:
        assert run.ok, run.output()
        assert run.stdout.startswith("blocked:"), run.stdout
    else:
        assert run.refused is not None and "set `network: allow` on this worker" in run.refused
        assert run.exit_status is None and not ran.exists()  # fail closed: never started
        assert run.output() == f"[not run: {run.refused}]"
    allowed = run_program(connect_program(local_server, ran), Limits(network="allow"))
    assert allowed.ok and allowed.stdout == "connected\n", allowed.output()


# Runs argv[1] (Python source) in a user namespace where no namespace can be made: new user namespaces are
# capped at 0 and the process keeps no capabilities (SECBIT_NOROOT: none regained at exec). Exit 77: this
# machine cannot build that place.
NO_NAMESPACES = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(77)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    except OSError:
        os._exit(77)
    if libc.prctl(28, 1 | 2, 0, 0, 0) != 0:  # PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED
        os._exit(77)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
os.read(ready_r, 1)
try:
    for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid), ("gid_map", "0 %d 1" % gid)):
        with open("/proc/%d/%s" % (pid, name), "w") as f:
            f.write(text)
finally:
    os.write(go_w, b"x")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
def test_without_isolation_a_run_is_refused_not_run(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    inner = f"""
import json
from conductor_mcp.evals.grading import PythonCheck, grade
from conductor_mcp.workers.sandbox import Limits, network_isolation, run_program
denied = run_program("open({str(ran)!r}, 'w').close()")
allowed = run_program("print('hello')", Limits(network="allow"))
graded = grade(PythonCheck(tests="assert f(2) == 4", entry_point="f"), "def f(x):\\n    return 2 * x")
print(json.dumps([network_isolation(), denied.refused, denied.output(), allowed.stdout, graded.passed]))
"""
    proc = subprocess.run([sys.executable, "-c", NO_NAMESPACES, inner], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode == 77:
        pytest.skip("cannot build a user namespace without namespaces here")
    assert proc.returncode == 0, proc.stderr
    reason, refused, output, allowed, graded = json.loads(proc.stdout)
    assert reason.startswith("the kernel would not give the program a network namespace of its own")
    assert refused == f"network isolation is unavailable: {reason}; set `network: allow` on this worker in the " \
                      "manifest to run without network isolation"
    assert output == f"[not run: {refused}]"
    assert not ran.exists()  # fail closed: the program never started
    assert allowed == "hello\n"  # network: allow still runs
    assert graded  # the eval's python check still runs: suites are the user's own


def test_network_isolation_here() -> None:
    reason = network_isolation()
    assert reason is None or reason.strip()
    assert network_isolation() is reason  # probed once


def test_memory_limit() -> None:
    run = run_program("x = bytearray(256 * 1024 * 1024)\nprint('allocated')", Limits(memory_mb=64))
    assert not run.ok
    assert "allocated" not in run.stdout
    assert run.output().endswith("MemoryError\n[exceeded the memory limit]")


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=0)


@pytest.mark.anyio
async def test_run_program_async_in_a_limiter() -> None:
    limiter = anyio.CapacityLimiter(2)
    runs: list[ProgramRun] = []

    async def one(i: int) -> None:
        runs.append(await run_program_async(f"print({i} * 2)", limiter=limiter))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert sorted(r.stdout for r in runs) == ["0\n", "2\n", "4\n"]
