"""`llm-router serve | users ... | backends ...` — the command line, LLMsRouter-compatible."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from router.config import ConfigError, Settings, load_config_file, load_settings, settings_from_json, settings_to_json
from router.crypto import SecretBox
from router.datadir import session_secret
from router.db import close_db, init_db, is_postgres
from router.limits import Limits, check_limits
from router.services import AdminService, BadInputError, ServiceError, parse_budget_period, parse_permissions
from router.urls import redact_url

log = logging.getLogger("router")


def _data_dir_option() -> argparse.ArgumentParser:
    """`--data-dir`, accepted before or after the command (`llm-router --data-dir D users list`)."""
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="directory of the SQLite databases (DATA_DIR; default ./data); CORE_DB_URL/ANALYTICS_DB_URL win",
    )
    return option


def build_parser() -> argparse.ArgumentParser:
    common = _data_dir_option()
    parser = argparse.ArgumentParser(prog="llm-router", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = group.add_parser(name, help=help, parents=[common])
        return command

    serve = add_command(commands, "serve", "serve /v1, /graphql and /admin")
    serve.add_argument("--host", help="address to bind (SERVER_HOST; default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (SERVER_PORT; default 3000)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (WORKERS; default 1)")
    serve.add_argument("--config", help="LLMsRouter-style config.yaml whose servers are synced at start-up")
    serve.add_argument(
        "--prune",
        action="store_true",
        help="deactivate every backend that is not in --config (as `prune: true` in the file does)",
    )

    users = commands.add_parser("users", help="manage users and their API keys", parents=[common]).add_subparsers(
        dest="action", required=True
    )
    add = add_command(users, "add", "create a user and print its API key")
    add.add_argument("name")
    add.add_argument("--email")
    add.add_argument("--permissions", default="*", help='"*" (every backend, default) or "backend1,backend2"')
    _limit_arguments(add)
    add_command(users, "delete", "delete a user").add_argument("name")
    add_command(users, "list", "list users")
    modify = add_command(users, "modify", "change a user's permissions, e-mail or state")
    modify.add_argument("name")
    modify.add_argument("--permissions")
    modify.add_argument("--email")
    state = modify.add_mutually_exclusive_group()
    state.add_argument("--activate", action="store_true")
    state.add_argument("--deactivate", action="store_true")
    _limit_arguments(modify)
    add_command(users, "regenerate-key", "issue a new API key (the old one stops working)").add_argument("name")
    add_command(users, "import", "create users from CSV (username,email[,permissions]) or JSON").add_argument("file")

    backends = commands.add_parser("backends", help="inspect backends", parents=[common]).add_subparsers(
        dest="action", required=True
    )
    add_command(backends, "list", "list backends (upstream keys are never shown)")
    return parser


_UNLIMITED = "none"
_LIMIT_FLAGS = ("rpm", "tpm", "max_concurrent", "budget_usd", "budget_period")


def _limit_value(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return _UNLIMITED if text.lower() in (_UNLIMITED, "unlimited") else parse(text)

    return convert


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    """--rpm/--tpm/--max-concurrent/--budget-usd/--budget-period; 'none' removes a limit."""
    parser.add_argument("--rpm", type=_limit_value(int), help="requests per minute ('none': unlimited)")
    parser.add_argument("--tpm", type=_limit_value(int), help="tokens per minute ('none': unlimited)")
    parser.add_argument("--max-concurrent", type=_limit_value(int), help="requests in flight at once")
    parser.add_argument("--budget-usd", type=_limit_value(float), help="spend allowed per budget period, USD")
    parser.add_argument(
        "--budget-period", type=str.upper, choices=["DAY", "WEEK", "MONTH"], help="calendar period, UTC (default MONTH)"
    )


def limits_from_args(current: Limits, args: argparse.Namespace) -> Limits | None:
    """`current` with the limit flags given on the command line applied; None when none was given."""
    given = {name: getattr(args, name, None) for name in _LIMIT_FLAGS if getattr(args, name, None) is not None}
    if not given:
        return None
    values = {name: getattr(current, name) for name in _LIMIT_FLAGS}
    for name, value in given.items():
        values[name] = None if value == _UNLIMITED else value
    values["budget_period"] = parse_budget_period(values["budget_period"])
    try:
        return check_limits(Limits(**values))
    except ValueError as exc:
        raise BadInputError(str(exc).replace("maxConcurrent", "max-concurrent")) from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        # --data-dir wins over DATA_DIR (and .env), not over CORE_DB_URL.
        data_dir = getattr(args, "data_dir", None)
        settings = load_settings(overrides={"DATA_DIR": data_dir} if data_dir else None)
        if args.command == "serve":
            serve(settings, args)
        else:
            sys.exit(asyncio.run(run_admin_command(settings, args)))
    except ConfigError as exc:
        print(f"llm-router: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


# --- serve ------------------------------------------------------------------------------------


def serve(settings: Settings, args: argparse.Namespace) -> None:
    from router.logging_setup import setup_logging

    settings = serve_settings(settings, args)
    setup_logging(settings)
    settings = start_up(settings, args.prune)
    if not settings.config_file:  # migrations and the stored keys' check (SECRETS_KEY) fail here, not in every worker
        asyncio.run(_with_db(settings, _nothing))
    warn_if_accounts_off(settings)
    if settings.server == "uvicorn":
        run_uvicorn(settings)
    else:
        run_granian(settings)


def serve_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """`serve`'s flags over the settings; with accounts off and no host set, 127.0.0.1 only."""
    overrides: dict[str, Any] = {"port": args.port, "workers": args.workers, "config_file": args.config}
    if args.host:
        overrides.update(host=args.host, host_explicit=True)
    settings = settings.with_overrides(**overrides)
    if not settings.enable_account_management and not settings.host_explicit:
        settings = settings.with_overrides(host="127.0.0.1")
    return settings


def start_up(settings: Settings, prune: bool, environ: dict[str, str] | None = None) -> Settings:
    """`serve`'s start-up once logging is set up: say which databases it uses, keep a session secret in
    the data directory and sync `--config` (its migrations run there). Returns the settings the workers
    run with. `environ`: where config.yaml's `${VAR}`s come from (the process environment by default;
    tests/inprocess.py runs this, and `warn_if_accounts_off`, in a thread before its app starts).
    """
    check_workers(settings)
    log.info("core database: %s", describe_database(settings.core_db_url))
    log.info("analytics database: %s", describe_database(settings.analytics_db_url))
    if settings.admin_password and not settings.admin_session_secret:
        try:
            settings = settings.with_overrides(admin_session_secret=session_secret(settings.data_dir))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"ADMIN_SESSION_SECRET is unset and the data directory cannot keep one: {exc}") from None
    if settings.config_file:
        config = load_config_file(settings.config_file, environ)  # fails before anything starts

        async def sync(service: AdminService) -> list[tuple[int, str]]:
            changes = await service.sync_backends(config, prune)
            if config.prices:  # after the servers: a price may name one
                await service.sync_prices(config.prices, skip_backends={d.name for d in config.disabled})
            return changes

        try:
            changes = asyncio.run(_with_db(settings, sync))
        except ServiceError as exc:
            raise ConfigError(f"{settings.config_file}: {exc.message}") from None
        for warning in config.warnings:
            log.warning("%s: %s", settings.config_file, warning)
        for level, message in changes:
            log.log(level, "%s: %s", settings.config_file, message)
        log.info(
            "%s: %d servers synced, %d disabled, %d prices, %d changes",
            settings.config_file,
            len(config.servers),
            len(config.disabled),
            len(config.prices),
            len(changes),
        )
    elif prune:
        raise ConfigError("--prune needs --config (or CONFIG_FILE)")
    return settings


def warn_if_accounts_off(settings: Settings) -> None:
    if not settings.enable_account_management:
        log.warning(
            "ACCOUNTS ARE OFF (ENABLE_ACCOUNT_MANAGEMENT=false): /v1 needs no key and anyone who can reach "
            "%s:%d can use every backend.%s",
            settings.host,
            settings.port,
            "" if settings.host_explicit else " Listening on 127.0.0.1 only; set SERVER_HOST/--host to change.",
        )


async def _nothing(service: AdminService) -> None:
    return None


def worker_app(settings_json: str) -> Any:
    """The app of one server worker, built from the settings `serve` hands it (not from its environment)."""
    from router.app import create_app
    from router.logging_setup import setup_logging

    settings = settings_from_json(settings_json)
    setup_logging(settings)
    return create_app(settings)


def worker_app_loader(settings: Settings) -> functools.partial[Any]:
    """What each worker process calls for its app (picklable, for workers that are spawned)."""
    return functools.partial(worker_app, settings_to_json(settings))


def run_granian(settings: Settings) -> None:
    """Granian (the default): Rust HTTP/1.1 server, uvloop, one process per worker."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        "router.cli:worker_app",  # named in granian's logs; each worker calls worker_app_loader's partial
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=True,
        backlog=2048,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(settings.client_header_timeout_s * 1000),
            keep_alive=True,
            max_buffer_size=max(settings.max_request_header_bytes, 8192),
        ),
        log_enabled=True,
        log_level=LogLevels.warning,
        log_access=False,
        workers_kill_timeout=int(settings.shutdown_grace_s) + 5,
    ).serve(target_loader=worker_app_loader(settings), wrap_loader=False)


def run_uvicorn(settings: Settings) -> None:
    """uvicorn (SERVER=uvicorn), with the router's header size and header/body time limits."""
    import uvicorn

    from router.server_limits import limited_connection

    config = uvicorn.Config(
        worker_app_loader(settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        loop="uvloop",
        # A protocol factory (uvicorn only calls it), picklable for spawned workers.
        http=functools.partial(  # type: ignore[arg-type]
            limited_connection, settings.max_request_header_bytes, settings.client_header_timeout_s
        ),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        proxy_headers=True,
    )
    # uvicorn.run as it is, but for workers too with an app that is not an import string.
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    if config.workers == 1 and not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


def check_workers(settings: Settings) -> None:
    """Several workers on SQLite are safe here (busy timeout, batched log writes); say what it costs."""
    if settings.workers > 1 and not (is_postgres(settings.core_db_url) and is_postgres(settings.analytics_db_url)):
        log.info(
            "%d workers on SQLite: a busy timeout makes this safe; writes are serialized by SQLite. "
            "Use PostgreSQL (CORE_DB_URL/ANALYTICS_DB_URL) for heavy write loads or several hosts.",
            settings.workers,
        )
    if settings.workers > 1 and not settings.redis_url:
        log.warning(
            "%d workers without REDIS_URL: each worker has its own caches, so admin changes take up to "
            "CATALOG_POLL_INTERVAL_S=%gs to reach the other workers, backend health and in-flight counts are per "
            "worker, rate limits, concurrency limits and budget counters are per worker (each admits up to the "
            "full limit), and a live requestLogged subscription only sees the requests of the worker it is "
            "connected to. Set REDIS_URL to share them.",
            settings.workers,
            settings.catalog_poll_interval_s,
        )


# --- users / backends -------------------------------------------------------------------------


async def _with_db(settings: Settings, action: Callable[[AdminService], Awaitable[Any]]) -> Any:
    from router.catalog import bump_revision

    await init_db(settings)
    revisions: list[int] = []

    async def changed() -> None:
        revisions.append(await bump_revision())

    try:
        return await action(AdminService(changed, SecretBox(settings.secrets_key)))
    finally:
        if revisions and settings.redis_url:  # running routers reload at once instead of at their next poll
            from router.shared import announce_catalog_change

            await announce_catalog_change(settings, revisions[-1])
        await close_db()


def describe_database(url: str) -> str:
    """Where a database is, for people: the SQLite file, or the server URL without its password."""
    if url.startswith("sqlite://"):
        return url.removeprefix("sqlite://").split("?", 1)[0]
    return redact_url(url)


async def run_admin_command(settings: Settings, args: argparse.Namespace) -> int:
    handlers = {
        ("users", "add"): users_add,
        ("users", "delete"): users_delete,
        ("users", "list"): users_list,
        ("users", "modify"): users_modify,
        ("users", "regenerate-key"): users_regenerate_key,
        ("users", "import"): users_import,
        ("backends", "list"): backends_list,
    }
    handler = handlers[(args.command, args.action)]
    where = describe_database(settings.core_db_url)
    new = settings.core_db_url.startswith("sqlite://") and not Path(where).exists()
    # On stderr, so stdout stays what scripts parse (keys, lists).
    print(f"llm-router: database {where}{' (new, empty)' if new else ''}", file=sys.stderr)
    try:
        await _with_db(settings, lambda service: handler(service, args))
    except ServiceError as exc:
        print(f"llm-router: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def users_add(service: AdminService, args: argparse.Namespace) -> None:
    all_backends, names = parse_permissions(args.permissions)
    limits = limits_from_args(Limits(), args)
    user, key = await service.create_user(args.name, args.email, all_backends, backend_names=names)
    if limits is not None:
        await service.set_user_limits(user.id, limits)
    print(f"Created user {user.name}. API key (shown only now, store it safely):")
    print(key)


async def users_delete(service: AdminService, args: argparse.Namespace) -> None:
    user = await service.get_user_by_name(args.name)
    await service.delete_user(user.id)
    print(f"Deleted user {args.name}.")


async def users_list(service: AdminService, args: argparse.Namespace) -> None:
    from router.models.core import User

    users = await User.all().order_by("name").prefetch_related("permissions__backend")
    print(f"{'NAME':<24} {'EMAIL':<28} {'ACTIVE':<7} {'KEY':<12} PERMISSIONS")
    for user in users:
        permissions = "*" if user.all_backends else ",".join(sorted(p.backend.name for p in user.permissions))
        print(
            f"{user.name:<24} {user.email or '-':<28} {'yes' if user.is_active else 'no':<7} "
            f"{user.api_key_prefix + '…':<12} {permissions or '-'}"
        )


async def users_modify(service: AdminService, args: argparse.Namespace) -> None:
    user = await service.get_user_by_name(args.name)
    if args.permissions is not None:
        all_backends, names = parse_permissions(args.permissions)
        await service.set_permissions(user.id, all_backends, names)
    changes: dict[str, Any] = {}
    if args.email is not None:
        changes["email"] = args.email
    if args.activate or args.deactivate:
        changes["is_active"] = bool(args.activate)
    if changes:
        await service.update_user(user.id, **changes)
    from router.catalog import user_limits

    limits = limits_from_args(user_limits(user), args)
    if limits is not None:
        await service.set_user_limits(user.id, limits)
    print(f"Updated user {args.name}.")


async def users_regenerate_key(service: AdminService, args: argparse.Namespace) -> None:
    user = await service.get_user_by_name(args.name)
    _, key = await service.regenerate_key(user.id)
    print(f"New API key for {user.name} (the old one no longer works; shown only now):")
    print(key)


def read_user_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV (header `username,email[,permissions]`) or a JSON list of objects."""
    text = Path(path).read_text()
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BadInputError(f"{path}: must be a JSON list of objects")
        return rows
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "username" not in reader.fieldnames:
        raise BadInputError(f"{path}: the CSV header must be username,email[,permissions]")
    return list(reader)


async def users_import(service: AdminService, args: argparse.Namespace) -> None:
    try:
        rows = read_user_rows(args.file)
    except OSError as exc:
        raise BadInputError(f"{args.file}: cannot read: {exc.strerror}") from None
    created = await service.import_users(rows)
    print(f"Imported {len(created)} users. API keys (shown only now):")
    for name, key in created:
        print(f"{name}\t{key}")


async def backends_list(service: AdminService, args: argparse.Namespace) -> None:
    from router.models.core import Backend

    print(f"{'NAME':<20} {'ACTIVE':<7} {'WEIGHT':<7} {'KEY':<4} {'URL':<40} MODELS")
    for b in await Backend.all().order_by("name"):
        if b.model_override is not None:
            models = "override: " + ", ".join(b.model_override)
        else:
            models = f"from /models, filter: {b.model_filter or '-'}"
        if b.model_append:
            models += " + " + ", ".join(b.model_append)
        print(
            f"{b.name:<20} {'yes' if b.is_active else 'no':<7} {b.weight:<7} {'yes' if b.api_key else 'no':<4} "
            f"{redact_url(b.base_url):<40} {models}"
        )
