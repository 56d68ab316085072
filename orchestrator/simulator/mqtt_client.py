"""aiomqtt's client, registering its socket with the event loop only while that socket is open.

aiomqtt (2.5) hands the socket paho opens to the event loop by file number, deferred with
`call_soon_threadsafe`, as paho may open it on another thread. A socket that closes before the
loop gets there (a broker that accepts a connection and drops it, as one does while it stops
or starts) leaves a registration for a number the process may already have given to another
socket: the loop then reads or writes *that* connection for the MQTT client (an HTTP request
of the same process hangs until its timeout), or fails with FileNotFoundError and the client's
connect waits out its timeout. Here the registration runs only if the socket is still open
and still the client's when the loop gets to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt


class Client(aiomqtt.Client):
    """aiomqtt.Client whose deferred socket registrations skip a socket closed meanwhile."""

    def _when_open(self, client: mqtt.Client, sock: Any, register: Callable[[], None]) -> None:
        """Run `register` on the loop, if `sock` is then still open and the client's."""

        def guarded() -> None:
            if sock.fileno() != -1 and client.socket() is sock:
                register()

        self._loop.call_soon_threadsafe(guarded)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def read() -> None:
            try:
                while True:
                    client.loop_read()
                    pending = getattr(client.socket(), "pending", None)  # TLS: decoded bytes
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:  # a broken connection: disconnect straight away
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            self._loop.add_reader(sock.fileno(), read)
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._when_open(client, sock, register)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection: disconnect straight away
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        self._when_open(client, sock, lambda: self._loop.add_writer(sock.fileno(), write))
