"""Write cost against repository size (issue 13): Moorage and Distribution side by side, filesystem storage.

For each N, the repository first holds N tags (each on its own manifest, as a CI pipeline that tags every commit
leaves it), then, timed one request at a time:
  - manifest PUT of a new manifest under a new tag,
  - tag DELETE (DELETE /v2/<name>/manifests/<tag>) of a tag just pushed,
  - manifest DELETE by digest of a manifest just pushed (with one tag).
Reports the median (p50) per operation and N, and Moorage/Distribution ratios. Never part of the test suite.

    .venv/bin/python bench/tag_scaling.py                     # N = 1, 1000, 10000 (about 5 minutes)
    .venv/bin/python bench/tag_scaling.py --sizes 1 200 --samples 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server, start_distribution, start_moorage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORY = "bench/tags"
FILL_CONCURRENCY = 8
OPERATIONS = ("manifest PUT", "tag DELETE", "manifest DELETE by digest")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = b"bench layer " * 100


def manifest(serial: str) -> bytes:
    """A distinct image manifest (by its annotation) over the same config and layer."""
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(LAYER), "size": len(LAYER)}
        ],
        "annotations": {"serial": serial},
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def put(client: httpx.AsyncClient, reference: str, body: bytes) -> None:
    response = await client.put(
        f"/v2/{REPOSITORY}/manifests/{reference}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    if response.status_code != 201:
        raise RuntimeError(f"PUT {reference}: {response.status_code} {response.text[:200]}")


async def timed(action: Any) -> float:
    started = time.perf_counter()
    await action
    return (time.perf_counter() - started) * 1000


async def measure(server: Server, sizes: list[int], samples: int) -> dict[int, dict[str, float]]:
    results: dict[int, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as client:
        for blob in (CONFIG, LAYER):
            # POST then a monolithic PUT: Distribution 2.8 answers a single POST with a session, not a blob.
            started = await client.post(f"/v2/{REPOSITORY}/blobs/uploads/")
            location = started.headers["location"]
            separator = "&" if "?" in location else "?"
            response = await client.put(f"{location}{separator}digest={digest(blob)}", content=blob)
            if response.status_code != 201:
                raise RuntimeError(f"blob upload: {response.status_code} {response.text[:200]}")
        have = 0
        for n in sizes:
            limit = asyncio.Semaphore(FILL_CONCURRENCY)

            async def fill(i: int, limit: asyncio.Semaphore = limit) -> None:
                async with limit:
                    await put(client, f"t{i}", manifest(f"fill-{i}"))

            await asyncio.gather(*(fill(i) for i in range(have, n)))
            have = n
            times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
            for k in range(samples):
                tag = f"probe-{n}-{k}"
                times["manifest PUT"].append(await timed(put(client, tag, manifest(tag))))
                times["tag DELETE"].append(await timed(client.delete(f"/v2/{REPOSITORY}/manifests/{tag}")))
                body = manifest(f"doomed-{n}-{k}")
                await put(client, f"doomed-{n}-{k}", body)
                times["manifest DELETE by digest"].append(
                    await timed(client.delete(f"/v2/{REPOSITORY}/manifests/{digest(body)}"))
                )
            results[n] = {op: statistics.median(values) for op, values in times.items()}
            print(f"  {server.kind} N={n}: " + ", ".join(f"{op} {v:.1f} ms" for op, v in results[n].items()))
    return results


def table(moorage: dict[int, dict[str, float]], distribution: dict[int, dict[str, float]], sizes: list[int]) -> str:
    lines = [
        "| operation | N tags | Moorage p50 (ms) | Distribution p50 (ms) | Moorage / Distribution |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in OPERATIONS:
        for n in sizes:
            m, d = moorage[n][op], distribution[n][op]
            lines.append(f"| {op} | {n:,} | {m:.1f} | {d:.1f} | {m / d:.2f}x |")
    for op in OPERATIONS:
        first, last = sizes[0], sizes[-1]
        growth = moorage[last][op] / moorage[first][op]
        lines.append(f"| {op}: Moorage p50 at N={last:,} / at N={first:,} | | | | {growth:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--moorage-bin", default=str(Path(sys.executable).parent / "moorage"))
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument("--moorage-workers", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    work = Path(tempfile.mkdtemp(prefix="moorage-tag-scaling-"))
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        for kind in ("distribution", "moorage"):
            root = work / kind
            if kind == "moorage":
                server = start_moorage(args.moorage_bin, root, work, args.moorage_workers)
            else:
                server = start_distribution(args.distribution_bin, root, work)
            try:
                print(f"{kind}:", flush=True)
                results[kind] = asyncio.run(measure(server, sizes, args.samples))
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results["moorage"], results["distribution"], sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
