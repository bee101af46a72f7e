"""The commands of ``photogate-admin``, one module per group: ``nodes`` (register, list,
drain...), ``gateway`` (status, info), ``config`` (config, strategy, multi-backend), ``tasks``
(tasks, task) and ``photos`` (enhance, wait, download). Each command is a coroutine
``cmd_NAME(ctx, args)``; :mod:`photogate.admincli.parser` wires them to their arguments."""
