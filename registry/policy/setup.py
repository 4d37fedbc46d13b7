"""Wiring the policy database into the app (called by registry.app.create_app): the follower of its changes, and
quotas as one of the store's admission checks."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from registry import paths
from registry.policy.quotas import Quotas
from registry.policy.service import Policy
from registry.settings import Settings, local_database_file
from registry.store.registry import Registry

POLICY_STATE = "policy"
QUOTAS_STATE = "quotas"


def policy_target(settings: Settings) -> Path | str:
    """`database.url` (PostgreSQL, or an SQLite file), else `policy.path`, else beside the data on the filesystem
    backend, else a file of this bucket's own in the temporary directory."""
    target = settings.database.target()
    if target is not None:
        return target
    return local_database_file(settings, settings.policy.path, paths.POLICY_DATABASE, "moorage-policy")


def install(app: Starlette, settings: Settings, registry: Registry) -> Policy:
    durable = not (
        settings.database.url is None and settings.policy.path is None and settings.storage.backend != "filesystem"
    )
    policy = Policy(policy_target(settings), settings.policy.poll_interval, durable=durable)
    quotas = Quotas(settings.quotas, policy, getattr(app.state, "index", None), settings.policy, app.state.metrics)
    policy.listen(quotas.apply)
    registry.admissions.add(quotas)
    setattr(app.state, POLICY_STATE, policy)
    setattr(app.state, QUOTAS_STATE, quotas)
    return policy
