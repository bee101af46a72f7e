"""The Redis backend: several gateways sharing one Redis (:class:`.store.RedisStore`).

``connection`` holds the client, the key names and the Lua scripts (``*.lua`` beside it);
``tasks``, ``nodes``, ``settings``, ``queue`` and ``cluster`` each hold one concern.
"""
