"""``photogate-admin``: the operator's CLI over photogate's HTTP API.

httpie style: :func:`run` is the whole program, a coroutine that tests await in-process
with their own ``stdout`` and ``env``; :func:`main` (the console script) wraps it in
``asyncio.run``. One ``ClientSession`` per invocation, no cookie jar, redirects never
followed (a request may carry the webhook secret or the admin token).

Exit codes (:class:`ExitStatus`): 0 ok, 1 the gateway said no, 2 usage, 3 the gateway
cannot be reached.

Modules: ``program`` (run, main), ``parser`` (the argument tree and argument types),
``client`` (settings, HTTP, failures → exit statuses), ``errors`` (exit statuses and the
expected failures), ``context`` (what a command runs with), ``output`` (tables, times,
sizes, masking), ``commands/`` (one module per command group). Within the package,
``commands`` use ``client``, ``context``, ``errors`` and ``output``; only ``parser``
imports ``commands``, and only ``program`` imports ``parser``. Outside it, import from
here.
"""

from .errors import ExitStatus
from .program import main, run

__all__ = ["ExitStatus", "main", "run"]
