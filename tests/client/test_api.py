"""The typed Python API that the CLI is a layer over, driven in-process against the fake registry."""

from __future__ import annotations

from pathlib import Path

from registry.client import (
    QuietReporter,
    RegistryClient,
    copy_image,
    open_source,
    parse_platform,
    parse_reference,
    pull_image,
    push_image,
)
from registry.client.progress import BlobProgress
from tests.client.fake_registry import FakeRegistry
from tests.e2e.images import OciLayout, multiarch_index


async def test_push_copy_pull_with_the_python_api(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    index = multiarch_index(layout, name="api", tag="1")
    fake = await FakeRegistry().start()
    try:
        ref = parse_reference(f"{fake.host}/team/api:1")
        source, _ = open_source(str(layout.path))
        async with RegistryClient.connect(ref.registry, anonymous=True) as registry:
            digest = await push_image(
                source, source.choose_root(ref.tag), ref, registry, QuietReporter(), extra_tags=["x"]
            )
            assert digest == index.index.digest
            assert sorted(await registry.tags("team/api")) == ["1", "x"]
            copied = parse_reference(f"{fake.host}/other/api:2")
            assert await copy_image(ref, copied, registry, registry, QuietReporter()) == digest
            dest = tmp_path / "arm"
            image = await pull_image(copied, dest, registry, QuietReporter(), platform=parse_platform("linux/arm64"))
        assert image.digest == index.image_for("arm64").manifest.digest
        assert OciLayout.open(dest).ref("2").digest == image.digest
    finally:
        await fake.stop()


class RecordingProgress:
    def __init__(self) -> None:
        self.completed = 0
        self.peak = 0

    def advance(self, n: int) -> None:
        self.completed += n
        self.peak = max(self.peak, self.completed)

    def restart(self, completed: int) -> None:
        self.completed = completed


class RecordingReporter(QuietReporter):
    def __init__(self) -> None:
        self.bars: dict[str, RecordingProgress] = {}
        self.outcomes: dict[str, tuple[int, str]] = {}

    def blob(self, digest: str, size: int, action: str) -> BlobProgress:
        return self.bars.setdefault(digest, RecordingProgress())

    def done(self, digest: str, size: int, outcome: str) -> None:
        self.outcomes[digest] = (size, outcome)


async def test_progress_counts_every_byte_once_even_across_a_resume(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    layer = layout.add_large_layer(2 * 1024 * 1024, seed=5)
    image = layout.add_image([layer], tag="1")
    fake = await FakeRegistry(drop_patch_after=300 * 1024).start()  # in the layer's first 700 KiB chunk
    try:
        ref = parse_reference(f"{fake.host}/team/progress:1")
        source, _ = open_source(str(layout.path))
        reporter = RecordingReporter()
        async with RegistryClient.connect(ref.registry, anonymous=True) as registry:
            await push_image(source, source.choose_root("1"), ref, registry, reporter, chunk_size=700 * 1024)
    finally:
        await fake.stop()
    assert fake.dropped == 1
    for blob in (image.config, *image.layers):
        assert reporter.outcomes[blob.digest] == (blob.size, "pushed")
        assert reporter.bars[blob.digest].completed == blob.size
        assert reporter.bars[blob.digest].peak <= blob.size
