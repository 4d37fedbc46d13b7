"""podman (Debian's package) against a real `moorage serve`: pull into its own storage, push back, inspect.

podman keeps images in containers-storage: each test gives it a private store (`--root`/`--runroot` under the
test's temp dir, the `vfs` driver so that nothing is mounted), so no test touches the machine's images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.client.cli_runner import client_env

from .conftest import RunningServer, Skopeo, require_tool
from .images import OciLayout, small_image

PODMAN_TIMEOUT = 120


@dataclass
class Podman:
    binary: str
    home: Path
    runroot: Path  # podman wants it under 50 characters: pytest's temp paths are longer
    registries_conf: Path | None = None  # CONTAINERS_REGISTRIES_CONF: mirrors, for instance

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            self.binary,
            "--root",
            str(self.home / "storage"),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            *args,
        ]
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.home / "xdg"),
            "HOME": str(self.home),
            # Credentials go to (and come from) this file only, never the machine's.
            "REGISTRY_AUTH_FILE": str(self.home / "auth.json"),
        }
        if self.registries_conf is not None:
            env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=PODMAN_TIMEOUT, env=env, check=False)
        if check:
            assert result.returncode == 0, f"`{' '.join(argv)}` exited with {result.returncode}:\n{result.stderr}"
        return result

    def image_config(self, ref: str) -> dict[str, Any]:
        """The image's OCI config as podman stored it."""
        (entry,) = json.loads(self.run("image", "inspect", ref).stdout)
        return dict(entry)


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    home = tmp_path / "podman"
    (home / "xdg").mkdir(parents=True)
    (home / "auth.json").write_text("{}")
    runroot = Path(tempfile.mkdtemp(prefix="moorage-podman-"))
    try:
        yield Podman(require_tool("podman", "podman"), home, runroot)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_pulls_and_pushes(moorage: RunningServer, skopeo: Skopeo, podman: Podman, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="podman", tag="v1")
    skopeo.push(src.path, "v1", moorage.ref("e2e/podman-src", "v1"))

    source = f"{moorage.host}/e2e/podman-src:v1"
    podman.run("pull", "--quiet", "--tls-verify=false", source)
    pulled = podman.image_config(source)
    assert pulled["RootFS"]["Layers"] == list(image.diff_ids)

    # podman pushes from its own storage (re-compressing the layers): the registry must take what it sends.
    target = f"{moorage.host}/e2e/podman-dst:v2"
    podman.run("push", "--quiet", "--tls-verify=false", source, target)
    assert moorage.get_json("/v2/e2e/podman-dst/tags/list") == {"name": "e2e/podman-dst", "tags": ["v2"]}
    info = skopeo.inspect(moorage.ref("e2e/podman-dst", "v2"))
    assert info["Architecture"] == "amd64"
    # Whatever compression podman chose, the uncompressed layers are the ones we pushed.
    config = json.loads(skopeo.inspect_raw(moorage.ref("e2e/podman-dst", "v2"), "--config"))
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)

    # And podman pulls back what it pushed, every blob verified by podman against its digest.
    podman.run("rmi", "--all", "--force")
    podman.run("pull", "--quiet", "--tls-verify=false", target)
    assert podman.image_config(target)["RootFS"]["Layers"] == list(image.diff_ids)


def test_podman_reports_a_missing_image(moorage: RunningServer, podman: Podman) -> None:
    result = podman.run("pull", "--tls-verify=false", f"{moorage.host}/e2e/nothing:here", check=False)
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr, result.stderr


def test_a_docker_archive_from_moorage_pull_loads_under_its_own_name(
    moorage: RunningServer, skopeo: Skopeo, podman: Podman, tmp_path: Path
) -> None:
    """The archive is a docker-archive and an OCI archive at once; podman loads it as the latter and names the
    image after the index's ref name, which must be the whole reference (not `localhost/2.0:latest`)."""
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="archive", tag="2.0")
    skopeo.push(src.path, "2.0", moorage.ref("team/demo", "2.0"))
    archive = tmp_path / "demo.tar"
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    reference = f"{moorage.host}/team/demo:2.0"
    pulled = subprocess.run(
        [sys.executable, "-m", "registry", "pull", reference, str(archive), "--format", "docker-archive"],
        capture_output=True,
        text=True,
        timeout=PODMAN_TIMEOUT,
        env=client_env(docker_config),
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    loaded = podman.run("load", "--input", str(archive))
    assert f"Loaded image: {reference}" in loaded.stdout + loaded.stderr, loaded.stdout + loaded.stderr
    assert podman.image_config(reference)["RootFS"]["Layers"] == list(image.diff_ids)
    inspected = skopeo.inspect(f"docker-archive:{archive}")
    assert inspected["Layers"] and inspected["Architecture"] == "amd64"
