"""Code the tests share, one module per concern (``tests/`` is on ``sys.path``, so ``import helpers``).

- :mod:`helpers.polling`: wait for a condition with a deadline (no fixed sleeps);
- :mod:`helpers.ports`: free, refused and reported ports, a bound socket;
- :mod:`helpers.photos`: photos of a size and format, photos told apart by content;
- :mod:`helpers.public_api`: the public and webhook API over HTTP (upload, status, wait, download);
- :mod:`helpers.raw_http`: one HTTP answer read from a raw connection;
- :mod:`helpers.fake_node`: a fake GPU node, a real aiohttp app that can be told to misbehave;
- :mod:`helpers.gateway`: the test gateway's config and a handle on a gateway under test;
- :mod:`helpers.processes`: the gateway run as a real process.

``tests/support.py`` re-exports the names most tests import (``from support import ...``).
"""
