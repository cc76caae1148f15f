"""Real ``redis-server`` processes for the tests: start, stop, kill, restart, pause.

Each server listens on a free loopback port, keeps nothing on disk and is
always killed at the end, so no test leaves a process behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

__all__ = [
    "CommandLog",
    "RedisCluster",
    "RedisServer",
    "redis_cli_binary",
    "redis_server_binary",
]

# How long a server may take to answer its first PING, and how often to ask.
_START_TIMEOUT = 10.0
_POLL = 0.01
_START_ATTEMPTS = 5

_running: set[RedisServer] = set()


def redis_server_binary() -> str | None:
    """Return the path of ``redis-server``, or ``None`` if it is not installed."""
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    """Return the path of ``redis-cli`` (Debian's redis-tools), or ``None``."""
    return shutil.which("redis-cli")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on a loopback port, kept alive on demand."""

    def __init__(self, directory: Path, binary: str | None = None) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise RuntimeError("redis-server not found")
        self.binary = found
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on a free port, retrying if another process took the port first."""
        for attempt in range(_START_ATTEMPTS):
            self.port = _free_port()
            if self._launch():
                return self
            if attempt == _START_ATTEMPTS - 1:
                break
        raise RuntimeError(f"redis-server did not start after {_START_ATTEMPTS} tries")

    def restart(self) -> None:
        """Start again on the same port, after :meth:`stop` or :meth:`kill`."""
        self.stop()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._launch():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not restart on port {self.port}")
            time.sleep(_POLL)

    def _launch(self) -> bool:
        self.process = subprocess.Popen(
            [self.binary, *(a for pair in self._options().items() for a in pair)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _running.add(self)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None  # it exited: most likely the port was taken
                return False
            if _pings(self.port):
                return True
            time.sleep(_POLL)
        self.kill()
        return False

    def _options(self) -> dict[str, str]:
        # Nothing on disk, loopback only, quiet.
        return {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--dir": str(self.directory),
            "--daemonize": "no",
            "--loglevel": "warning",
        }

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Stop the server politely (SIGTERM), killing it if it lingers."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("redis-server is not running")
        os.kill(self.process.pid, signum)

    def _end(self, signum: int) -> None:
        process, self.process = self.process, None
        _running.discard(self)
        if process is None or process.poll() is not None:
            return
        if self.paused:
            os.kill(process.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
            self.paused = False
        process.send_signal(signum)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class CommandLog:
    """The commands that clients send to one server, read from its MONITOR.

    Each line MONITOR shows is one command a client sent, or one that a script
    ran inside Redis (shown as from ``lua``). Leaving the script's own out,
    what is left is the client's round trips, which is what a claim about
    "one round trip" means. Plain sockets, so it works on any event loop.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self._sock = socket.create_connection(self.address, timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._buffer = b""
        if self._line() != "+OK":
            raise RuntimeError("MONITOR was refused")

    def _line(self) -> str:
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the MONITOR connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def sent(self, naming: str) -> list[str]:
        """The names of the commands that clients sent since the last call and
        whose arguments contain ``naming`` (a test's key prefix: other clients'
        commands are not counted), oldest first."""
        # MONITOR has no "now": a marker sent last shows where "since" ends.
        marker = f"bgtasks-commandlog-{uuid.uuid4().hex}"
        with socket.create_connection(self.address, timeout=5) as other:
            other.sendall(f"ECHO {marker}\r\n".encode())
            other.recv(256)
        names: list[str] = []
        while True:
            line = self._line()
            if marker in line:
                return names
            source, _, command = line.partition("] ")
            if source.endswith(" lua") or naming not in command:
                continue
            names.append(command.split(" ", 1)[0].strip('"').lower())

    def close(self) -> None:
        self._sock.close()


class _ClusterNode(RedisServer):
    """A server started with cluster mode on; its node file stays in its directory."""

    def _options(self) -> dict[str, str]:
        return {
            **super()._options(),
            "--cluster-enabled": "yes",
            "--cluster-config-file": f"nodes-{self.port}.conf",
            "--cluster-node-timeout": "5000",
        }


class RedisCluster:
    """Three primaries (no replicas) joined by ``redis-cli --cluster create``.

    Enough to prove that every script keeps to one slot and that commands are
    routed to the right node; not a test of failover.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli not found")
        self.cli = cli
        self.nodes: list[RedisServer] = []
        for index in range(size):
            home = directory / f"node{index}"
            home.mkdir(parents=True, exist_ok=True)
            self.nodes.append(_ClusterNode(home))

    @property
    def port(self) -> int:
        """The port of the first node: a cluster client finds the rest from it."""
        return self.nodes[0].port

    def start(self) -> RedisCluster:
        """Start the nodes, assign every slot, and wait until all say ``ok``."""
        try:
            self._join()
        except BaseException:
            self.kill()
            raise
        return self

    def _join(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_START_TIMEOUT * 3,
        )
        deadline = time.monotonic() + _START_TIMEOUT * 3
        while not all(self._ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not reach state ok")
            time.sleep(_POLL * 5)

    def _ok(self, port: int) -> bool:
        info = subprocess.run(
            [self.cli, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT,
            check=False,
        ).stdout
        return "cluster_state:ok" in info

    def kill(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.kill()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()
