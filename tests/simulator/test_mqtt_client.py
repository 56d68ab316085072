"""The simulated devices' MQTT client leaves other sockets of the process alone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiomqtt
import pytest

from orchestrator.simulator.mqtt_client import Client


class _Paho:
    """Stands in for paho's client: the socket it holds now; `read` is set at each read."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.read = asyncio.Event()  # set at each read

    @property
    def _sock(self) -> socket.socket | None:  # what aiomqtt's own reader looks at
        return self.sock

    def socket(self) -> socket.socket | None:
        return self.sock

    def loop_read(self) -> int:
        self.read.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):  # a closed socket: aiomqtt's own fault, pinned
                self.sock.recv(4096)
        return 0

    def loop_write(self) -> int:
        return 0

    def loop_misc(self) -> int:
        return 0


@pytest.mark.parametrize("kind", [aiomqtt.Client, Client], ids=["aiomqtt", "simulator"])
async def test_a_socket_closed_before_the_loop_registers_it_leaves_its_number_to_its_new_owner(
    kind: type[aiomqtt.Client],
) -> None:
    """paho opens a socket and it closes at once (a broker that drops the connection while it
    stops or starts); the process gives its file number to a new connection before the event
    loop gets to the MQTT client's deferred registration. That connection must keep its own
    reader: with aiomqtt's client as it ships, the loop reads it for the MQTT client instead,
    and a request on it hangs."""
    loop = asyncio.get_running_loop()
    mqtt_client = kind("127.0.0.1", 1)
    mqtt_side, broker_side = socket.socketpair()
    number = mqtt_side.fileno()
    paho: Any = _Paho(mqtt_side)
    mqtt_client._on_socket_open(paho, None, mqtt_side)
    mqtt_client._on_socket_close(paho, None, mqtt_side)  # paho tells, then closes
    mqtt_side.close()
    broker_side.close()
    other, peer = socket.socketpair()
    # The lowest free numbers again: the pair takes both numbers just freed.
    assert number in (other.fileno(), peer.fileno())
    reused = other if other.fileno() == number else peer
    talker = peer if reused is other else other
    arrived = asyncio.Event()
    loop.add_reader(reused.fileno(), arrived.set)
    try:
        await asyncio.sleep(0)  # the MQTT client's deferred registration runs
        await asyncio.sleep(0)
        talker.send(b"x")
        if kind is aiomqtt.Client:
            with pytest.raises(TimeoutError):  # the known fault, pinned: the reader was taken
                await asyncio.wait_for(arrived.wait(), 1.0)
        else:
            await asyncio.wait_for(arrived.wait(), 5.0)
    finally:
        loop.remove_reader(reused.fileno())
        for sock in (other, peer):
            sock.close()
        task: Any = mqtt_client._misc_task
        if task is not None:
            task.cancel()


async def test_opens_and_closes_on_pahos_thread_leave_the_loop_watching_the_new_socket() -> None:
    """paho's connect thread closes the old socket and opens a new one that gets the same file
    number. The loop then watches the new connection, and only it: its data reaches the client
    and nothing goes wrong in the loop."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    mqtt_client = Client("127.0.0.1", 1)
    first, first_peer = socket.socketpair()
    paho: Any = _Paho(first)
    mqtt_client._on_socket_open(paho, None, first)
    await asyncio.sleep(0)  # the first connection is watched
    number = first.fileno()

    def reconnect() -> socket.socket:
        """What paho's reconnect does on its thread: close, then open anew."""
        mqtt_client._on_socket_close(paho, None, first)
        first.close()
        first_peer.close()
        second, peer = socket.socketpair()
        paho.sock = second
        mqtt_client._on_socket_open(paho, None, second)
        mqtt_client._on_socket_register_write(paho, None, second)
        mqtt_client._on_socket_unregister_write(paho, None, second)
        return peer

    peer = await asyncio.to_thread(reconnect)
    second = paho.sock
    try:
        assert number in (second.fileno(), peer.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        paho.read.clear()
        peer.send(b"x")
        await asyncio.wait_for(paho.read.wait(), 5.0)
        assert errors == []
        # one duplicate watched, the first one's closed and its misc loop gone
        assert list(mqtt_client._watched) == [second]
        assert list(mqtt_client._misc_of) == [mqtt_client._watched[second]]
    finally:
        mqtt_client._on_socket_close(paho, None, second)
        await asyncio.sleep(0)
        second.close()
        peer.close()
        loop.set_exception_handler(None)
