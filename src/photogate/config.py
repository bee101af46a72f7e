"""Configuration: frozen dataclasses loaded once from YAML, secrets overridable by env.

Every key is validated; an unknown or ill-typed key raises :class:`ConfigError`
naming the dotted key, so a typo fails at start-up instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .access_config import AccessConfig, validate_access_config
from .config_fields import SECRET, SECRET_URL
from .config_fields import ConfigError as ConfigError  # re-exported: every caller imports it from here
from .wechat.config import WECHAT_ENV_OVERRIDES, WechatConfig, validate_wechat_config

#: The secret printed in the original system's documentation. Anyone can read it,
#: so photogate refuses to start with it outside ``--dev``.
WELL_KNOWN_SECRET = "gpu-server-register-to-api-gateway-2024"

#: Environment variables that override config keys (secrets first of all).
ENV_OVERRIDES: dict[str, str] = {
    "WEBHOOK_SECRET": "webhook.secret",
    "PHOTOGATE_ADMIN_TOKEN": "admin.token",
    "PHOTOGATE_DATA_DIR": "storage.data_dir",
    "PHOTOGATE_METRICS_TOKEN": "metrics.token",
    "PHOTOGATE_REDIS_URL": "storage.redis_url",  # may hold Redis's password
    **WECHAT_ENV_OVERRIDES,  # the wechat: section
}


def secret_names() -> frozenset[str]:
    """The names of every field marked secret in any section (a URL's password aside, which
    is masked inside the URL): the one list of them."""
    names: set[str] = set()
    todo: list[type] = [Config]
    while todo:
        section = todo.pop()
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if f.metadata.get("secret") is True:
                names.add(f.name)
            elif dataclasses.is_dataclass(hints[f.name]):
                todo.append(hints[f.name])
    return frozenset(names)


def _masked(obj: Any) -> Any:
    """``obj`` (a config dataclass) as plain data, each secret field masked."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    data: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), f.metadata.get("secret")
        if kind == "url":
            data[f.name] = redacted_url(value)
        elif kind:
            data[f.name] = "***" if value else ""
        elif isinstance(value, Mapping):
            data[f.name] = {k: _masked(v) for k, v in value.items()}
        else:
            data[f.name] = _masked(value)
    return data


@dataclass(frozen=True)
class TLSConfig:
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Peers whose X-Forwarded-For is believed (an nginx or Caddy in front).
    trusted_proxies: tuple[str, ...] = ()
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class WebhookConfig:
    secret: str = field(default="", metadata=SECRET)
    #: Networks a node may register from. 0.0.0.0/8, broadcast, link-local,
    #: multicast and reserved addresses are always refused; loopback only in --dev or when a
    #: listed network is all loopback. IPv6 spellings of an IPv4 address are judged as it.
    allowed_node_networks: tuple[str, ...] = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class AdminConfig:
    token: str = field(default="", metadata=SECRET)


@dataclass(frozen=True)
class HealthCheckConfig:
    interval: float = 30.0
    timeout: float = 5.0
    failure_threshold: int = 3


@dataclass(frozen=True)
class BalancerConfig:
    strategy: str = "round_robin"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MultiBackendConfig:
    enabled: bool = True


@dataclass(frozen=True)
class DispatchConfig:
    max_attempts: int = 3
    timeout: float = 300.0
    connect_timeout: float = 5.0
    #: Seconds before a failed task is retried on a node that failed it already (doubling
    #: each attempt; no wait while another node can take it).
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "./data"
    task_ttl: float = 86400.0
    janitor_interval: float = 300.0
    # -- several gateways sharing Redis
    #: ``sqlite`` (one gateway, the default) or ``redis`` (several gateways share state).
    backend: str = "sqlite"
    #: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``); backend redis only.
    redis_url: str = field(default="", metadata=SECRET_URL)
    #: Prefix of every Redis key, so several deployments can share one Redis.
    redis_prefix: str = "photogate:"
    #: Seconds a gateway's heartbeat (and the health prober's lease) lives in Redis: a
    #: gateway silent this long is dead, and another takes its tasks and node slots back.
    redis_lease_ttl: float = 5.0


@dataclass(frozen=True)
class LimitsConfig:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 36_000_000
    max_queue: int = 1000
    retry_after: int = 30
    # -- slow clients and absurd shapes
    #: Seconds any request body may stall before 408 and close (slow-loris); also headers, keep-alive, lingering.
    read_timeout: float = 30.0
    #: Seconds one request body (upload or JSON) may take in all before 408.
    upload_timeout: float = 300.0
    #: Longest side of an uploaded photo in pixels (413 above).
    max_side: int = 16384
    #: Most bytes read from a node for one result (below it, the bound its pixels allow).
    max_result_bytes: int = 256 * 1024 * 1024
    #: Bytes all image checks in flight (uploads and node results) may hold at once
    #: (``photogate.imagechecker``); a check waits until its estimated cost fits.
    check_memory_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class RateLimitConfig:
    """Token buckets per client IP (``photogate.ratelimit``); 429 with Retry-After."""

    enabled: bool = True
    requests_per_second: float = 20.0
    burst: int = 100
    uploads_per_minute: float = 120.0
    upload_burst: int = 20
    auth_failures_per_minute: float = 6.0
    auth_failure_burst: int = 10
    #: Clients never limited: loopback is the operator's own tools, or a proxy whose
    #: clients all share its address until server.trusted_proxies names it.
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class CorsConfig:
    origins: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


# -- metrics, dashboard, try-it page ----------------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    #: Bearer token Prometheus must send to ``GET /metrics``; empty: /metrics is open.
    token: str = field(default="", metadata=SECRET)


@dataclass(frozen=True)
class UIConfig:
    #: Serve the public try-it page at ``/`` (anyone who reaches the gateway can try a photo).
    try_it: bool = True
    #: Seconds between the dashboard's live updates.
    refresh: float = 2.0
    #: Hours a dashboard login lasts.
    session_hours: float = 12.0


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    multi_backend: MultiBackendConfig = field(default_factory=MultiBackendConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    wechat: WechatConfig = field(default_factory=WechatConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    dev: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir)

    def client_dict(self) -> dict[str, Any]:
        """What a client needs (the public ``GET /api/v1/config``): limits and timeouts, rate
        limits, output formats, how long results are kept, whether WeChat login and billing
        are on. Nothing about the gateway's host, files, networks or peers."""
        limits, rate = self.limits, self.rate_limit
        return {
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                       "max_side": limits.max_side, "read_timeout": limits.read_timeout,
                       "upload_timeout": limits.upload_timeout, "retry_after": limits.retry_after},
            "formats": {"input": ["jpeg", "png", "webp", "bmp"], "output": ["jpeg", "png", "webp"]},
            "rate_limit": {"enabled": rate.enabled, "requests_per_second": rate.requests_per_second,
                           "burst": rate.burst, "uploads_per_minute": rate.uploads_per_minute,
                           "upload_burst": rate.upload_burst},
            "storage": {"task_ttl": self.storage.task_ttl},
            "wechat": {"login_enabled": self.wechat.login_enabled, "billing_enabled": self.wechat.billing_enabled,
                       "credits_per_enhancement": self.wechat.credits_per_enhancement},
        }

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration minus secrets (the admin's ``GET /api/v1/config``)."""
        data: dict[str, Any] = _masked(self)
        data["server"]["tls"] = {"enabled": bool(self.server.tls.cert)}
        public: dict[str, Any] = _jsonable(data)
        return public


def redacted_url(url: str) -> str:
    """``url`` without its password (``redis://:***@host:6379/0``): safe to log or show."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(typ, value, key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(typ)
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or typ is Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = typing.get_args(typ)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    raise ConfigError(f"{key}: unsupported type {typ!r}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def _validate(cfg: Config) -> None:
    checks: list[tuple[bool, str]] = [
        (1 <= cfg.server.port <= 65535 or cfg.server.port == 0, "server.port: must be 0..65535"),
        (cfg.health_check.interval > 0, "health_check.interval: must be > 0"),
        (cfg.health_check.timeout > 0, "health_check.timeout: must be > 0"),
        (cfg.health_check.failure_threshold >= 1, "health_check.failure_threshold: must be >= 1"),
        (cfg.dispatch.max_attempts >= 1, "dispatch.max_attempts: must be >= 1"),
        (cfg.dispatch.timeout > 0, "dispatch.timeout: must be > 0"),
        (cfg.dispatch.connect_timeout > 0, "dispatch.connect_timeout: must be > 0"),
        (cfg.storage.task_ttl > 0, "storage.task_ttl: must be > 0"),
        (cfg.storage.janitor_interval > 0, "storage.janitor_interval: must be > 0"),
        (bool(cfg.storage.data_dir), "storage.data_dir: must not be empty"),
        (cfg.limits.max_upload_bytes > 0, "limits.max_upload_bytes: must be > 0"),
        (cfg.limits.max_pixels > 0, "limits.max_pixels: must be > 0"),
        (cfg.limits.max_queue > 0, "limits.max_queue: must be > 0"),
        (cfg.limits.retry_after >= 0, "limits.retry_after: must be >= 0"),
        (bool(cfg.balancer.strategy), "balancer.strategy: must name a strategy"),
        (0.2 <= cfg.ui.refresh <= 60, "ui.refresh: must be 0.2..60 seconds"),
        (cfg.ui.session_hours > 0, "ui.session_hours: must be > 0"),
        (
            cfg.logging.level.lower() in {"debug", "info", "warning", "error"},
            "logging.level: must be debug, info, warning or error",
        ),
        (
            bool(cfg.server.tls.cert) == bool(cfg.server.tls.key),
            "server.tls: set both cert and key, or neither",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    validate_wechat_config(cfg.wechat)
    validate_access_config(cfg.access)
    _validate_abuse_limits(cfg)
    _validate_storage(cfg)
    for i, net in enumerate(cfg.server.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies[{i}]: not an IP address or network: {net!r}") from None
    if "*" in cfg.cors.origins and len(cfg.cors.origins) > 1:
        raise ConfigError("cors.origins: use either '*' alone or a list of origins")
    if not cfg.webhook.secret and not cfg.dev:
        raise ConfigError("webhook.secret: empty; set it in the config file or the WEBHOOK_SECRET environment variable")
    if cfg.webhook.secret == WELL_KNOWN_SECRET and not cfg.dev:
        raise ConfigError(
            "webhook.secret: the well-known default secret is refused outside --dev; "
            "choose your own (e.g. WEBHOOK_SECRET=$(openssl rand -hex 24))"
        )


def _validate_storage(cfg: Config) -> None:
    """Which backend holds the shared state, and how to reach Redis."""
    st = cfg.storage
    if st.backend not in ("sqlite", "redis"):
        raise ConfigError(f"storage.backend: must be sqlite or redis, got {st.backend!r}")
    if st.backend == "redis":
        if not st.redis_url:
            raise ConfigError("storage.redis_url: required with storage.backend redis "
                              "(e.g. redis://127.0.0.1:6379/0, or the PHOTOGATE_REDIS_URL environment variable)")
        if not st.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("storage.redis_url: must start with redis://, rediss:// or unix://")
    if not st.redis_prefix:
        raise ConfigError("storage.redis_prefix: must not be empty")
    if st.redis_lease_ttl < 0.5:
        raise ConfigError("storage.redis_lease_ttl: must be >= 0.5 seconds")


def _validate_abuse_limits(cfg: Config) -> None:
    """Node allow-list, read timeouts, rate limits: the keys that bound what a client or node may cost."""
    rl, lim = cfg.rate_limit, cfg.limits
    checks: list[tuple[bool, str]] = [
        (cfg.dispatch.retry_backoff >= 0, "dispatch.retry_backoff: must be >= 0"),
        (lim.read_timeout > 0, "limits.read_timeout: must be > 0"),
        (lim.upload_timeout > 0, "limits.upload_timeout: must be > 0"),
        (lim.max_side >= 1, "limits.max_side: must be >= 1"),
        (lim.max_result_bytes >= 1024, "limits.max_result_bytes: must be >= 1024"),
        # A progressive 4:4:4 JPEG at max_pixels holds 6 bytes a pixel while it is checked.
        (lim.check_memory_bytes >= 6 * lim.max_pixels + 8 * 2**20,
         "limits.check_memory_bytes: must be >= 6 x limits.max_pixels + 8 MiB (a progressive JPEG at the "
         "pixel limit must fit); raise it or lower max_pixels"),
        (rl.requests_per_second > 0, "rate_limit.requests_per_second: must be > 0"),
        (rl.burst >= 1, "rate_limit.burst: must be >= 1"),
        (rl.uploads_per_minute > 0, "rate_limit.uploads_per_minute: must be > 0"),
        (rl.upload_burst >= 1, "rate_limit.upload_burst: must be >= 1"),
        (rl.auth_failures_per_minute > 0, "rate_limit.auth_failures_per_minute: must be > 0"),
        (rl.auth_failure_burst >= 1, "rate_limit.auth_failure_burst: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for key, nets in (("webhook.allowed_node_networks", cfg.webhook.allowed_node_networks),
                      ("rate_limit.exempt", rl.exempt)):
        for i, net in enumerate(nets):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{key}[{i}]: not an IP address or network: {net!r}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    dev: bool = False,
) -> Config:
    """Load ``path`` (YAML), apply env overrides then ``overrides`` (dotted keys), validate.

    In development mode an empty ``webhook.secret`` becomes the well-known one, so the
    seed's clients work unchanged on a laptop.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    env = os.environ if env is None else env
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set_dotted(data, dotted, env[var])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    if "dev" in data:
        raise ConfigError("dev: not a config key; pass --dev on the command line")
    cfg: Config = _build(Config, data)
    if dev:
        cfg = dataclasses.replace(cfg, dev=True)
        if not cfg.webhook.secret:
            # Only the secret: the file's other webhook keys (allowed_node_networks) still hold.
            cfg = dataclasses.replace(cfg, webhook=dataclasses.replace(cfg.webhook, secret=WELL_KNOWN_SECRET))
    _validate(cfg)
    return cfg
