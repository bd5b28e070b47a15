"""Settings from the environment (and a `.env` file), and the LLMsRouter-style `config.yaml`."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from router.crypto import check_secrets_key
from router.protocols.translate import BACKEND_APIS, unknown_apis
from router.upstream_auth import api_key_problem, auth_header_problem, normal_auth_header
from router.urls import UrlError, check_http_url, normalize_proxy_url


class ConfigError(Exception):
    """A configuration problem, worded for the operator: where it is and what is wrong."""


def _env_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _env_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class Settings:
    """Everything the router reads from its environment, validated once at start-up."""

    host: str = "0.0.0.0"
    port: int = 3000
    host_explicit: bool = False
    workers: int = 1
    data_dir: str = "./data"
    core_db_url: str = ""
    analytics_db_url: str = ""
    config_file: str | None = None

    max_request_body_mb: float = 32.0
    proxy_allowlist: list[str] = field(default_factory=list)
    routing_strategy: str = "weighted"  # or "least_busy"
    upstream_connect_timeout_s: float = 10.0
    upstream_timeout_s: float = 600.0
    max_attempts: int = 3
    health_failure_threshold: int = 3
    health_cooldown_s: float = 30.0
    health_check_interval_s: float = 10.0  # 0 = no active checks (passive health only)
    health_check_timeout_s: float = 5.0
    model_refresh_interval_s: float = 60.0
    catalog_poll_interval_s: float = 2.0

    log_batch_size: int = 500
    log_flush_interval_s: float = 0.2
    log_buffer_max: int = 100_000
    shutdown_grace_s: float = 30.0
    subscriber_queue_size: int = 1000

    admin_password: str | None = None
    admin_session_ttl_s: float = 12 * 3600
    admin_session_recheck_s: float = 5.0  # how soon an open admin WebSocket notices a logout
    admin_session_secret: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    graphql_max_depth: int = 10
    graphql_max_page: int = 500
    graphql_max_query_kb: int = 32
    graphql_max_tokens: int = 500
    graphql_max_aliases: int = 30
    graphql_max_fragments: int = 30
    graphql_max_cost: int = 20_000
    graphiql: bool = True
    metrics_token: str | None = None

    enable_account_management: bool = True
    model_list_style: str = "plain"  # or "aliased"

    script_timeout_ms: float = 50.0
    script_max_memory_mb: int = 64
    script_isolation: str = "thread"  # or "process": V8 in a supervised child (router/scripts/host.py)

    langfuse_public_key: str | None = None
    langfuse_secret_key: str | None = None
    langfuse_host: str | None = None
    langfuse_capture_content: bool = True
    metrics_user_labels: bool = False
    # /metrics summed over the workers (router/metrics.py); prometheus-client reads the variable itself too.
    prometheus_multiproc_dir: str | None = None

    redis_url: str | None = None
    # Fernet keys for upstream API keys at rest: the first encrypts, all decrypt (router/crypto.py).
    secrets_key: list[str] = field(default_factory=list, repr=False)
    redis_prefix: str = "llm-router"  # Redis key and channel prefix: one per router cluster
    log_format: str = "text"
    log_level: str = "INFO"
    upstream_transport: str = "h1"  # or "aiohttp", "pyreqwest", "httpx"
    server: str = "granian"  # or "uvicorn"
    max_request_header_kb: float = 64.0
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 30.0
    max_admin_body_mb: float = 4.0
    forwarded_allow_ips: str = "127.0.0.1"
    # Responses API: how long and how many response-id -> backend bindings are kept (router/affinity.py).
    response_affinity_ttl_s: float = 30 * 86400.0
    response_affinity_max: int = 100_000
    sse_max_event_mb: float = 16.0  # one upstream stream event larger than this breaks the stream off (502)
    max_upstream_answer_mb: float = 256.0  # a backend's whole (non-stream) answer larger than this: 502
    # Upstream response headers passed to clients besides the built-in allow-list (router/proxy.py).
    upstream_response_headers: list[str] = field(default_factory=list)

    queue_timeout_s: float = 30.0  # longest wait for a slot of a backend at its maxConcurrent
    limits_default_max_tokens: int = 1024  # TPM reservation for a request without max_tokens
    budget_sync_interval_s: float = 10.0  # how often spend counters are raised to the rollups' totals

    @property
    def max_upstream_answer_bytes(self) -> int:
        return int(self.max_upstream_answer_mb * 1024 * 1024)

    @property
    def sse_max_event_bytes(self) -> int:
        return int(self.sse_max_event_mb * 1024 * 1024)

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_mb * 1024 * 1024)

    @property
    def max_request_header_bytes(self) -> int:
        return int(self.max_request_header_kb * 1024)

    @property
    def max_admin_body_bytes(self) -> int:
        return int(self.max_admin_body_mb * 1024 * 1024)

    @property
    def langfuse_enabled(self) -> bool:
        return bool(self.langfuse_public_key and self.langfuse_secret_key and self.langfuse_host)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values replaced (CLI flags win over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# env var name -> (field name, parser)
_ENV: dict[str, tuple[str, Any]] = {
    "SERVER_HOST": ("host", str),
    "SERVER_PORT": ("port", int),
    "WORKERS": ("workers", int),
    "DATA_DIR": ("data_dir", str),
    "CORE_DB_URL": ("core_db_url", str),
    "ANALYTICS_DB_URL": ("analytics_db_url", str),
    "CONFIG_FILE": ("config_file", str),
    "MAX_REQUEST_BODY_MB": ("max_request_body_mb", float),
    "PROXY_ALLOWLIST": ("proxy_allowlist", _env_list),
    "ROUTING_STRATEGY": ("routing_strategy", str),
    "UPSTREAM_CONNECT_TIMEOUT_S": ("upstream_connect_timeout_s", float),
    "UPSTREAM_TIMEOUT_S": ("upstream_timeout_s", float),
    "MAX_ATTEMPTS": ("max_attempts", int),
    "HEALTH_FAILURE_THRESHOLD": ("health_failure_threshold", int),
    "HEALTH_COOLDOWN_S": ("health_cooldown_s", float),
    "HEALTH_CHECK_INTERVAL_S": ("health_check_interval_s", float),
    "HEALTH_CHECK_TIMEOUT_S": ("health_check_timeout_s", float),
    "MODEL_REFRESH_INTERVAL_S": ("model_refresh_interval_s", float),
    "CATALOG_POLL_INTERVAL_S": ("catalog_poll_interval_s", float),
    "LOG_BATCH_SIZE": ("log_batch_size", int),
    "LOG_FLUSH_INTERVAL_S": ("log_flush_interval_s", float),
    "LOG_BUFFER_MAX": ("log_buffer_max", int),
    "SHUTDOWN_GRACE_S": ("shutdown_grace_s", float),
    "SUBSCRIBER_QUEUE_SIZE": ("subscriber_queue_size", int),
    "ADMIN_PASSWORD": ("admin_password", str),
    "ADMIN_SESSION_TTL_S": ("admin_session_ttl_s", float),
    "ADMIN_SESSION_RECHECK_S": ("admin_session_recheck_s", float),
    "ADMIN_SESSION_SECRET": ("admin_session_secret", str),
    "CORS_ORIGINS": ("cors_origins", _env_list),
    "GRAPHQL_MAX_DEPTH": ("graphql_max_depth", int),
    "GRAPHQL_MAX_PAGE": ("graphql_max_page", int),
    "GRAPHQL_MAX_QUERY_KB": ("graphql_max_query_kb", int),
    "GRAPHQL_MAX_TOKENS": ("graphql_max_tokens", int),
    "GRAPHQL_MAX_ALIASES": ("graphql_max_aliases", int),
    "GRAPHQL_MAX_FRAGMENTS": ("graphql_max_fragments", int),
    "GRAPHQL_MAX_COST": ("graphql_max_cost", int),
    "GRAPHIQL": ("graphiql", _env_bool),
    "METRICS_TOKEN": ("metrics_token", str),
    "ENABLE_ACCOUNT_MANAGEMENT": ("enable_account_management", _env_bool),
    "MODEL_LIST_STYLE": ("model_list_style", str),
    "SCRIPT_TIMEOUT_MS": ("script_timeout_ms", float),
    "SCRIPT_MAX_MEMORY_MB": ("script_max_memory_mb", int),
    "SCRIPT_ISOLATION": ("script_isolation", str),
    "LANGFUSE_PUBLIC_KEY": ("langfuse_public_key", str),
    "LANGFUSE_SECRET_KEY": ("langfuse_secret_key", str),
    "LANGFUSE_HOST": ("langfuse_host", str),
    "LANGFUSE_CAPTURE_CONTENT": ("langfuse_capture_content", _env_bool),
    "METRICS_USER_LABELS": ("metrics_user_labels", _env_bool),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", str),
    "REDIS_URL": ("redis_url", str),
    "SECRETS_KEY": ("secrets_key", _env_list),
    "REDIS_PREFIX": ("redis_prefix", str),
    "LOG_FORMAT": ("log_format", str),
    "LOG_LEVEL": ("log_level", str),
    "UPSTREAM_TRANSPORT": ("upstream_transport", str),
    "SERVER": ("server", str),
    "MAX_REQUEST_HEADER_KB": ("max_request_header_kb", float),
    "CLIENT_HEADER_TIMEOUT_S": ("client_header_timeout_s", float),
    "CLIENT_BODY_TIMEOUT_S": ("client_body_timeout_s", float),
    "MAX_ADMIN_BODY_MB": ("max_admin_body_mb", float),
    "FORWARDED_ALLOW_IPS": ("forwarded_allow_ips", str),
    "QUEUE_TIMEOUT_S": ("queue_timeout_s", float),
    "LIMITS_DEFAULT_MAX_TOKENS": ("limits_default_max_tokens", int),
    "BUDGET_SYNC_INTERVAL_S": ("budget_sync_interval_s", float),
    "RESPONSE_AFFINITY_TTL_S": ("response_affinity_ttl_s", float),
    "RESPONSE_AFFINITY_MAX": ("response_affinity_max", int),
    "SSE_MAX_EVENT_MB": ("sse_max_event_mb", float),
    "MAX_UPSTREAM_ANSWER_MB": ("max_upstream_answer_mb", float),
    "UPSTREAM_RESPONSE_HEADERS": ("upstream_response_headers", _env_list),
}

_CHOICES = {
    "routing_strategy": ("weighted", "least_busy"),
    "model_list_style": ("plain", "aliased"),
    "log_format": ("text", "json"),
    "upstream_transport": ("h1", "aiohttp", "pyreqwest", "httpx"),
    "server": ("granian", "uvicorn"),
    "script_isolation": ("thread", "process"),
}


def load_settings(
    environ: dict[str, str] | None = None, dotenv: bool = True, overrides: dict[str, str] | None = None
) -> Settings:
    """Read settings from `environ` (default: the process environment plus `./.env`).

    `overrides`: variables that win over both (command-line flags such as `--data-dir`).
    """
    if environ is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(override=False)
        environ = dict(os.environ)
    if overrides:
        environ = {**environ, **overrides}
    values: dict[str, Any] = {}
    for name, (attr, parse) in _ENV.items():
        raw = environ.get(name)
        if raw is None or (raw == "" and parse is not _env_list):
            continue
        try:
            values[attr] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"environment variable {name}: {exc}") from None
    if "host" in values:
        values["host_explicit"] = True
    data_dir = values.get("data_dir", Settings.data_dir)
    for url_attr, path_var, filename in (
        ("core_db_url", "CORE_DB_PATH", "core.db"),
        ("analytics_db_url", "ANALYTICS_DB_PATH", "analytics.db"),
    ):
        if not values.get(url_attr):
            path = environ.get(path_var) or str(Path(data_dir) / filename)
            values[url_attr] = sqlite_url(path)
    settings = Settings(**values)
    validate_settings(settings)
    return settings


# How `llm-router serve` hands its effective settings (flags applied, session secret made) to the
# server's worker processes, which import the app anew (router.app:create_app_from_env).
def settings_to_json(settings: Settings) -> str:
    return json.dumps(asdict(settings))


def settings_from_json(text: str) -> Settings:
    return Settings(**json.loads(text))


def sqlite_url(path: str) -> str:
    """A Tortoise SQLite URL for a file: batched writes, waits for other processes' locks.

    No memory-mapped files at all (a rollback journal instead of WAL, whose -shm index is always
    mapped, and mmap_size=0): a truncated, unwritable or failing file then gives SQLite errors,
    which the router survives, instead of a SIGBUS, which kills it.
    """
    return (
        f"sqlite://{Path(path).expanduser().absolute()}"
        "?busy_timeout=10000&synchronous=NORMAL&journal_mode=DELETE&mmap_size=0"
    )


def validate_settings(settings: Settings) -> None:
    for attr, allowed in _CHOICES.items():
        value = getattr(settings, attr)
        if value not in allowed:
            env_name = next(k for k, (a, _) in _ENV.items() if a == attr)
            raise ConfigError(f"environment variable {env_name}: {value!r} is not one of {', '.join(allowed)}")
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"setting {f.name}: must not be negative")
    if settings.client_header_timeout_s <= 0 or settings.client_body_timeout_s <= 0:
        raise ConfigError("CLIENT_HEADER_TIMEOUT_S and CLIENT_BODY_TIMEOUT_S must be positive")
    if settings.admin_session_recheck_s <= 0:
        raise ConfigError("environment variable ADMIN_SESSION_RECHECK_S: must be positive")
    if settings.max_attempts < 1:
        raise ConfigError("environment variable MAX_ATTEMPTS: must be at least 1")
    try:
        check_secrets_key(settings.secrets_key)
    except ValueError as exc:
        raise ConfigError(f"environment variable SECRETS_KEY: {exc}") from None
    for prefix in settings.proxy_allowlist:
        try:
            normalize_proxy_url(prefix)
        except UrlError as exc:
            raise ConfigError(f"environment variable PROXY_ALLOWLIST: {exc}") from None


# --- config.yaml (LLMsRouter's format) -------------------------------------------------------


@dataclass(frozen=True)
class BackendSpec:
    """One `servers:` entry of config.yaml."""

    name: str
    base_url: str
    api_key: str | None = None
    model_filter: str | None = None
    model_override: list[str] | None = None
    model_append: list[str] | None = None
    weight: int = 1
    apis: list[str] | None = None  # the request formats it speaks natively; None = all
    auth_header: str | None = None  # the header the key goes in (router/upstream_auth.py); None: from the URL


@dataclass(frozen=True)
class PriceSpec:
    """One model price: a `prices:` entry of config.yaml, or the admin API's ModelPriceInput."""

    model: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    backend: str | None = None  # a backend name (config.yaml); None: every backend


@dataclass(frozen=True)
class DisabledServer:
    """A `servers:` entry that references unset environment variables: not synced, and deactivated if it exists."""

    name: str
    reason: str


@dataclass(frozen=True)
class ConfigFile:
    """What config.yaml asks for: servers to create or update, servers disabled, and whether to prune."""

    servers: list[BackendSpec]
    disabled: list[DisabledServer] = field(default_factory=list)
    prune: bool = False
    warnings: list[str] = field(default_factory=list)
    prices: list[PriceSpec] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        """Every alias in the file, synced or disabled (prune leaves these alone)."""
        return {s.name for s in self.servers} | {d.name for d in self.disabled}


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SERVER_KEYS = {"url", "api_key", "auth_header", "filter", "override", "append", "weight", "apis"}
_TOP_KEYS = {"servers", "prune", "prices"}


def _missing_env(value: Any, where: str, environ: dict[str, str]) -> list[str]:
    """`where.key: ${NAME}` for every reference in `value` to a variable that is not set."""
    if isinstance(value, str):
        return [f"{where}: ${{{name}}}" for name in _ENV_REF.findall(value) if name not in environ]
    if isinstance(value, list):
        return [m for i, item in enumerate(value) for m in _missing_env(item, f"{where}[{i}]", environ)]
    return []


def _expand_env(value: Any, environ: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _ENV_REF.sub(lambda match: environ[match.group(1)], value)
    if isinstance(value, list):
        return [_expand_env(item, environ) for item in value]
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{where}: must be a list of model names")
    return list(value)


def _optional_list(entry: dict[str, Any], key: str, where: str) -> list[str] | None:
    return None if entry.get(key) is None else _string_list(entry[key], f"{where}.{key}")


def load_config_file(path: str, environ: dict[str, str] | None = None) -> ConfigFile:
    """Parse LLMsRouter's config.yaml; any problem raises ConfigError naming the file and key.

    A server referencing an unset `${VAR}` is not an error: it comes back in `disabled` (so a
    config with optional providers starts without their keys).
    """
    import yaml  # here, not at the top: only `--config`/CONFIG_FILE reads YAML

    environ = dict(os.environ) if environ is None else environ
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'servers' key")
    # LLMsRouter's files may carry keys of its own: ignored, but said (a typo of `prune` would be silent).
    warnings = [f"unknown top-level key {key!r} ignored" for key in sorted(map(str, set(data) - _TOP_KEYS))]
    prune = data.get("prune", False)
    if not isinstance(prune, bool):
        raise ConfigError(f"{path}: prune: must be true or false")
    servers = data.get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ConfigError(f"{path}: 'servers' must be a mapping of alias -> server settings")
    specs: list[BackendSpec] = []
    disabled: list[DisabledServer] = []
    for alias, entry in servers.items():
        where = f"{path}: servers.{alias}"
        if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", alias):
            raise ConfigError(f"{where}: alias must be letters, digits, '.', '_' or '-'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with at least 'url'")
        unknown = set(entry) - _SERVER_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        missing = [m for key, value in entry.items() for m in _missing_env(value, f"servers.{alias}.{key}", environ)]
        if missing:
            disabled.append(DisabledServer(alias, f"{', '.join(missing)} not set in the environment"))
            continue
        specs.append(_server_spec(alias, {key: _expand_env(value, environ) for key, value in entry.items()}, where))
    return ConfigFile(specs, disabled, prune, warnings, _prices(data.get("prices"), path))


def _server_spec(alias: str, entry: dict[str, Any], where: str) -> BackendSpec:
    try:
        url = check_http_url(entry.get("url"), f"{where}.url")
    except UrlError as exc:
        raise ConfigError(str(exc)) from None
    weight = entry.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        raise ConfigError(f"{where}.weight: must be a non-negative integer")
    model_filter = entry.get("filter")
    if model_filter is not None and not isinstance(model_filter, str):
        raise ConfigError(f"{where}.filter: must be a string of space-separated terms")
    api_key = entry.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{where}.api_key: must be a string")
    if api_key and (problem := api_key_problem(api_key)):
        raise ConfigError(f"{where}.api_key: {problem}")
    auth_header = entry.get("auth_header")
    if auth_header is not None and not isinstance(auth_header, str):
        raise ConfigError(f"{where}.auth_header: must be a header name such as authorization, x-api-key or api-key")
    if auth_header and (problem := auth_header_problem(auth_header)):
        raise ConfigError(f"{where}.auth_header: {problem}")
    return BackendSpec(
        name=alias,
        base_url=url,
        api_key=api_key or None,
        model_filter=model_filter or None,
        model_override=_optional_list(entry, "override", where),
        model_append=_optional_list(entry, "append", where),
        weight=weight,
        apis=_apis(entry.get("apis"), f"{where}.apis"),
        auth_header=normal_auth_header(auth_header),
    )


def _apis(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or unknown_apis(value):
        raise ConfigError(f"{where}: must be a non-empty list of {', '.join(BACKEND_APIS)}")
    return list(dict.fromkeys(value))


_PRICE_KEYS = {"model", "backend", "input", "output", "cached_input", "cache_write"}


def _price_number(entry: dict[str, Any], key: str, where: str, required: bool) -> float | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: required (USD per million tokens)")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e6:
        raise ConfigError(f"{where}.{key}: must be a number from 0 to 1000000 (USD per million tokens)")
    return float(value)


def _prices(prices: Any, path: str) -> list[PriceSpec]:
    """The optional `prices:` list: model, backend?, input, output, cached_input?, cache_write?."""
    if prices is None:
        return []
    if not isinstance(prices, list):
        raise ConfigError(f"{path}: prices: must be a list of {{model, input, output, ...}} entries")
    specs = []
    for index, entry in enumerate(prices):
        where = f"{path}: prices[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with model, input and output")
        unknown = set(entry) - _PRICE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        model, backend = entry.get("model"), entry.get("backend")
        if not isinstance(model, str) or not model.strip() or len(model.strip()) > 256:
            raise ConfigError(f"{where}.model: must be a model name or glob such as gpt-4o*")
        if backend is not None and not isinstance(backend, str):
            raise ConfigError(f"{where}.backend: must be the name of a server")
        specs.append(
            PriceSpec(
                model=model.strip(),
                input_per_mtok=_price_number(entry, "input", where, True) or 0.0,
                output_per_mtok=_price_number(entry, "output", where, True) or 0.0,
                cached_input_per_mtok=_price_number(entry, "cached_input", where, False),
                cache_write_per_mtok=_price_number(entry, "cache_write", where, False),
                backend=backend,
            )
        )
    return specs
