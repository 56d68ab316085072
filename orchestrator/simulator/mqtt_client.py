"""aiomqtt's client, watching its connection through a file number of its own.

aiomqtt (2.5) hands the socket paho opens to the event loop by file number: it registers the
number from a callback deferred with `call_soon_threadsafe` (paho may open the socket on its
connect thread), and paho's close, which may also run on that thread, removes the number from
the loop there and then closes the socket. Two faults follow. A socket that closes before the
loop registers it leaves a registration for a number the process may already have given to
another socket: the loop then reads *that* connection for the MQTT client (an HTTP request of
the same process hangs until its timeout), or the registration fails with FileNotFoundError.
And the removal from another thread changes the loop's selector while the loop uses it, which
asyncio does not allow.

Here the client duplicates the socket's file number when paho opens it and gives the loop only
the duplicate: a number no other socket can get until the client closes it, on the loop, after
taking it out of the loop. Every registration, removal and close happens on the loop, in the
order paho asked for them. paho's close still ends its use of the socket; the connection itself
ends a moment later, when the loop closes the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt


class Client(aiomqtt.Client):
    """aiomqtt.Client that registers a duplicate of its socket's file number, on the loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watched: dict[Any, int] = {}  # paho's socket → the duplicate the loop watches
        self._misc_of: dict[int, asyncio.Task[None]] = {}  # duplicate → its socket's misc loop

    def _on_loop(self, action: Callable[[], object]) -> None:
        """Run `action` on the loop: now when called there, else as soon as the loop can."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            action()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to undo
                self._loop.call_soon_threadsafe(action)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        watched = os.dup(sock.fileno())  # the socket is open now, whatever thread this is
        self._watched[sock] = watched

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
            self._loop.add_reader(watched, read)
            self._misc_task = self._misc_of[watched] = self._loop.create_task(self._misc_loop())

        self._on_loop(register)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        watched = self._watched.pop(sock, None)
        if watched is None:
            return

        def release() -> None:
            self._loop.remove_reader(watched)
            self._loop.remove_writer(watched)
            os.close(watched)
            misc = self._misc_of.pop(watched, None)
            if misc is not None:
                misc.cancel()

        self._on_loop(release)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        watched = self._watched.get(sock)
        if watched is None:
            return  # closed meanwhile

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection: disconnect straight away
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        self._on_loop(lambda: self._loop.add_writer(watched, write))

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        watched = self._watched.get(sock)
        if watched is not None:
            self._on_loop(lambda: self._loop.remove_writer(watched))
