"""Child processes the dev stack owns: own process group, log file, stopped for sure.

Every broker we start is registered here; an atexit hook and SIGTERM/SIGHUP handlers stop what is
still running, so Ctrl-C, a failing test session or an exception never leaves a JVM or a
nats-server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from roomcast.core.errors import RoomcastError


class BrokerError(RoomcastError):
    """A local broker could not be started; the message says why and what to do."""


_running: set[ManagedProcess] = set()


class ManagedProcess:
    """One child process in its own session, its output appended to `log_path`."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the latest start
        self._log_offset = 0  # where the latest start's output begins in the (appended) log

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.started_at = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    self.args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=self.env,
                )
            except FileNotFoundError as exc:
                raise BrokerError(f"cannot run {self.args[0]!r} for {self.name}: {exc}") from None
        _running.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has exited (-N: killed by signal N); None while it runs, or
        when it was never started or has been stopped."""
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines it wrote since its latest start (the log file is appended to
        across runs and restarts; older lines are not its error)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:]) if text else "(no output since it started)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after `timeout`."""
        proc = self.proc
        _running.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Anything the process forked and left in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None


def describe_exit(status: int) -> str:
    """`-9` -> "killed by SIGKILL", `1` -> "exit status 1"."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def stop_all() -> None:
    for p in list(_running):
        p.stop(timeout=5)


atexit.register(stop_all)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP stop every child first, unless the program handles them itself.

    Done on import; call it again after something (asyncio.run) has put the defaults back."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


install_signal_handlers()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports (all held open while picked, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def port_in_use_message(port: int, what: str, option: str) -> str:
    return (
        f"port {port} for {what} is already in use (another roomcast dev, or another server?); "
        f"stop it or choose another port with {option}"
    )


def check_port_free(port: int, what: str, option: str) -> None:
    if port_in_use(port):
        raise BrokerError(port_in_use_message(port, what, option))


def wait_for_port(port: int, proc: ManagedProcess, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BrokerError(
                f"{proc.name} exited while starting (code {proc.proc and proc.proc.returncode});"
                f" last lines of {proc.log_path}:\n{proc.log_tail()}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise BrokerError(
        f"{proc.name} did not listen on {host}:{port} within {timeout:g}s;"
        f" last lines of {proc.log_path}:\n{proc.log_tail()}"
    )
