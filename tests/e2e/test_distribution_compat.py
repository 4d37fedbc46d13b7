"""Storage compatibility with CNCF Distribution 2.8 (Debian's docker-registry): one root, either server.

Images are pushed with skopeo to one registry, which is then stopped; the other registry is started on the same
filesystem root and must serve every repository, tag, manifest and blob exactly as pushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import DistributionFactory, MoorageFactory, RunningServer, Skopeo
from .images import OciLayout, assert_same_blobs, multiarch_index, small_image

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Pushed:
    repo: str
    tag: str
    layout_tag: str  # the tag of the image in the source layout
    digest: str  # manifest or index digest
    is_index: bool = False


def build_images(tmp_path: Path) -> tuple[OciLayout, list[Pushed]]:
    """Three repositories: two images under three tags, a multi-arch index under two tags, an arm64-only image."""
    src = OciLayout(tmp_path / "src")
    app_v1 = small_image(src, name="app-v1", tag="app-v1")
    app_v2 = small_image(src, name="app-v2", tag="app-v2")
    multi = multiarch_index(src, name="multi", tag="multi")
    tool = small_image(src, name="tool", architecture="arm64", tag="tool")
    pushed = [
        Pushed("e2e/app", "v1", "app-v1", app_v1.manifest.digest),
        Pushed("e2e/app", "v2", "app-v2", app_v2.manifest.digest),
        Pushed("e2e/app", "latest", "app-v2", app_v2.manifest.digest),
        Pushed("e2e/multi", "1.0", "multi", multi.index.digest, is_index=True),
        Pushed("e2e/multi", "latest", "multi", multi.index.digest, is_index=True),
        Pushed("tools/arm-tool", "stable", "tool", tool.manifest.digest),
    ]
    return src, pushed


def push_all(server: RunningServer, skopeo: Skopeo, src: OciLayout, pushed: list[Pushed]) -> None:
    for p in pushed:
        extra = ["--all"] if p.is_index else []
        skopeo.push(src.path, p.layout_tag, server.ref(p.repo, p.tag), *extra)


def assert_serves_everything(
    server: RunningServer, skopeo: Skopeo, src: OciLayout, pushed: list[Pushed], out: Path
) -> None:
    """The catalog, the tag lists, and every tag pulled back byte for byte with its original digest."""
    repos = sorted({p.repo for p in pushed})
    context = server.describe
    catalog = server.get_json("/v2/_catalog")
    assert catalog == {"repositories": repos}, f"catalog {catalog}, pushed {repos}; {context()}"
    for repo in repos:
        tags = sorted(p.tag for p in pushed if p.repo == repo)
        listed = server.get_json(f"/v2/{repo}/tags/list")
        if server.kind == "docker-registry":
            # Distribution 2.8 lists tags in directory order; the OCI spec (and moorage) use lexical order.
            listed["tags"] = sorted(listed["tags"])
        assert listed == {"name": repo, "tags": tags}, f"{repo}: listed {listed}, pushed {tags}"
        assert sorted(skopeo.list_tags(server.ref(repo))) == tags

    for p in pushed:
        layout_tag = f"{p.repo.replace('/', '-')}-{p.tag}"
        extra = ["--all"] if p.is_index else []
        skopeo.pull(server.ref(p.repo, p.tag), out, layout_tag, *extra)
        pulled = OciLayout.open(out)
        assert pulled.ref(layout_tag).digest == p.digest, f"{p.repo}:{p.tag} has another digest than was pushed"
        assert_same_blobs(src, pulled, p.digest)
        # The manifest bytes, by tag and by digest, are the pushed ones, with the digest header to match.
        for reference in (p.tag, p.digest):
            response = server.get(
                f"/v2/{p.repo}/manifests/{reference}",
                headers={"Accept": src.ref(p.layout_tag).media_type},
            )
            assert response.status_code == 200, f"GET {p.repo} manifest {reference}: {response.text}"
            assert response.content == src.read_blob(p.digest)
            assert response.headers["docker-content-digest"] == p.digest
            assert response.headers["content-type"] == src.ref(p.layout_tag).media_type


def test_moorage_serves_a_distribution_root(
    distribution_factory: DistributionFactory,
    moorage_factory: MoorageFactory,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    root = tmp_path / "shared-root"
    src, pushed = build_images(tmp_path)

    distribution = distribution_factory(root)
    push_all(distribution, skopeo, src, pushed)
    # The reference server itself must agree with what we pushed, or the comparison below means nothing.
    assert distribution.get_json("/v2/_catalog") == {"repositories": sorted({p.repo for p in pushed})}
    distribution.stop()
    assert (root / "docker" / "registry" / "v2" / "repositories" / "e2e" / "app" / "_manifests").is_dir()

    moorage = moorage_factory(root)
    assert_serves_everything(moorage, skopeo, src, pushed, tmp_path / "pulled-from-moorage")


def test_distribution_serves_a_moorage_root(
    distribution_factory: DistributionFactory,
    moorage_factory: MoorageFactory,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    root = tmp_path / "shared-root"
    src, pushed = build_images(tmp_path)

    moorage = moorage_factory(root)
    push_all(moorage, skopeo, src, pushed)
    moorage.stop()

    distribution = distribution_factory(root)
    assert_serves_everything(distribution, skopeo, src, pushed, tmp_path / "pulled-from-distribution")
