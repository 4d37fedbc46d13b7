"""Benchmark of the web UI's pages on a registry of 10,000 repositories: for each page, p50 and p99 server response
time (ms, request sent to body fully read) and page size (bytes), against the targets "pages under 100 KB and
rendered in under 100 ms with 10,000 repositories".

    .venv/bin/python bench/ui_pages.py                                   # 10,000 repositories (~3-4 min)
    .venv/bin/python bench/ui_pages.py --repositories 200                # smoke run (~20 s)
    .venv/bin/python bench/ui_pages.py --output bench/results/ui_pages.md

The storage is written directly in Distribution's filesystem layout (what `moorage serve` reads; see
registry/paths.py), not pushed over HTTP: 50 distinct images (configs with labels, env, history; 2-5 layers drawn
from a pool of 120 shared layer blobs; linux/amd64, linux/arm64 and linux/arm/v7) are reused by every repository.
Each tag has its own manifest (the image's config and layers, plus per-repository annotations: a description, the
version), `latest` shares the newest version's manifest; 10% of the repositories have 10 tags (9 manifests), the
others 1-3. Tags carry Moorage's `revision-tags` marks. Push times (the links' modification times) are spread over
the past year. Then `moorage serve` starts on that root (its metadata index builds itself from storage: the time to
`/readyz` 200 is reported), the catalog is checked to hold every repository, and a few thousand manifest GETs
give repositories pull counts (so that `sort=pulls` is not all ties).

Every page is then fetched one request at a time over one keep-alive connection (httpx, HTTP/1.1; no
compression is offered by the server), after 2 untimed warm-up requests: `--samples` times (default 100), or fewer
when a page's samples take more than `--page-budget` seconds. The time is from sending the request to the last
byte of the body (it includes httpx's own overhead, ~0.3 ms here). `/ui/storage` reads the metadata index's
reference counts; its first load is also reported on its own (until 904e9d1 it walked storage: 53-65 s cold at
10,000 repositories).

A page meets the target when its body is under 100 KB (100,000 bytes) and its p99 is under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from servers import CLOCK_TICKS, CpuSnapshot, Server, start_moorage, wait_moorage_ready  # noqa: E402

ROOT = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TARGET_BYTES = 100_000
TARGET_MS = 100.0
IMAGES = 50
LAYER_POOL = 120
READY_TIMEOUT_S = 240.0
WARMUP = 2
TEAMS = [
    "payments", "search", "platform", "identity", "data", "mobile", "web", "infra", "ml", "billing",
    "growth", "support", "security", "media", "maps", "ads", "checkout", "catalog", "ops", "core",
]  # fmt: skip
WORDS = [
    "api", "worker", "gateway", "frontend", "scheduler", "indexer", "proxy", "exporter", "cache", "importer",
    "notifier", "renderer", "resolver", "ingest", "sync", "admin", "reports", "jobs", "auth", "stream",
]  # fmt: skip
PLATFORMS = [("linux", "amd64", None), ("linux", "arm64", None), ("linux", "arm", "v7")]
TIERS = ["frontend", "backend", "batch", "edge"]
SEARCH_WORD = "api"  # one name word in 20 picks: ~1 repository in 10 has it in its name, more in descriptions
LABEL_QUERY = "label:com.example.tier=batch"
PLATFORM_QUERY = "platform:linux/amd64"
NO_MATCH_QUERY = "platform:linux/s390x"  # no image has it: every repository is looked at (the worst case)
NEXT_PAGE = re.compile(r'<a id="next-page"[^>]*\bhref="([^"]+)"')


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the storage layout ---------------------------------------------------------------------------------------------


class Layout:
    """Writes Distribution's filesystem layout under `root`, creating each directory once."""

    def __init__(self, root: Path) -> None:
        self.base = root / ROOT
        self._dirs: set[str] = set()
        self.files = 0
        self.blobs: dict[str, int] = {}  # digest -> size, of every blob written

    def write(self, relative: str, data: bytes, mtime: float | None = None) -> None:
        path = f"{self.base}/{relative}"
        directory = path.rpartition("/")[0]
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        with open(path, "wb") as f:
            f.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        self.files += 1

    def blob(self, data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        digest = f"sha256:{hexdigest}"
        if digest not in self.blobs:
            self.write(f"blobs/sha256/{hexdigest[:2]}/{hexdigest}/data", data)
            self.blobs[digest] = len(data)
        return digest


@dataclass
class Image:
    """One of the shared images: its config's and layers' descriptors."""

    config: dict[str, Any]
    layers: list[dict[str, Any]]
    platform: str
    tier: str


@dataclass
class Fill:
    names: list[str] = field(default_factory=list)
    ten_tags: str = ""  # a repository with 10 tags
    ten_tags_image: str = ""  # the digest of its `latest` manifest (an image with 5 layers)
    tags: int = 0
    manifests: int = 0
    files: int = 0
    seconds: float = 0.0


def make_images(layout: Layout, rng: random.Random) -> list[Image]:
    layers: list[dict[str, Any]] = []
    for n in range(LAYER_POOL):
        data = rng.randbytes(rng.randint(512, 4096))
        layers.append({"mediaType": OCI_LAYER, "digest": layout.blob(data), "size": len(data), "n": n})
    images = []
    for k in range(IMAGES):
        os_name, arch, variant = PLATFORMS[0 if k % 2 == 0 else (1 if k % 5 else 2)]
        tier = TIERS[k % len(TIERS)]
        chosen = rng.sample(layers[:20], 1) + rng.sample(layers[20:], 4 if k == 0 else rng.randint(1, 4))
        history: list[dict[str, Any]] = [
            {
                "created": "2026-01-02T03:04:05Z",
                "created_by": f"/bin/sh -c #(nop) ADD file:{layer['digest'][7:23]} in /",
            }
            for layer in chosen
        ]
        history.insert(1, {"created": "2026-01-02T03:04:06Z", "created_by": "ENV LANG=C.UTF-8", "empty_layer": True})
        history.append({"created": "2026-01-02T03:04:07Z", "created_by": 'CMD ["/app/run"]', "empty_layer": True})
        config: dict[str, Any] = {
            "architecture": arch,
            "os": os_name,
            "created": f"2026-0{1 + k % 9}-1{k % 10}T12:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                "Entrypoint": ["/app/entrypoint.sh"],
                "Cmd": ["/app/run", "--port", "8080"],
                "ExposedPorts": {"8080/tcp": {}},
                "WorkingDir": "/app",
                "User": "1000:1000",
                "Labels": {
                    "org.opencontainers.image.vendor": "Example Corp",
                    "org.opencontainers.image.licenses": "Apache-2.0",
                    "org.opencontainers.image.source": f"https://git.example.com/images/base-{k:02d}",
                    "com.example.tier": tier,
                    "com.example.base": f"base-{k:02d}",
                },
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(str(x).encode()).hexdigest()}" for x in chosen],
            },
            "history": history,
        }
        if variant:
            config["variant"] = variant
        data = json.dumps(config, indent=2).encode()
        descriptor = {"mediaType": OCI_CONFIG, "digest": layout.blob(data), "size": len(data)}
        platform_name = "/".join(p for p in (os_name, arch, variant) if p)
        images.append(
            Image(descriptor, [{k2: v for k2, v in x.items() if k2 != "n"} for x in chosen], platform_name, tier)
        )
    return images


def generate(root: Path, repositories: int, seed: int = 7) -> Fill:
    """The whole registry: `repositories` repositories over the shared images (see the module's docstring)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    layout = Layout(root)
    images = make_images(layout, rng)
    fill = Fill()
    now = time.time()
    for i in range(repositories):
        team = TEAMS[i % len(TEAMS)]
        first, second = rng.choice(WORDS), rng.choice(WORDS)
        name = f"{team}/{first}-{second}-{i:05d}"
        fill.names.append(name)
        repo = f"repositories/{name}"
        ten = i % 10 == 0
        count = 10 if ten else rng.choice((1, 2, 3))
        versions = max(count - 1, 1)  # `latest` shares the newest version's manifest
        base = rng.randrange(IMAGES)
        pushed = now - rng.uniform(1 * 86400, 365 * 86400)
        description = f"The {first} {second} service of the {team} team (number {i})"
        linked: set[str] = set()
        version_digests: list[tuple[str, str, float]] = []
        for v in range(versions):
            image = images[0] if ten and v == versions - 1 and i == 0 else images[(base + v) % IMAGES]
            version = f"1.{v}.0"
            at = min(pushed + v * 86400 * rng.uniform(0.5, 3), now - 60)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": image.config,
                "layers": image.layers,
                "annotations": {
                    "org.opencontainers.image.description": description,
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                    "org.opencontainers.image.revision": hashlib.sha1(f"{name}@{version}".encode()).hexdigest(),
                },
            }
            digest = layout.blob(json.dumps(manifest, indent=3).encode())
            hexdigest = digest[7:]
            layout.write(f"{repo}/_manifests/revisions/sha256/{hexdigest}/link", digest.encode(), at)
            for descriptor in (image.config, *image.layers):
                if descriptor["digest"] not in linked:
                    linked.add(descriptor["digest"])
                    layout.write(
                        f"{repo}/_layers/sha256/{descriptor['digest'][7:]}/link", descriptor["digest"].encode()
                    )
            version_digests.append((version, digest, at))
            fill.manifests += 1
        tags = [(version, digest, at) for version, digest, at in version_digests][: count - 1] if count > 1 else []
        tags.append(("latest", *version_digests[-1][1:]))
        for tag, digest, at in tags:
            layout.write(f"{repo}/_manifests/tags/{tag}/current/link", digest.encode(), at)
            layout.write(f"{repo}/_manifests/tags/{tag}/index/sha256/{digest[7:]}/link", digest.encode(), at)
            layout.write(f"{repo}/_manifests/revision-tags/sha256/{digest[7:]}/{tag}", b"")
            fill.tags += 1
        layout.write(f"{repo}/_manifests/revision-tags-complete", b"")
        if ten and not fill.ten_tags:
            fill.ten_tags, fill.ten_tags_image = name, version_digests[-1][1]
    fill.files = layout.files
    fill.seconds = time.perf_counter() - started
    return fill


# -- measuring ------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class PageResult:
    label: str
    path: str
    size: int = 0
    times_ms: list[float] = field(default_factory=list)
    note: str = ""
    failures: list[str] = field(default_factory=list)  # answers other than 200

    @property
    def p50(self) -> float:
        return percentile(self.times_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.times_ms, 0.99)

    def verdict(self) -> str:
        misses = []
        if self.size >= TARGET_BYTES:
            misses.append("size")
        if self.p99 >= TARGET_MS:
            misses.append("time" if self.p50 >= TARGET_MS else "p99 only")
        if self.failures:
            misses.append(f"{len(self.failures)} errors")
        return "yes" if not misses else "NO (" + ", ".join(misses) + ")"

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "size_bytes": self.size,
            "samples": len(self.times_ms),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "max_ms": round(max(self.times_ms), 2),
            "mean_ms": round(statistics.fmean(self.times_ms), 2),
            "met": self.verdict(),
            "note": self.note,
            "failures": self.failures,
        }


def fetch(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(path)  # reads the whole body
    return (time.perf_counter() - started) * 1000, response


def measure(
    client: httpx.Client,
    label: str,
    path: str,
    samples: int,
    budget_s: float,
    check: Callable[[httpx.Response], None] | None = None,
) -> PageResult:
    """`samples` timed GETs of `path` after WARMUP untimed ones. An answer other than 200 is counted (its time is
    not), not fatal: the table says how many there were, and the server's log is searched for them at the end."""
    result = PageResult(label, path)
    response = None
    for _ in range(WARMUP * 3):
        _, response = fetch(client, path)
        if response.status_code == 200:
            break
        result.failures.append(f"{response.status_code} {response.text[:200]}")
    if response is None or response.status_code != 200:
        raise RuntimeError(f"GET {path}: no 200 answer in {WARMUP * 3} tries: {result.failures[-1]}")
    if check is not None:
        check(response)
    fetch(client, path)
    result.size = len(response.content)
    began = time.perf_counter()
    while len(result.times_ms) < samples:
        elapsed, response = fetch(client, path)
        if response.status_code != 200:
            result.failures.append(f"{response.status_code} {response.text[:200]}")
            continue
        result.times_ms.append(elapsed)
        if time.perf_counter() - began > budget_s and len(result.times_ms) >= 10:
            result.note = f"{len(result.times_ms)} samples (time budget)"
            break
    failed = f", {len(result.failures)} failed: {result.failures[0]}" if result.failures else ""
    log(
        f"  {label}: {result.size:,} B, p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms "
        f"(x{len(result.times_ms)}){failed}"
    )
    return result


def has_rows(minimum: int) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        rows = response.text.count('<tr class="repository"')
        if rows < minimum:
            raise RuntimeError(f"{response.request.url}: {rows} repository rows, expected at least {minimum}")

    return check


def contains(text: str) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        if text not in response.text:
            raise RuntimeError(f"{response.request.url}: the page does not contain {text!r}")

    return check


def catalog_count(client: httpx.Client) -> int:
    """Every name of `/v2/_catalog?n=20000`, following `Link` if the server caps the page."""
    url: str | None = "/v2/_catalog?n=20000"
    names = 0
    while url:
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
        names += len(response.json()["repositories"])
        link = response.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
    return names


async def seed_pulls(base_url: str, names: list[str], pulls: int, rng: random.Random) -> float:
    """`pulls` manifest GETs of `latest`, skewed towards a few repositories, 8 at a time; the seconds it took."""
    if pulls <= 0:
        return 0.0
    popular = rng.sample(names, min(len(names), max(1, len(names) // 10)))
    weights = [1.0 / (rank + 1) for rank in range(len(popular))]
    targets = rng.choices(popular, weights, k=pulls)
    queue = iter(targets)
    started = time.perf_counter()
    headers = {"Accept": OCI_MANIFEST}
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:

        async def worker() -> None:
            for name in queue:
                response = await client.get(f"/v2/{name}/manifests/latest", headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"pull {name}: {response.status_code} {response.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(8)))
    return time.perf_counter() - started


def session_cpu(snapshot: CpuSnapshot, session: int) -> float:
    return sum(info.cpu_ticks for info in snapshot.procs.values() if info.session == session) / CLOCK_TICKS


def run_pages(server: Server, fill: Fill, samples: int, budget_s: float) -> list[PageResult]:
    results: list[PageResult] = []
    with httpx.Client(base_url=server.url, timeout=120.0) as client:
        client.get("/v2/")  # connect
        listing = max(1, min(25, len(fill.names)))
        pages = [
            ("repositories, first page (by name)", "/ui/", has_rows(listing)),
            ("sorted by last push", "/ui/?sort=pushed", has_rows(listing)),
            ("sorted by size", "/ui/?sort=size", has_rows(listing)),
            ("sorted by pulls", "/ui/?sort=pulls", has_rows(listing)),
            (f"search {SEARCH_WORD!r}", f"/ui/?q={SEARCH_WORD}", has_rows(1)),
            (f"search {LABEL_QUERY!r}", "/ui/?" + str(httpx.QueryParams({"q": LABEL_QUERY})), has_rows(1)),
            (f"search {PLATFORM_QUERY!r}", "/ui/?" + str(httpx.QueryParams({"q": PLATFORM_QUERY})), has_rows(1)),
            (
                f"search {NO_MATCH_QUERY!r} (no match)",
                "/ui/?" + str(httpx.QueryParams({"q": NO_MATCH_QUERY})),
                contains('id="no-repositories"'),
            ),
        ]
        for label, path, check in pages:
            results.append(measure(client, label, path, samples, budget_s, check))
        first = client.get("/ui/").text
        found = NEXT_PAGE.search(first)
        if found is None:
            raise RuntimeError("the first page of /ui/ has no a#next-page")
        next_path = html.unescape(found.group(1))
        results.append(measure(client, "repositories, next page", next_path, samples, budget_s, has_rows(1)))
        results.append(
            measure(
                client,
                "repository with 10 tags",
                f"/ui/r/{fill.ten_tags}",
                samples,
                budget_s,
                contains("1.8.0"),
            )
        )
        results.append(
            measure(
                client,
                "image (5 layers, history)",
                f"/ui/r/{fill.ten_tags}/-/images/{fill.ten_tags_image}",
                samples,
                budget_s,
                contains(fill.ten_tags_image),
            )
        )
        # The storage page reads the index's reference counts (no storage walk, no cache); its first load is
        # timed apart all the same, to show that no first visit pays more.
        elapsed, response = fetch(client, "/ui/storage")
        if response.status_code != 200:
            raise RuntimeError(f"GET /ui/storage: {response.status_code} {response.text[:300]}")
        first_load = PageResult("storage, first load", "/ui/storage", len(response.content))
        first_load.times_ms.append(elapsed)
        first_load.note = "1 sample"
        log(f"  {first_load.label}: {first_load.size:,} B, {elapsed:.1f} ms")
        results.append(first_load)
        results.append(measure(client, "storage", "/ui/storage", samples, budget_s, contains('id="largest"')))
    return results


def server_errors(server: Server) -> list[str]:
    """The server log's lines at level error (with their tracebacks)."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:3000] for line in lines if '"level":"error"' in line or line.startswith("Traceback")]


def table(results: list[PageResult]) -> str:
    lines = [
        "| page | path | size KB | p50 ms | p99 ms | samples | target met |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        path = r.path if len(r.path) <= 60 else r.path[:57] + "..."
        lines.append(
            f"| {r.label} | `{path}` | {r.size / 1000:.1f} | {r.p50:.1f} | {r.p99:.1f} | {len(r.times_ms)} "
            f"| {r.verdict()} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100, help="timed requests per page (default 100)")
    parser.add_argument("--page-budget", type=float, default=12.0, help="stop a page's samples after S s (min 10)")
    parser.add_argument("--pulls", type=int, default=None, help="manifest GETs before measuring (default 3 per 10)")
    parser.add_argument("--workers", type=int, default=None, help="moorage serve --workers (default: its own, 1)")
    parser.add_argument("--moorage-bin", default=str(Path(sys.executable).parent / "moorage"))
    parser.add_argument("--work-dir", type=Path, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (storage, server log)")
    parser.add_argument("--hold", action="store_true", help="keep the server up after measuring (for profiling)")
    parser.add_argument("--output", type=Path, help="also write the markdown table (and the JSON beside it) here")
    args = parser.parse_args(argv)
    if args.repositories < 30:
        parser.error("--repositories must be at least 30 (two pages of 25)")

    began = time.perf_counter()
    load_before = os.getloadavg()
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="moorage-ui-bench-", dir=args.work_dir))
    try:
        root = work / "root"
        log(f"writing {args.repositories:,} repositories into {root}")
        fill = generate(root, args.repositories)
        log(
            f"  {fill.tags:,} tags, {fill.manifests:,} manifests, {fill.files:,} files in {fill.seconds:.1f} s "
            f"(10-tag repository: {fill.ten_tags})"
        )
        log("starting moorage serve (it builds its index from storage)")
        started = time.perf_counter()
        server = start_moorage(args.moorage_bin, root, work, args.workers)
        try:
            wait_moorage_ready(server, READY_TIMEOUT_S)
            ready_s = time.perf_counter() - started
            indexed = re.search(r"index: (\d+) repositories indexed in ([\d.]+)s", server.log_tail(1_000_000))
            log(f"  /readyz 200 after {ready_s:.1f} s" + (f" (log: {indexed.group(0)})" if indexed else ""))
            with httpx.Client(base_url=server.url, timeout=120.0) as client:
                listed = catalog_count(client)
            if listed != args.repositories:
                raise RuntimeError(f"the catalog lists {listed} repositories, not {args.repositories}")
            log(f"  catalog lists {listed:,} repositories")
            rng = random.Random(11)
            pulls = args.pulls if args.pulls is not None else args.repositories * 3 // 10
            pull_s = asyncio.run(seed_pulls(server.url, fill.names, pulls, rng))
            log(f"  {pulls:,} pulls in {pull_s:.1f} s")
            time.sleep(2.5)  # pull counts reach the index once a second
            log("measuring pages")
            before = CpuSnapshot.take()
            t0 = time.perf_counter()
            results = run_pages(server, fill, args.samples, args.page_budget)
            wall = time.perf_counter() - t0
            after = CpuSnapshot.take()
            server_cpu = session_cpu(after, server.proc.pid) - session_cpu(before, server.proc.pid)
            others = after.since(before, server_cpu, server.proc.pid)
            errors = server_errors(server)
            if errors:
                log(f"the server logged {len(errors)} errors; the first ones:\n" + "\n".join(errors[:5]))
            if args.hold:
                log(f"holding {server.url} (pid {server.proc.pid}); Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        except BaseException:
            log(f"failed; the end of the server's log ({server.log_path}):\n{server.log_tail(6000)}")
            raise
        finally:
            server.stop()
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            t0 = time.perf_counter()
            # `rm -rf`: several times faster than shutil.rmtree on a quarter of a million small files.
            subprocess.run(["rm", "-rf", "--", str(work)], check=False)
            log(f"removed the scratch directory in {time.perf_counter() - t0:.1f} s")

    load_after = os.getloadavg()
    background = others["background_cpu_s"] / wall if wall else 0.0
    header = (
        f"{args.repositories:,} repositories ({fill.tags:,} tags, {fill.manifests:,} manifests); storage written "
        f"directly in {fill.seconds:.1f} s ({fill.files:,} files); `moorage serve` (workers: "
        f"{args.workers or 'default'}) ready (index built) {ready_s:.1f} s after start; {platform.node()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}; measuring took {wall:.0f} s, server CPU "
        f"{server_cpu:.1f} s, other processes {background:.2f} cores on average "
        f"({'; '.join(others['top_others']) or 'none'}); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; error lines in the server's log: {len(errors)}."
    )
    text = header + "\n\n" + table(results) + "\n"
    print("\n" + text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        summary = {
            "repositories": args.repositories,
            "tags": fill.tags,
            "manifests": fill.manifests,
            "files": fill.files,
            "fill_s": round(fill.seconds, 1),
            "ready_s": round(ready_s, 1),
            "measure_s": round(wall, 1),
            "server_cpu_s": round(server_cpu, 1),
            "others": others,
            "load_before": load_before,
            "load_after": load_after,
            "pages": [r.as_dict() for r in results],
            "server_errors": errors[:20],
            "total_s": round(time.perf_counter() - began, 1),
        }
        args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
