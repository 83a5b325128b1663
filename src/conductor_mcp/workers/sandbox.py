"""Run untrusted, model-written Python in a limited child process.

Used by the python worker (`run_program`: the code runs as `__main__`) and by the eval's python check
(`run_script` with its own harness). Every run gets:

- a fresh interpreter, `sys.executable -I -c <prelude>`, in its own process group; when it ends, the whole
  group is SIGKILLed, and so is every process still in its network namespace (one that left the group with
  setsid is caught there), so no child outlives the run;
- resource limits set by the prelude before any of the program's code: address space (RLIMIT_AS), CPU time
  (RLIMIT_CPU), file size (RLIMIT_FSIZE, which also bounds the stdout and stderr files), processes
  (RLIMIT_NPROC; Linux does not enforce it for root) and no core dumps; plus a wall-clock timeout;
- a temporary working directory, deleted afterwards, and an empty environment (PATH, HOME and TMPDIR only),
  so no API key of the server reaches the program;
- no network, unless `network="allow"`: on Linux the prelude enters new user and network namespaces
  (`unshare`), whose only interface is a loopback that is down, so even 127.0.0.1 is unreachable; where user
  namespaces are off, root falls back to a network namespace alone (a program running as root could then
  rejoin the host's network with setns). On macOS the command runs under `sandbox-exec` with a profile that
  denies network access. Where the cut cannot be made, a run under `network="deny"` is refused, not run
  (fail closed); the eval's python check runs anyway (`cut_required=False`).

It is not a full jail: the program can read and write every file the server's user can, and can use the
CPU, memory and disk up to the limits above.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Literal

import anyio
import anyio.to_thread

STDERR_TAIL_BYTES = 64 * 1024
REFUSED_EXIT = 97  # the prelude's exit status when it could not cut the network (the reason goes to the channel)
ALLOW_HINT = "set `network: allow` on this worker in the manifest to run without network isolation"
_SANDBOX_EXEC = "/usr/bin/sandbox-exec"
_MACOS_PROFILE = "(version 1)(allow default)(deny network*)"

# How the prelude treats the network: cut it or exit, cut it if it can, leave it alone.
NetMode = Literal["require", "try", "off"]


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock; CPU rlimit = ceil(timeout_s) + 1
    memory_mb: int = 512  # RLIMIT_AS
    file_size_bytes: int = 16 * 1024 * 1024  # RLIMIT_FSIZE (also bounds what stdout/stderr files can grow to)
    output_chars: int = 200_000  # stdout characters kept (the rest is cut, with a marker saying how much was cut)
    network: Literal["deny", "allow"] = "deny"

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.memory_mb <= 0 or self.file_size_bytes <= 0 or self.output_chars < 0:
            raise ValueError("memory_mb and file_size_bytes must be positive, output_chars not negative")


@dataclass(frozen=True)
class ProgramRun:
    code: str
    stdout: str
    stderr: str  # tail, at most STDERR_TAIL_BYTES
    exit_status: int | None  # None when not run (refused); negative: killed by that signal
    timed_out: bool
    seconds: float
    refused: str | None = None  # why it was not run at all (network could not be cut); None when it ran
    limits: Limits = Limits()  # what it ran under, for the messages below

    @property
    def ok(self) -> bool:
        return self.refused is None and self.exit_status == 0 and not self.timed_out

    def output(self) -> str:
        """What a workflow step shows: stdout; after a failure, the stderr tail and a line saying how it ended."""
        if self.refused is not None:
            return f"[not run: {self.refused}]"
        if self.ok:
            return self.stdout or "[the program printed nothing]"
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr.strip():
            parts += ["[stderr]", self.stderr.rstrip("\n")]
        parts.append(self.ending())
        return "\n".join(parts)

    def ending(self) -> str:
        """One bracketed line: why a run that is not ok ended as it did."""
        if self.timed_out:
            return f"[killed: timed out after {self.limits.timeout_s:g}s]"
        status = self.exit_status
        if status is None:
            return f"[not run: {self.refused}]"
        if status < 0:
            return f"[killed by signal {_signal_text(-status)}]"
        lines = self.stderr.strip().splitlines()
        if status == 1 and lines and lines[-1].startswith("MemoryError"):
            return "[exceeded the memory limit]"
        return f"[exit status {status}]"


def _signal_text(sig: int) -> str:
    known = {getattr(signal, "SIGXCPU", -1): "CPU time limit", getattr(signal, "SIGXFSZ", -1): "file size limit"}
    try:
        name = signal.Signals(sig).name
    except ValueError:
        return str(sig)
    return f"{name}: {known.get(sig) or signal.strsignal(sig) or 'unknown'}"


# ---------------------------------------------------------------------------------------------- the child

# Runs first in every child, before any code it was given. Limits are set here rather than in a preexec_fn,
# which may deadlock when the parent has threads (runs happen in worker threads). They are set before the
# unshare so that a new user namespace inherits the process cap for all of the user's tasks. When it cuts the
# network, the prelude tells the parent over a socket the program never sees (closed before its code runs):
# "net" with a file descriptor of the new namespace (which keeps its identity from being reused while the
# parent sweeps it), or "refused <why>".
PRELUDE = r"""
import os, sys

def _sandbox_limits(mem, cpu, fsize, nproc):
    try:
        import resource
    except ImportError:
        return
    for name, soft, hard in (("RLIMIT_AS", mem, mem), ("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_FSIZE", fsize, fsize),
                             ("RLIMIT_NPROC", nproc, nproc), ("RLIMIT_CORE", 0, 0)):
        kind = getattr(resource, name, None)
        if kind is None or (hard <= 0 and name != "RLIMIT_CORE"):
            continue
        try:
            cur = resource.getrlimit(kind)[1]
            if cur != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur), min(hard, cur)
            resource.setrlimit(kind, (soft, hard))
        except (OSError, ValueError):
            pass

def _sandbox_write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass

def _sandbox_cut_network():
    # New user + network namespaces: the program holds capabilities only inside them, so even as root it
    # cannot join the host's network namespace again. CLONE_NEWNET alone (root without user namespaces) is
    # the fallback. A fresh network namespace has one interface, a loopback that is down.
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception as exc:
        return "cannot load libc through ctypes (%s)" % exc
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        # keep the user's own ids visible inside, so file ownership and getuid() read as usual
        _sandbox_write("/proc/self/setgroups", "deny")
        _sandbox_write("/proc/self/uid_map", "%d %d 1" % (uid, uid))
        _sandbox_write("/proc/self/gid_map", "%d %d 1" % (gid, gid))
        return None
    both = os.strerror(ctypes.get_errno())
    if libc.unshare(CLONE_NEWNET) == 0:
        return None
    return ("the kernel would not give the program a network namespace of its own: unshare(CLONE_NEWUSER | "
            "CLONE_NEWNET) failed (%s) and unshare(CLONE_NEWNET) failed (%s)" % (both, os.strerror(ctypes.get_errno())))

def _sandbox_report(channel_fd, message, ns_fd=None):
    import socket
    with socket.socket(fileno=channel_fd) as channel:
        if ns_fd is None:
            channel.send(message.encode("utf-8", "replace"))
        else:
            socket.send_fds(channel, [message.encode()], [ns_fd])

def _sandbox_setup():
    mem, cpu, fsize, nproc = (int(a) for a in sys.argv[1:5])
    mode, channel_fd = sys.argv[5], int(sys.argv[6])
    del sys.argv[1:7]
    _sandbox_limits(mem, cpu, fsize, nproc)
    if mode == "off":
        os.close(channel_fd)
        return
    problem = _sandbox_cut_network()
    if problem is None:
        ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        _sandbox_report(channel_fd, "net", ns_fd)
        os.close(ns_fd)
    elif mode == "require":
        _sandbox_report(channel_fd, "refused " + problem)
        os._exit(97)  # REFUSED_EXIT
    else:
        os.close(channel_fd)

_sandbox_setup()
del _sandbox_limits, _sandbox_write, _sandbox_cut_network, _sandbox_report, _sandbox_setup
"""

# run_program's script: the code from main.py as a fresh __main__ module, so `if __name__ == "__main__":`
# blocks run; an uncaught exception prints its traceback without this harness's frame and exits 1.
_MAIN_SCRIPT = r"""
def _sandbox_main():
    import traceback, types
    with open("main.py", encoding="utf-8") as f:
        source = f.read()
    module = types.ModuleType("__main__")
    module.__file__ = os.path.abspath("main.py")
    sys.modules["__main__"] = module
    sys.argv = ["main.py"]
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.exit(1)

_sandbox_main()
"""


# ---------------------------------------------------------------------------------------------- running


def run_program(code: str, limits: Limits = Limits()) -> ProgramRun:
    """Blocking. Runs `code` as __main__ (so `if __name__ == "__main__":` blocks run) in a fresh temp dir."""
    return run_script(_MAIN_SCRIPT, code=code, files={"main.py": code}, limits=limits)


async def run_program_async(code: str, limits: Limits = Limits(), *,
                            limiter: anyio.CapacityLimiter | None = None) -> ProgramRun:
    """Runs run_program in a worker thread (anyio.to_thread.run_sync), bounded by `limiter` if given.

    Cancelling waits for the run to end (at most its timeout): the thread cannot be abandoned with a child
    still running.
    """
    return await anyio.to_thread.run_sync(run_program, code, limits, limiter=limiter)


def run_script(script: str, *, code: str, files: Mapping[str, str], limits: Limits, args: Sequence[str] = (),
               cut_required: bool = True) -> ProgramRun:
    """Run `script` (Python source, after the prelude) with `files` written into a fresh working directory and
    `args` as sys.argv[1:]. `code` is what the result reports as the program.

    Under network="deny", a run that cannot have its network cut is refused, unless `cut_required` is False:
    then the network is cut where this platform can, and left alone elsewhere.
    """
    if limits.network == "allow":
        return _launch(script, code, files, args, limits, "off", ())
    reason = network_isolation()
    if reason is not None and cut_required:
        return ProgramRun(code, "", "", None, False, 0.0, refused=_refusal(reason), limits=limits)
    if sys.platform == "darwin":
        wrapper = (_SANDBOX_EXEC, "-p", _MACOS_PROFILE) if reason is None else ()
        return _launch(script, code, files, args, limits, "off", wrapper)
    if not sys.platform.startswith("linux"):
        return _launch(script, code, files, args, limits, "off", ())
    run = _launch(script, code, files, args, limits, "require" if cut_required else "try", ())
    return replace(run, refused=_refusal(run.refused)) if run.refused is not None else run


def _refusal(reason: str) -> str:
    return f"network isolation is unavailable: {reason}; {ALLOW_HINT}"


@functools.cache
def network_isolation() -> str | None:
    """None when this platform can cut the child's network; else a sentence saying why not (cached)."""
    if sys.platform == "darwin":
        # Not tested in CI: sandbox-exec is deprecated by Apple but still ships with macOS.
        return None if os.access(_SANDBOX_EXEC, os.X_OK) else f"{_SANDBOX_EXEC} is not available on this Mac"
    if not sys.platform.startswith("linux"):
        return f"this server cannot cut a program's network on {sys.platform} (only on Linux and macOS)"
    probe = _launch("", "", {}, (), Limits(timeout_s=10.0), "require", ())
    if probe.refused is not None:
        return probe.refused
    if not probe.ok:
        return f"the isolation probe failed: {probe.ending()} {probe.stderr.strip()[-300:]}".strip()
    return None


def _launch(script: str, code: str, files: Mapping[str, str], args: Sequence[str], limits: Limits,
            net: NetMode, wrapper: Sequence[str]) -> ProgramRun:
    with tempfile.TemporaryDirectory(prefix="conductor-sandbox-", ignore_cleanup_errors=True) as tmp:
        for name, text in files.items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            with ours, theirs:  # closing twice is harmless; _run_group closes `theirs` once the child has it
                argv = [*wrapper, *_child_argv(script, limits, net, theirs.fileno()), *args]
                returncode, timed_out, seconds = _run_group(argv, tmp, out, err, theirs, limits.timeout_s)
                report, ns_fd = _receive_report(ours)
            if ns_fd is not None:
                try:
                    _kill_namespace(ns_fd)
                finally:
                    os.close(ns_fd)
            if returncode == REFUSED_EXIT and report.startswith("refused "):
                return ProgramRun(code, "", "", None, False, seconds, refused=report[8:], limits=limits)
            stdout = _read_capped(out, limits.output_chars, limits.file_size_bytes)
            return ProgramRun(code, stdout, _tail(err, STDERR_TAIL_BYTES), returncode, timed_out, seconds,
                              limits=limits)


def _child_argv(script: str, limits: Limits, net: NetMode, channel_fd: int) -> list[str]:
    cpu_s = math.ceil(limits.timeout_s) + 1  # the wall clock should fire first; CPU time catches busy threads
    return [sys.executable, "-I", "-c", PRELUDE + script, str(limits.memory_mb * 1024 * 1024), str(cpu_s),
            str(limits.file_size_bytes), str(_process_cap()), net, str(channel_fd)]


def _run_group(argv: list[str], cwd: str, out: IO[bytes], err: IO[bytes], channel: socket.socket,
               timeout_s: float) -> tuple[int, bool, float]:
    """Start the child in its own process group; return (exit status, timed out, seconds)."""
    env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd}  # nothing inherited: no secrets reach the program
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                process_group=0, close_fds=True, pass_fds=(channel.fileno(),))
    finally:
        channel.close()  # the child holds its own copy
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        returncode = proc.wait()
    return returncode, timed_out, time.monotonic() - started


def _receive_report(channel: socket.socket) -> tuple[str, int | None]:
    """The prelude's report, if it sent one, and the namespace file descriptor that came with it."""
    channel.setblocking(False)  # sent before any program code runs, so it is there by now or never
    try:
        message, fds, _, _ = socket.recv_fds(channel, 4096, 1)
    except OSError:
        return "", None
    return message.decode("utf-8", "replace"), (fds[0] if fds else None)


def _process_cap() -> int:
    """RLIMIT_NPROC for the child, 0 for none.

    The kernel counts every task of the user, so a fixed small cap would starve a user who already runs
    many. The system-wide task count bounds the user's, so this leaves room for 256 more while still
    stopping a fork bomb. (Linux does not enforce RLIMIT_NPROC for root.)
    """
    try:
        total = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total + 256


def _kill_group(pgid: int) -> None:
    # The program may have started children of its own; they share the group and must not outlive it.
    with contextlib.suppress(OSError):  # the group may already be empty
        os.killpg(pgid, signal.SIGKILL)


def _kill_namespace(ns_fd: int, rounds: int = 20) -> None:
    """SIGKILL every process left in the program's network namespace: the group kill misses one that called
    setsid. A few rounds: a process being killed may still show until it has exited."""
    target = _identity(os.fstat(ns_fd))
    for _ in range(rounds):
        left = [pid for pid in _pids() if _net_namespace(pid) == target]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _net_namespace(pid: int) -> tuple[int, int] | None:
    try:
        return _identity(os.stat(f"/proc/{pid}/ns/net"))
    except OSError:  # gone, a zombie, or not ours to inspect
        return None


# ---------------------------------------------------------------------------------------------- output


def _tail(stream: IO[bytes], limit: int) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - limit))
    return stream.read().decode("utf-8", "replace")


def _read_capped(stream: IO[bytes], limit: int, file_size: int, chunk: int = 1 << 16) -> str:
    """The first `limit` characters of the stream, then a marker counting what was cut. Reads in chunks, so
    memory stays bounded whatever the program printed (RLIMIT_FSIZE bounds the time it takes)."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    kept: list[str] = []
    have = cut = 0

    def take(text: str) -> None:
        nonlocal have, cut
        room = max(0, limit - have)
        kept.append(text[:room])
        have += min(room, len(text))
        cut += max(0, len(text) - room)

    while block := stream.read(chunk):
        take(decoder.decode(block))
    take(decoder.decode(b"", final=True))
    notes = []
    if cut:
        notes.append(f"[... {cut:,} more characters cut]")
    if size >= file_size:
        notes.append(f"[stdout stopped at the file size limit of {_size(file_size)}]")
    return "".join(kept) + "".join("\n" + note for note in notes)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"

