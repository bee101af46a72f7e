"""The ``access:`` section: who may use the public API, and how the fleet is shared between
its users (API keys, priority classes, fair share).

Its own module, like :mod:`photogate.wechat.config`, so the core config stays small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .config_fields import ConfigError


def _default_classes() -> dict[str, int]:
    return {"paid": 4, "free": 1}


@dataclass(frozen=True)
class AccessConfig:
    #: Only requests with an API key (``Authorization: Bearer pk_...``) or a WeChat session may
    #: upload; off (the default): the public API is open, limited per client address.
    require_key: bool = False
    #: Priority classes and their weights: a class of weight 4 gets four times the megapixels of
    #: a class of weight 1 while both wait. Weighted, never strict: no class is starved.
    classes: Mapping[str, int] = field(default_factory=_default_classes)
    #: The class of an owner nothing else places: the open API, a key without a class, a WeChat
    #: user without credits.
    default_class: str = "free"
    #: The class of a WeChat user who has credits.
    wechat_paid_class: str = "paid"
    #: Serve the queue fairly between owners (deficit round robin on megapixels, weighted by
    #: class); off: first come, first served.
    fair_share: bool = True


def validate_access_config(cfg: AccessConfig) -> None:
    if not cfg.classes:
        raise ConfigError("access.classes: name at least one class, e.g. {paid: 4, free: 1}")
    for name, weight in cfg.classes.items():
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 1000:
            raise ConfigError(f"access.classes.{name}: a whole weight from 1 to 1000, got {weight!r}")
    for key in ("default_class", "wechat_paid_class"):
        value = getattr(cfg, key)
        if value not in cfg.classes:
            raise ConfigError(f"access.{key}: {value!r} is not one of access.classes ({', '.join(cfg.classes)})")
