"""The simulated devices' MQTT client leaves other sockets of the process alone."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiomqtt
import pytest

from orchestrator.simulator.mqtt_client import Client


class _Paho:
    """Stands in for paho's client: the socket it holds now."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def socket(self) -> socket.socket:
        return self.sock


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
    mqtt_client._on_socket_open(_Paho(mqtt_side), None, mqtt_side)  # type: ignore[arg-type]
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
