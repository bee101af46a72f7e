"""Where the gateway keeps its state: tasks, nodes, the queue and runtime settings.

- :mod:`.protocols`: what code above this package may type against (one protocol per concern);
- :mod:`.common`: what both backends say the same way (updatable task fields, store errors);
- :mod:`.sqlite`: the embedded backend (one gateway, one database file);
- :mod:`.redis`: the shared backend (several gateways, one Redis).

Code above this package imports :mod:`.protocols` (and :mod:`.common`); only the one factory
that opens the configured backend imports a backend. The backends import nothing above
``models``, ``errors``, ``config`` and ``identity``.
"""
