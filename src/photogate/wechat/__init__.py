"""WeChat mini-program login and WeChat Pay API v3.

- :mod:`.config`: the ``wechat:`` section and its validation (imports nothing of the runtime,
  so the core config may hold it);
- :mod:`.records`: users, sessions, orders, refunds and credit charges behind the
  :class:`~.records.protocol.WechatRecords` protocol, in SQLite or Redis;
- :mod:`.login`, :mod:`.pay`: the clients of WeChat's login API and of WeChat Pay API v3;
- :mod:`.service`: :class:`~.service.WechatService`, what the routes and the access policy call;
- :mod:`.access`, :mod:`.routes`, :mod:`.legacy`: the HTTP side;
- :mod:`.app`: :func:`~.app.setup_wechat`, all the gateway's ``create_app`` calls.

This package module imports nothing, so importing :mod:`.config` loads no runtime.
"""
