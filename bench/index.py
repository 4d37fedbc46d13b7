"""Benchmark of the metadata index (issue 6): catalog pages, a whole paginated catalog walk and search queries on
10,000 repositories x 10 tags, against Moorage and, for the catalog walk, Debian's `docker-registry` on the same data.

    .venv/bin/python bench/index.py                       # 10,000 x 10 (the issue's numbers; a few minutes)
    .venv/bin/python bench/index.py --repositories 1000   # a quicker look

The storage layout is written directly (Distribution's, which both registries read): one small config and one small
layer blob shared by every image, and one manifest per repository (its own annotations: a description and a group
label; every other repository is arm64) under 10 tags. Requests go one at a time over one keep-alive connection
(httpx), so the figures are server latency, not throughput. Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from servers import Server, clean_env, free_port, start_distribution  # noqa: E402

ROOT = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PAGE = 100
READY_TIMEOUT = 600.0
QUERIES = ["app-04321", "app", "team-17", "platform:linux/arm64", "label:bench.group=7", "tag:v9 team-3", "nothing"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    write(root / ROOT / "blobs" / "sha256" / digest[:2] / digest / "data", data)
    return f"sha256:{digest}"


def link(path: Path, digest: str) -> None:
    write(path / digest.replace(":", "/") / "link", digest.encode())


def generate(root: Path, repositories: int, tags: int) -> list[str]:
    """Distribution's layout for `repositories` x `tags`; returns the repository names."""
    layer = b"bench-layer" * 100
    configs = {
        arch: json.dumps({"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z"}).encode()
        for arch in ("amd64", "arm64")
    }
    layer_digest = blob(root, layer)
    config_digests = {arch: blob(root, data) for arch, data in configs.items()}
    names = []
    for i in range(repositories):
        name = f"team-{i % 100:02d}/app-{i:05d}"
        names.append(name)
        arch = "arm64" if i % 2 else "amd64"
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digests[arch], "size": len(configs[arch])},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
                "annotations": {
                    "org.opencontainers.image.description": f"benchmark application number {i}",
                    "bench.group": str(i % 10),
                },
            }
        ).encode()
        digest = blob(root, manifest)
        repo = root / ROOT / "repositories" / name
        for shared in (layer_digest, config_digests[arch]):
            link(repo / "_layers", shared)
        link(repo / "_manifests" / "revisions", digest)
        for t in range(tags):
            tag = repo / "_manifests" / "tags" / f"v{t}"
            write(tag / "current" / "link", digest.encode())
            link(tag / "index", digest)
    return names


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(client: httpx.Client, urls: list[str], check: Callable[[httpx.Response], None]) -> dict[str, float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        check(response)
    ms = [t * 1000 for t in times]
    return {
        "requests": len(ms),
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": statistics.fmean(ms),
    }


def ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:300]}")


def catalog_walk(client: httpx.Client, limit_seconds: float) -> dict[str, Any]:
    """Follow `Link` from the first page of `/v2/_catalog?n=100` to the last; stops after `limit_seconds`."""
    url: str | None = f"/v2/_catalog?n={PAGE}"
    pages, names, page_ms = 0, 0, []
    started = time.perf_counter()
    while url:
        t0 = time.perf_counter()
        response = client.get(url)
        page_ms.append((time.perf_counter() - t0) * 1000)
        ok(response)
        pages += 1
        names += len(response.json()["repositories"])
        link = response.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
        if time.perf_counter() - started > limit_seconds:
            return {"finished": False, "pages": pages, "repositories": names, "seconds": time.perf_counter() - started}
    return {
        "finished": True,
        "pages": pages,
        "repositories": names,
        "seconds": time.perf_counter() - started,
        "page_p50_ms": percentile(page_ms, 0.5),
        "page_p99_ms": percentile(page_ms, 0.99),
    }


def catalog_pages(client: httpx.Client, names: list[str], count: int) -> dict[str, float]:
    ordered = sorted(names)
    rng = random.Random(6)
    starts = [""] + [rng.choice(ordered) for _ in range(count - 1)]
    urls = [f"/v2/_catalog?n={PAGE}" + (f"&last={start}" if start else "") for start in starts]
    return latencies(client, urls, ok)


def start_moorage(root: Path, cwd: Path, workers: int) -> tuple[Server, float]:
    """`moorage serve` on `root` with a fresh index; returns it once `/readyz` says the index is built."""
    port = free_port()
    env = clean_env()
    env.update({"MOORAGE_STORAGE__FILESYSTEM__ROOT": str(root), "MOORAGE_HTTP__ACCESS_LOG": "false"})
    argv = [str(BENCH_DIR.parent / ".venv" / "bin" / "moorage"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(workers)]
    log_path = cwd / f"moorage-{port}.log"
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server("moorage", port, root, log_path, argv, proc)
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - started < READY_TIMEOUT:
            if proc.poll() is not None:
                raise RuntimeError(f"moorage exited: {server.log_tail()}")
            try:
                if client.get(f"{server.url}/readyz").status_code == 200:
                    return server, time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moorage not ready after {READY_TIMEOUT:g}s: {server.log_tail()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--pages", type=int, default=300, help="catalog pages timed at random positions")
    parser.add_argument("--searches", type=int, default=30, help="times each search query is sent")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument("--distribution-limit", type=float, default=900.0, help="give up Distribution's walk after S s")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "index.json")
    args = parser.parse_args()

    result: dict[str, Any] = {"repositories": args.repositories, "tags": args.tags, "page_size": PAGE}
    with tempfile.TemporaryDirectory(prefix="moorage-index-bench-") as scratch:
        work = Path(scratch)
        root = work / "root"
        log(f"writing {args.repositories} repositories x {args.tags} tags")
        t0 = time.perf_counter()
        names = generate(root, args.repositories, args.tags)
        result["generate_seconds"] = time.perf_counter() - t0

        log("moorage: starting (builds its index)")
        server, ready_after = start_moorage(root, work, args.workers)
        result["moorage_ready_seconds"] = ready_after
        try:
            with httpx.Client(base_url=server.url, timeout=60.0) as client:
                client.get("/v2/_catalog?n=1")  # connect
                result["moorage_catalog_page"] = catalog_pages(client, names, args.pages)
                result["moorage_catalog_walk"] = catalog_walk(client, 3600)
                result["moorage_search"] = {
                    q: latencies(client, [f"/api/v1/search?q={q}&n=25"] * args.searches, ok) for q in QUERIES
                }
                result["moorage_docker_search"] = latencies(client, ["/v1/search?q=app-0&n=25"] * args.searches, ok)
        finally:
            server.stop()
        os.remove(root / "moorage" / "index.sqlite")  # Distribution ignores it; keep its walk to its own tree

        log("distribution: starting")
        distribution = start_distribution(args.distribution_bin, root, work)
        try:
            with httpx.Client(base_url=distribution.url, timeout=600.0) as client:
                client.get("/v2/")
                result["distribution_catalog_page"] = catalog_pages(client, names, min(args.pages, 10))
                log("distribution: walking the catalog")
                result["distribution_catalog_walk"] = catalog_walk(client, args.distribution_limit)
        finally:
            distribution.stop()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['repositories']} repositories x {result['tags']} tags, filesystem, pages of {PAGE}")
    print(f"moorage ready (index built at start) after {result['moorage_ready_seconds']:.1f}s")
    mp, dp = result["moorage_catalog_page"], result["distribution_catalog_page"]
    print(f"{'':42} {'moorage':>12} {'distribution':>14}")
    print(f"{'GET /v2/_catalog?n=100 p50 (ms)':42} {mp['p50_ms']:12.2f} {dp['p50_ms']:14.2f}")
    print(f"{'GET /v2/_catalog?n=100 p99 (ms)':42} {mp['p99_ms']:12.2f} {dp['p99_ms']:14.2f}")
    mw, dw = result["moorage_catalog_walk"], result["distribution_catalog_walk"]
    done = "" if dw["finished"] else f" (stopped: {dw['pages']} pages)"
    print(f"{'whole catalog walk (s)':42} {mw['seconds']:12.2f} {dw['seconds']:14.2f}{done}")
    for q, stats in result["moorage_search"].items():
        print(f"{'search ' + repr(q) + ' p50/p99 (ms)':42} {stats['p50_ms']:6.2f}/{stats['p99_ms']:<6.2f}")
    ds = result["moorage_docker_search"]
    print(f"{'/v1/search app-0 p50/p99 (ms)':42} {ds['p50_ms']:6.2f}/{ds['p99_ms']:<6.2f}")


if __name__ == "__main__":
    sys.exit(main())
