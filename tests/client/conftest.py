"""The e2e fixtures (real `moorage serve` and Debian's docker-registry processes, skopeo), re-exported for the
client's tests, plus helpers to run the `moorage` CLI."""

from __future__ import annotations

from tests.e2e.conftest import (
    RunningServer,
    Skopeo,
    cleanup_paths,
    distribution_factory,
    moorage,
    moorage_factory,
    pytest_runtest_makereport,
    skopeo,
    skopeo_binary,
    teardown_callbacks,
)

__all__ = [
    "RunningServer",
    "Skopeo",
    "cleanup_paths",
    "distribution_factory",
    "moorage",
    "moorage_factory",
    "pytest_runtest_makereport",
    "skopeo",
    "skopeo_binary",
    "teardown_callbacks",
]
