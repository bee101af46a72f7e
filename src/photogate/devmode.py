"""What a ``--dev`` gateway tells its operator at start: the credentials it runs with.

A newcomer who starts ``photogate --dev`` must learn which webhook secret its nodes need and
whether the admin API is on, without reading the source. Only the seed's well-known secret
(public anyway) is shown in full; a secret or token of the operator's own is never logged,
only that it is set. Outside ``--dev`` nothing of this is logged.
"""

from __future__ import annotations

from .config import WELL_KNOWN_SECRET, Config


def dev_credentials(config: Config) -> dict[str, str]:
    """The fields of the ``dev_credentials`` log event (``config.dev`` must be set).

    The admin field is not named ``*_token``: the log redacts such keys, and it holds no token.
    """
    if not config.dev:
        raise ValueError("dev_credentials is for --dev only")
    if config.webhook.secret == WELL_KNOWN_SECRET:
        secret = f"{WELL_KNOWN_SECRET} (the seed's well-known secret: nodes send it; refused outside --dev)"
    else:
        secret = "your own (from WEBHOOK_SECRET or webhook.secret; not shown)"
    if config.admin.token:
        admin = "your own (from PHOTOGATE_ADMIN_TOKEN or admin.token; not shown)"
    else:
        admin = ("none: the admin API, the dashboard and photogate-admin are off; "
                 "set PHOTOGATE_ADMIN_TOKEN to turn them on")
    return {"webhook_secret": secret, "admin_api": admin}
