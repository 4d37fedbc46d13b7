"""`moorage token create|list|revoke`: CI tokens, kept in the storage every replica reads (see registry/admin.py);
with `--registry HOST`, the caller's own personal access tokens, through that registry's API
(registry/client/personal_tokens.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from registry.admin import EXIT_FAILURE, EXIT_OK, open_registry, set_main
from registry.auth.ci_tokens import CiToken, CiTokenError, CiTokenStore, token_records
from registry.durations import parse_duration
from registry.settings import Settings


def add_commands(commands: Any) -> None:
    """Register subcommands on the `moorage` parser's subparsers."""
    token = commands.add_parser(
        "token",
        help="manage CI tokens (scoped secrets for pipelines), or with --registry your personal access tokens",
        description="CI tokens: a name and a secret, used as user name and password (basic auth, docker login, "
        "/auth/token). Only a hash of the secret is stored, in the registry's storage, so every replica sees a "
        "new or revoked token at once. With --registry HOST: your personal access tokens on HOST (log in first "
        "with `moorage login HOST`), used with your own user name; they can do what you can, within their scopes.",
    )
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="create a token and print its secret (once)", description="The secret is the last line."
    )
    create.add_argument("--name", required=True, help="the token's name: the user name it logs in with")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help="repository:NAME:ACTIONS, e.g. 'repository:team/app:pull,push' (NAME may be a glob: team/*, team/**; "
        "ACTIONS among pull, push, delete, or *); repeat for several",
    )
    create.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30d, 12h, 90m (default: no expiry)")
    _registry_flags(create)
    set_main(create, _create)
    listing = actions.add_parser("list", help="list the tokens (never their secrets)")
    _registry_flags(listing)
    set_main(listing, _list)
    revoke = actions.add_parser("revoke", help="delete a token: it is refused at once, on every replica")
    revoke.add_argument("name", metavar="NAME", help="a CI token's name; with --registry, a personal token's id")
    _registry_flags(revoke)
    set_main(revoke, _revoke)


def _registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", metavar="HOST", help="your personal access tokens on HOST (through its API) instead of CI tokens"
    )
    parser.add_argument("--insecure", action="store_true", help="with --registry: plain HTTP")
    parser.add_argument("--ca-file", metavar="FILE", help="with --registry: verify HOST's certificate with this CA")


def _lifetime(text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    seconds = parse_duration(text)
    if isinstance(seconds, str):
        try:
            seconds = float(seconds)
        except ValueError:
            raise CiTokenError(f"--expires {text}: expected a duration such as 30d, 12h or 90m") from None
    if not isinstance(seconds, float | int) or seconds <= 0:
        raise CiTokenError(f"--expires {text}: the duration must be positive")
    return dt.timedelta(seconds=seconds)


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "never"


def _scopes(token: CiToken) -> str:
    return " ".join(str(grant) for grant in token.grants)


async def _personal(args: argparse.Namespace) -> int:
    """The `--registry` form of each action: the caller's personal tokens through the registry's API."""
    from registry.client import personal_tokens
    from registry.client.errors import ClientError

    where = {"insecure": args.insecure, "ca_file": args.ca_file}
    try:
        if args.token_command == "create":
            lifetime = _lifetime(args.expires)
            made = await personal_tokens.create(
                args.registry, args.name, args.scope, lifetime.total_seconds() if lifetime else None, **where
            )
            print(f"Created personal token {made.get('name')!r} (id {made.get('id')}): {' '.join(made['scopes'])}.")
            print(f"Log in with your user name {made.get('owner')!r} and this token as the password; not shown again:")
            print(made["token"])
        elif args.token_command == "list":
            rows = [("ID", "NAME", "SCOPES", "EXPIRES")]
            for token in await personal_tokens.listed(args.registry, **where):
                expires = token.get("expires_at")
                when = dt.datetime.fromtimestamp(expires, dt.UTC) if isinstance(expires, float | int) else None
                rows.append(
                    (str(token.get("id")), str(token.get("name")), " ".join(token.get("scopes", [])), _when(when))
                )
            for row in rows:
                print("  ".join(row))
        else:
            await personal_tokens.revoke(args.registry, args.name, **where)
            print(f"Revoked personal token {args.name}.")
    except (ClientError, CiTokenError) as e:
        print(f"moorage token {args.token_command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        print(f"moorage token {args.token_command}: unreadable answer from {args.registry}: {e!r}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _create(args: argparse.Namespace, settings: Settings) -> int:
    if args.registry:
        return await _personal(args)
    try:
        lifetime = _lifetime(args.expires)
        async with open_registry(settings) as registry:
            token, secret = await CiTokenStore(token_records(registry.backend, settings.database.url)).create(
                args.name, args.scope, lifetime
            )
    except CiTokenError as e:
        print(f"moorage token create: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"Created CI token {token.name!r}: {_scopes(token)}; expires {_when(token.expires_at)}.")
    print(f"Log in with the user name {token.name!r} and this secret as the password; it is not shown again:")
    print(secret)
    return EXIT_OK


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    if args.registry:
        return await _personal(args)
    async with open_registry(settings) as registry:
        tokens = await CiTokenStore(token_records(registry.backend, settings.database.url)).list()
    if not tokens:
        print("No CI tokens.", file=sys.stderr)
        return EXIT_OK
    rows = [("NAME", "SCOPES", "CREATED", "EXPIRES")]
    for token in tokens:
        expires = _when(token.expires_at) + (" (expired)" if token.expired() else "")
        rows.append((token.name, _scopes(token), _when(token.created_at), expires))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    return EXIT_OK


async def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    if args.registry:
        return await _personal(args)
    try:
        async with open_registry(settings) as registry:
            revoked = await CiTokenStore(token_records(registry.backend, settings.database.url)).revoke(args.name)
    except CiTokenError as e:
        print(f"moorage token revoke: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if not revoked:
        print(f"moorage token revoke: no token named {args.name!r}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"Revoked CI token {args.name!r}.")
    return EXIT_OK
