"""The `pilothouse` command: run the stack or one part of it, migrate, manage tokens."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from settings import Settings

app = typer.Typer(
    help="Pilothouse: durable agent and pipeline work that humans sign off.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
telegram_app = typer.Typer(help="Telegram approval buttons.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(telegram_app, name="telegram")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [env PILOTHOUSE_DATA_DIR]")
]


def _settings(**overrides: Any) -> Settings:
    """Flags win over environment variables; unset flags leave them alone."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> None:
    typer.echo(f"pilothouse: error: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def up(
    data_dir: DataDir = None,
    api_port: Annotated[int | None, typer.Option(help="API port [env PILOTHOUSE_API_PORT]")] = None,
    temporal_port: Annotated[
        int | None, typer.Option(help="Temporal gRPC port [env PILOTHOUSE_TEMPORAL_PORT]")
    ] = None,
    ui_port: Annotated[
        int | None, typer.Option(help="Temporal Web UI port [env PILOTHOUSE_UI_PORT]")
    ] = None,
) -> None:
    """Run Temporal (with its Web UI), the worker and the API together until Ctrl-C."""
    from stack import StackError
    from stack import up as run_stack

    settings = _settings(
        data_dir=data_dir, api_port=api_port, temporal_port=temporal_port, ui_port=ui_port
    )
    try:
        status = run_stack(settings)
    except StackError as exc:
        _fail(str(exc))
    raise typer.Exit(status)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address [env PILOTHOUSE_API_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env PILOTHOUSE_API_PORT]")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes [env PILOTHOUSE_API_WORKERS]")
    ] = None,
) -> None:
    """Run the API alone, against PILOTHOUSE_TEMPORAL_ADDRESS and PILOTHOUSE_DATABASE_URL."""
    import uvicorn

    from api.app import create_app

    settings = _settings(api_host=host, api_port=port, api_workers=workers)
    _logging(settings)
    if settings.api_workers > 1:
        # Each process builds its own app (and event watcher) from the environment.
        os.environ.update(
            PILOTHOUSE_API_HOST=settings.api_host, PILOTHOUSE_API_PORT=str(settings.api_port)
        )
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=settings.api_host,
            port=settings.api_port,
            workers=settings.api_workers,
            log_level=settings.log_level,
            timeout_graceful_shutdown=5,
        )
        return
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )


@app.command()
def worker() -> None:
    """Run the Temporal worker alone, against PILOTHOUSE_TEMPORAL_ADDRESS."""
    from worker import run

    settings = _settings()
    _logging(settings)
    asyncio.run(run(settings))


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply every migration up to head."""
    from store import migrate

    settings = _settings(data_dir=data_dir)
    migrate.upgrade(settings.db_url)
    typer.echo(f"pilothouse: database at revision {migrate.head_revision()}", err=True)


def _with_session(settings: Settings, work: Any) -> Any:
    from store import migrate
    from store.engine import Database

    migrate.upgrade(settings.db_url)

    async def go() -> Any:
        db = Database(settings.db_url)
        try:
            async with db.session() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.dispose()

    return asyncio.run(go())


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Unique name, for example the user or the bot")],
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes")] = "admin",
    expires_in_days: Annotated[int, typer.Option(min=0, help="0 means never")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Create a token and print it alone on stdout, so scripts can capture it."""
    from store.tokens import TokenNameTaken, create_token, parse_scopes

    try:
        parsed = parse_scopes(scopes)
    except ValueError as exc:
        _fail(f"--scopes: {exc}")
    if not parsed:
        _fail("--scopes: give at least one scope")
    expiry = timedelta(days=expires_in_days) if expires_in_days else None
    try:
        _, secret = _with_session(
            _settings(data_dir=data_dir), lambda s: create_token(s, name, parsed, expiry)
        )
    except TokenNameTaken:
        _fail(f"a live token is already named {name!r}")
    typer.echo(secret)


@token_app.command("list")
def token_list(data_dir: DataDir = None) -> None:
    """List live tokens: name, scopes, expiry and last use. Never the secrets."""
    from sqlmodel import col, select

    from store.models import Token

    async def rows(session: Any) -> list[Token]:
        query = select(Token).where(col(Token.revoked_at).is_(None)).order_by(Token.name)
        return list((await session.exec(query)).all())

    tokens = _with_session(_settings(data_dir=data_dir), rows)
    typer.echo(f"{'NAME':24} {'SCOPES':40} {'EXPIRES':20} LAST USED")
    for t in tokens:
        expires = t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never"
        used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
        typer.echo(f"{t.name:24} {','.join(t.scopes):40} {expires:20} {used}")


@token_app.command("revoke")
def token_revoke(name: str, data_dir: DataDir = None) -> None:
    """Revoke the live token with this name."""
    from store.tokens import get_live_by_name, revoke

    async def work(session: Any) -> bool:
        token = await get_live_by_name(session, name)
        if token is None:
            return False
        await revoke(session, token)
        return True

    if not _with_session(_settings(data_dir=data_dir), work):
        _fail(f"no live token is named {name!r}")
    typer.echo(f"pilothouse: revoked token {name!r}", err=True)


def _telegram_settings() -> Settings:
    settings = _settings()
    if not settings.telegram_on:
        _fail("Telegram is off: set PILOTHOUSE_TELEGRAM_BOT_TOKEN")
    return settings


@telegram_app.command("poll")
def telegram_poll(
    once: Annotated[
        bool, typer.Option("--once", help="Handle one batch of updates, then exit")
    ] = False,
) -> None:
    """Long-poll Telegram for button presses and decide gates, without a public URL.

    Removes a webhook set before: Telegram gives updates to one or the other."""
    from api.telegram_updates import poll
    from telegram_bot import GaveUp

    settings = _telegram_settings()
    _logging(settings)
    try:
        asyncio.run(poll(settings, once=once))
    except GaveUp as exc:
        _fail(f"Telegram: {exc}")
    except KeyboardInterrupt:
        pass


@telegram_app.command("set-webhook")
def telegram_set_webhook(
    url: Annotated[str, typer.Argument(help="Where Telegram posts: https://…/telegram/webhook")],
) -> None:
    """Register the webhook with Telegram, with PILOTHOUSE_TELEGRAM_WEBHOOK_SECRET."""
    import time

    from api.telegram_updates import UPDATES
    from telegram_bot import BotLink, GaveUp

    settings = _telegram_settings()
    secret = settings.telegram_webhook_secret
    if secret is None:
        _fail("set PILOTHOUSE_TELEGRAM_WEBHOOK_SECRET: the webhook refuses updates without it")
        return

    async def register() -> None:
        async with BotLink(settings) as link:
            await link.call(
                lambda: link.bot.set_webhook(
                    url, secret_token=secret.get_secret_value(), allowed_updates=UPDATES
                ),
                time.monotonic() + settings.telegram_give_up_seconds,
            )

    try:
        asyncio.run(register())
    except GaveUp as exc:
        _fail(f"Telegram refused the webhook: {exc}")
    typer.echo(f"pilothouse: Telegram posts updates to {url}", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
