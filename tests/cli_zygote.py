"""Run `computeflow` commands in real processes without paying Python's start-up each time.

The tests run the CLI as an operator does: a process of its own, with argv,
stdin, stdout, stderr and an exit status (or the signal that killed it). A
fresh `python -m conductor.cli` spends ~1.5 s of CPU importing SQLAlchemy,
taskflow and oslo.config before it reads its arguments, and the suite runs it
well over a thousand times: that was a third of CI's CPU on two cores.

So each pytest worker starts one zygote: a process that imports the CLI's
modules once and then waits on a Unix socket. Each command forks it; the
child takes the caller's stdin/stdout/stderr (passed as file descriptors),
environment and working directory, and runs `conductor.cli` as `__main__`,
exactly what `python -m conductor.cli` runs after its imports. A crash test's
SIGKILL kills that child alone, and the caller sees -9 as with Popen.

What a fork cannot give is a different interpreter start (PYTHONMALLOC,
interpreter flags): tests that need one start `python -m conductor.cli`
themselves. COMPUTEFLOW_TEST_CLI=exec runs every command that way.

Protocol, one connection per command: the caller sends one JSON line (argv,
cwd, env) with three file descriptors; the zygote forks a waiter that forks
the command, writes "pid N", waits for it and writes "exit CODE" (negative:
the signal), as Popen reports it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the CLI's commands import, some only when they run (the service, the
# runner, the drivers, the databases' clients, the migrations).
PRELOAD = (
    "conductor.cli",
    "conductor.api",
    "conductor.service",
    "conductor.runner",
    "conductor.recovery",
    "conductor.reconcile",
    "persistence.taskflow_backend",
    "drivers.fake",
    "drivers.libvirt.driver",
    "taskflow.engines",
    "psycopg2",
    "pymysql",
    "redis",
    "alembic.command",
)


# -- the zygote ----------------------------------------------------------------
def serve(path: str) -> None:
    """Import the CLI, then fork one command per connection, forever."""
    for name in PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a fork copies one thread: the others' locks would stay held
        raise RuntimeError(f"a preloaded module started a thread: {threading.enumerate()}")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiters reap themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        # Its stdin is a pipe only its pytest worker writes to: at EOF that worker
        # has ended, however it ended, and so does the zygote. (PR_SET_PDEATHSIG
        # would follow the worker's thread that started it, not the process.)
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable:
            return
        conn, _ = listener.accept()
        try:
            msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(msg)
        except (OSError, ValueError):
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _wait_for_command(conn, request, fds)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)


def _wait_for_command(conn: socket.socket, request: dict, fds: list[int]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_command(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        conn.sendall(f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        os._exit(0)


def _run_command(request: dict, fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [str(REPO / "conductor" / "cli.py"), *request["args"]]
        sys.orig_argv = [sys.executable, "-m", "conductor.cli", *request["args"]]  # what a restart in place runs
        # As under `python -m`: cli.py runs as __main__ only, not also as conductor.cli.
        sys.modules.pop("conductor.cli", None)
        conductor = sys.modules["conductor"]
        if hasattr(conductor, "cli"):
            delattr(conductor, "cli")
        try:
            runpy.run_module("conductor.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = _exit_code(e.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# -- the caller ----------------------------------------------------------------
class _Zygote:
    """This pytest worker's zygote, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="cf-zygote-")
        self.path = os.path.join(self._dir.name, "sock")
        atexit.register(self.stop)

    def ensure(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._proc = subprocess.Popen(
                [sys.executable, "-c", f"from tests.cli_zygote import serve; serve({self.path!r})"],
                cwd=REPO,
                stdin=subprocess.PIPE,  # closed when this process ends: the zygote then exits
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"the CLI zygote did not start (exit {self._proc.wait()})")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


_ZYGOTE = _Zygote()


def run(args: list[str], *, stdin: str | None, timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run([python, -m, conductor.cli, *args], capture_output=True, text=True)`, forked."""
    if os.environ.get("COMPUTEFLOW_TEST_CLI") == "exec":
        return subprocess.run(
            [sys.executable, "-m", "conductor.cli", *args],
            capture_output=True,
            text=True,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            timeout=timeout,
            cwd=REPO,
        )
    _ZYGOTE.ensure()
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if stdin is not None:
            inp.write(stdin.encode())
            inp.seek(0)
        request = {"args": list(args), "cwd": str(REPO), "env": dict(os.environ)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(_ZYGOTE.path)
            socket.send_fds(sock, [json.dumps(request).encode()], [inp.fileno(), out.fileno(), err.fileno()])
            replies = _Replies(sock)
            pid = int(replies.expect("pid", time.monotonic() + 30))
            try:
                code = int(replies.expect("exit", time.monotonic() + timeout))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                replies.expect("exit", time.monotonic() + 30)
                out.seek(0)
                err.seek(0)
                raise subprocess.TimeoutExpired(args, timeout, out.read(), err.read()) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            args, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )


class _Replies:
    """The zygote's reply lines, read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def expect(self, word: str, deadline: float) -> str:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(word)
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                raise RuntimeError(f"the CLI zygote closed the connection before '{word}'")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        key, _, value = line.decode().partition(" ")
        if key != word:
            raise RuntimeError(f"the CLI zygote said {line!r}, expected '{word}'")
        return value
