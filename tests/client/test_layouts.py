"""Reading OCI layouts, OCI archives and docker-save tarballs; writing docker archives."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.client.errors import ClientError
from registry.client.layouts import LAYER_TAR, open_source
from registry.client.manifests import REF_NAME
from tests.e2e.images import OciLayout, make_tar, multiarch_index, sha256_digest, small_image


def tar_of_directory(directory: Path, archive: Path) -> None:
    files = {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    archive.write_bytes(make_tar(files))


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def test_layout_directory_and_oci_archive_give_the_same_blobs(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    index = multiarch_index(layout, name="archive", tag="1")
    archive = tmp_path / "image.tar"
    tar_of_directory(layout.path, archive)
    for text in (str(layout.path), str(archive)):
        source, tag = open_source(text)
        assert tag is None
        root = source.choose_root(None)
        assert root.digest == index.index.digest
        manifest = source.manifest(root)
        assert manifest.is_index and [c.digest for c in manifest.children] == [i.manifest.digest for i in index.images]
        layer = index.images[1].layers[1]
        data = await read_all(source.stream(layer.digest))
        assert sha256_digest(data) == layer.digest
        assert await read_all(source.stream(layer.digest, 1000)) == data[1000:]


def test_choose_root_among_several(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    one = small_image(layout, name="one", tag="1")
    two = small_image(layout, name="two", tag="2")
    source, _ = open_source(str(layout.path))
    assert source.choose_root("2").digest == two.manifest.digest
    with pytest.raises(ClientError, match=r"holds 2 images \(1, 2\); name one as SRC:TAG"):
        source.choose_root("3")
    source, tag = open_source(f"{layout.path}:1")
    assert tag == "1" and source.choose_root(tag).digest == one.manifest.digest


def test_docker_save_tarball(tmp_path: Path) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = make_tar({"hello": b"hello\n"})
    compressed = gzip.compress(make_tar({"gz": b"gz\n"}), mtime=0)
    manifest = [
        {
            "Config": "cfg.json",
            "RepoTags": ["team/app:1", "team/app:2"],
            "Layers": ["a/layer.tar", "b/layer.tar", "c/layer.tar"],
        }
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("manifest.json", json.dumps(manifest).encode()),
            ("cfg.json", config),
            ("a/layer.tar", layer),
            ("b/layer.tar", compressed),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("c/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../a/layer.tar"
        tar.addfile(link)
    archive = tmp_path / "saved.tar"
    archive.write_bytes(buf.getvalue())

    source, _ = open_source(str(archive))
    assert [(r.annotations or {}).get(REF_NAME) for r in source.roots] == ["team/app:1", "team/app:2"]
    image = source.manifest(source.choose_root("2"))
    assert image.config is not None and image.config.digest == sha256_digest(config)
    assert [(lay.media_type, lay.digest) for lay in image.layers] == [
        (LAYER_TAR, sha256_digest(layer)),
        (LAYER_TAR + "+gzip", sha256_digest(compressed)),
        (LAYER_TAR, sha256_digest(layer)),
    ]
    assert source.read_bytes(sha256_digest(compressed)) == compressed


@pytest.mark.parametrize("content", [b"not a tar at all" * 100, None])
def test_unusable_sources(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "thing"
    if content is None:
        path.mkdir()
        with pytest.raises(ClientError, match="not an OCI image layout"):
            open_source(str(path))
    else:
        path.write_bytes(content)
        with pytest.raises(ClientError, match="not an uncompressed tar archive"):
            open_source(str(path))
    with pytest.raises(ClientError, match="no such file or directory"):
        open_source(str(tmp_path / "missing"))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(make_tar({"x": b"x"}))
    with pytest.raises(ClientError, match="neither an OCI archive nor a docker-save tarball"):
        open_source(str(empty))
