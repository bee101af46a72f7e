"""What every configuration section shares: the error a bad key raises and the field
metadata that marks a credential.

The core :mod:`photogate.config` and a part's own section (:mod:`photogate.wechat.config`)
both import this module, so neither needs the other's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


#: Field metadata of a credential: ``public_dict`` masks it, ``photogate-admin`` never prints a
#: key of that name (``secret_names``). ``"url"``: only the password inside the URL is masked.
SECRET: Mapping[str, Any] = {"secret": True}
SECRET_URL: Mapping[str, Any] = {"secret": "url"}
