"""``python -m service``: serve the API, migrate the database, create API keys."""

from __future__ import annotations

import argparse
import os

from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API with uvicorn (settings from RCS_*)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    sub.add_parser("migrate", help="apply the database migrations")
    key = sub.add_parser("create-key", help="create an API key and print it once")
    key.add_argument("--name", required=True)
    key.add_argument("--scopes", default="predict", help="comma-separated: predict,train")
    args = parser.parse_args(argv)

    if args.command == "serve":
        # Before torch loads OpenMP: its idle threads must sleep, not spin, or they starve the
        # threads that decode images and run other requests' passes (on CPU, p95 latency grew
        # twentyfold with spinning). An explicit setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import uvicorn

        uvicorn.run(
            "service.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
        )
    elif args.command == "migrate":
        from service.db.migrate import upgrade

        upgrade(Settings().database_url)
    else:
        _create_key(args.name, args.scopes.split(","))


def _create_key(name: str, scopes: list[str]) -> None:
    from service.auth.service import create_key
    from service.db.engine import make_engine, make_sessionmaker
    from service.db.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        row, key = create_key(session, name, scopes)
    print(f"{row.id} ({row.scopes}): {key}")


if __name__ == "__main__":
    main()
