"""``python -m service``: serve the API, migrate the database, create, list and revoke API keys."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from service.settings import settings_from_env

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API with uvicorn (settings from RCS_*)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (default RCS_API_WORKERS, 1); on CPU, one per core serves the most "
        "images (docs/benchmarks/peer.md)",
    )
    serve.add_argument(
        "--log-level",
        default=None,
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="log level of uvicorn and of the service's own loggers (default info)",
    )
    sub.add_parser("migrate", help="apply the database migrations")
    key = sub.add_parser("create-key", help="create an API key and print it once")
    key.add_argument("--name", required=True)
    key.add_argument("--scopes", default="predict", help="comma-separated: admin,predict,train")
    sub.add_parser("list-keys", help="list API keys (ids, names, scopes; never the keys)")
    revoke = sub.add_parser("revoke-key", help="revoke an API key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    if args.command == "serve":
        from service import server

        server.serve(args.host, args.port, args.workers, args.log_level)
    elif args.command == "migrate":
        from service.db.migrate import upgrade

        upgrade(settings_from_env().database_url)
    elif args.command == "create-key":
        _create_key(args.name, args.scopes.split(","))
    elif args.command == "list-keys":
        _list_keys()
    else:
        _revoke_key(args.key_id)


def _session() -> Session:
    from service.db.engine import make_engine, make_sessionmaker
    from service.db.migrate import upgrade

    settings = settings_from_env()
    upgrade(settings.database_url)
    return make_sessionmaker(make_engine(settings.database_url))()


def _create_key(name: str, scopes: list[str]) -> None:
    from service.auth.service import create_key

    try:
        with _session() as session:
            row, key = create_key(session, name, scopes)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{row.id} ({row.scopes}): {key}")


def _list_keys() -> None:
    from service.auth.service import list_keys

    with _session() as session:
        rows = list_keys(session)
    print("id\tname\tscopes\tcreated_at\trevoked_at\tbootstrap")
    for r in rows:
        revoked = "-" if r.revoked_at is None else _time(r.revoked_at)
        print(f"{r.id}\t{r.name}\t{r.scopes}\t{_time(r.created_at)}\t{revoked}\t{r.bootstrap}")


def _revoke_key(key_id: str) -> None:
    from service.auth.service import revoke_key
    from service.errors import ServiceError

    try:
        with _session() as session:
            row = revoke_key(session, key_id)
    except ServiceError as exc:
        raise SystemExit(f"error: {exc.message}") from None
    # As the API's revoke does: done once no running API process still accepts the key from its
    # lookup cache (service/lookups.py).
    time.sleep(settings_from_env().lookup_cache_s)
    print(f"{row.id} ({row.name}) revoked at {_time(row.revoked_at or 0)}")


def _time(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


if __name__ == "__main__":
    main()
