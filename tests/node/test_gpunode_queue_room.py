"""A node tells its gateway how many jobs it can hold waiting (its ``--queue-size``): in its
registration and in every health report, so the gateway knows how far it may pipeline."""

from __future__ import annotations

from helpers.polling import wait_until


async def test_queue_size_in_registration_and_health(start_node, fake_gateway, http) -> None:  # type: ignore[no-untyped-def]
    await fake_gateway.start()
    node = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1",
                            simulate_speed=100.0, queue_size=3)
    await wait_until(lambda: fake_gateway.registrations(), timeout=20, what="the node to register")
    assert fake_gateway.registrations()[0]["queue_size"] == 3
    async with http.get(f"{node.url}/health") as resp:
        health = await resp.json()
    assert resp.status == 200 and health["queue_size"] == 3 and health["slots"] == 1 and health["queued"] == 0
