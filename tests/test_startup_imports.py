"""What a server's start imports: only what its configuration uses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_default_server_loads_neither_psycopg_nor_httpx_nor_the_client(tmp_path: Path) -> None:
    """The default server (filesystem, SQLite, no single sign-on), started and stopped, with the parser it shares with
    the client's commands built. psycopg (the PostgreSQL engine's) and httpx (the OIDC client's and the companion
    client's, with the rich, click and pygments it imports) took ~0.1 s each of every start."""
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from asgi_lifespan import LifespanManager
        from registry.app import create_app
        from registry.cli import build_parser
        from registry.settings import Settings

        build_parser()
        settings = Settings.model_validate({{"storage": {{"filesystem": {{"root": {str(tmp_path / "data")!r}}}}}}})

        async def main() -> None:
            async with LifespanManager(create_app(settings)):
                pass

        asyncio.run(main())
        heavy = ("psycopg", "psycopg_pool", "httpx", "rich")
        print(sorted(n for n in sys.modules if n.split(".")[0] in heavy or n == "registry.client.commands"))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
