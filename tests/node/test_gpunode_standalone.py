"""What a node's ``/health`` says about registration: a standalone node (``--token``) is not
registered, whatever its token; a gateway node is once the gateway gave it an id (issue 15)."""

from __future__ import annotations

from helpers.polling import wait_until
from node_support import FakeGateway

from gpunode.keys import REGISTRAR


async def _health(http, url: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    async with http.get(f"{url}/health") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def test_a_standalone_node_says_it_is_not_registered(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="local-secret")
    health = await _health(http, node.url)
    assert (health["registered"], health["server_id"], health["mode"]) == (False, None, "standalone")
    assert "local-secret" not in str(health)


async def test_a_gateway_node_is_registered_only_once_it_has_an_id(start_node, fake_gateway: FakeGateway,
                                                                     http) -> None:  # type: ignore[no-untyped-def]
    # The gateway's port is reserved but not listening yet: the node cannot register.
    node = await start_node(gateway_url=fake_gateway.url, secret=fake_gateway.secret, advertise_ip="127.0.0.1")
    await wait_until(lambda: node.app[REGISTRAR].attempts >= 1, timeout=10)
    health = await _health(http, node.url)
    assert (health["registered"], health["server_id"], health["mode"]) == (False, None, "gateway")
    await fake_gateway.start()
    await wait_until(lambda: node.app[REGISTRAR].server_id == "GPU-001", timeout=20)
    health = await _health(http, node.url)
    assert (health["registered"], health["server_id"], health["mode"]) == (True, "GPU-001", "gateway")


def test_flags_win_over_the_environment_and_token_means_standalone() -> None:
    from gpunode.cli import build_parser, config_from_args

    env = {"GATEWAY_URL": "http://127.0.0.1:9", "SHARED_SECRET": "s", "GPUNODE_TOKEN": "env-token"}

    def mode(*argv: str) -> tuple[str, str]:
        config = config_from_args(build_parser(env).parse_args(list(argv)))
        return config.gateway_url, config.token

    assert mode() == ("http://127.0.0.1:9", "")  # a systemd unit's environment: a gateway node
    assert mode("--token", "t") == ("", "t")
    assert mode("--gateway", "http://127.0.0.1:7") == ("http://127.0.0.1:7", "")
    assert mode("--gateway", "") == ("", "env-token")


def test_every_gpunode_flag_has_help() -> None:
    from gpunode.cli import build_parser

    assert [a.option_strings[0] for a in build_parser({})._actions if not a.help] == []
