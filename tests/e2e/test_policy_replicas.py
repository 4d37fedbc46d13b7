"""Rules changed through the admin API without a restart, on real `moorage serve` processes: a rule added on one
replica is enforced by another within a second, and so is its removal, with the replicas sharing PostgreSQL, or
(two processes on one machine) the default SQLite file beside the data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.postgres_server import PostgresServer

from .auth_servers import PASSWORDS, start_auth_server
from .conftest import MoorageFactory

pytestmark = pytest.mark.e2e
WITHIN_SECONDS = 1.0


@pytest.fixture(params=["postgresql", "sqlite"])
def database_section(request: pytest.FixtureRequest) -> Any:
    if request.param == "sqlite":
        yield {}
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield {"database": {"url": url}}
    server.drop_database(url)


def seconds_until(check: Any, limit: float) -> float:
    """How long until `check()` is true, polling every 20 ms; fails past `limit` (and says what it saw)."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise AssertionError(f"not within {limit} s")
        time.sleep(0.02)


def test_a_rule_changed_through_the_api_is_enforced_on_another_replica_within_a_second(
    moorage_factory: MoorageFactory, tmp_path: Path, database_section: dict[str, Any]
) -> None:
    first = start_auth_server(
        moorage_factory, tmp_path, token=False, auth_extra={"admins": ["admin"]}, extra=database_section
    )
    second = moorage_factory(tmp_path / "auth-root", env={"MOORAGE_CONFIG": str(first.config)})
    admin = httpx.Client(base_url=first.server.url, auth=("admin", PASSWORDS["admin"]), timeout=30.0)
    bob = httpx.Client(base_url=second.url, auth=("bob", PASSWORDS["bob"]), timeout=30.0)
    with admin, bob:
        assert bob.get("/v2/bob-zone/app/tags/list").status_code == 403
        added = admin.post(
            "/api/v1/access-rules", json={"repository": "bob-zone/*", "users": ["bob"], "actions": ["pull"]}
        )
        assert added.status_code == 201, added.text
        # Allowed now: the repository does not exist, so 404 instead of 403.
        took = seconds_until(lambda: bob.get("/v2/bob-zone/app/tags/list").status_code == 404, WITHIN_SECONDS)
        print(f"rule added on one replica, enforced on the other after {took:.3f} s")
        assert admin.delete(f"/api/v1/access-rules/{added.json()['id']}").status_code == 204
        took = seconds_until(lambda: bob.get("/v2/bob-zone/app/tags/list").status_code == 403, WITHIN_SECONDS)
        print(f"rule removed on one replica, refused on the other after {took:.3f} s")
        # The audit log, read on the other replica, names who did it.
        audit = httpx.get(f"{second.url}/api/v1/audit", auth=("admin", PASSWORDS["admin"]), timeout=30.0).json()
        assert [(e["action"], e["actor"]) for e in audit["entries"]] == [
            ("access-rule.delete", "admin"),
            ("access-rule.create", "admin"),
        ]
