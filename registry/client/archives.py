"""Write a docker-archive tarball that `docker load` accepts (manifest.json) and that is an OCI archive too."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from registry.client.manifests import Manifest

EPOCH = 0


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mtime = EPOCH
    info.mode = 0o644
    with path.open("rb") as f:
        tar.addfile(info, f)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = EPOCH
    tar.addfile(info)


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def write_docker_archive(layout: Path, image: Manifest, repo_tag: str | None, archive: Path) -> None:
    """Pack the OCI layout `layout` (holding the single-platform `image`) into `archive`, adding Docker's
    manifest.json; blobs are streamed from their files (constant memory)."""
    config = image.config
    assert config is not None
    docker_manifest = [
        {
            "Config": _blob_name(config.digest),
            "RepoTags": [repo_tag] if repo_tag else [],
            "Layers": [_blob_name(layer.digest) for layer in image.layers],
        }
    ]
    manifest_json = layout / "manifest.json"
    manifest_json.write_text(json.dumps(docker_manifest))
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs")
        for algorithm_dir in sorted((layout / "blobs").iterdir()):
            _add_dir(tar, f"blobs/{algorithm_dir.name}")
            for blob in sorted(algorithm_dir.iterdir()):
                _add_file(tar, blob, f"blobs/{algorithm_dir.name}/{blob.name}")
        for name in ("oci-layout", "index.json", "manifest.json"):
            _add_file(tar, layout / name, name)
