"""Write cost against repository size (issue 13): Moorage and Distribution side by side, on filesystem storage and
on S3 (moto).

For each storage and each N, the repository first holds N tags (each on its own manifest, as a CI pipeline that
tags every commit leaves it), then, timed one request at a time:
  - manifest PUT of a new manifest under a new tag,
  - tag DELETE (DELETE /v2/<name>/manifests/<tag>) of a tag just pushed,
  - manifest DELETE by digest of a manifest just pushed (with one tag).
Reports the median (p50) per operation and N, the Moorage/Distribution ratios and each server's growth from the
smallest N to the largest. On S3 it also counts the S3 requests each operation made (from moto's request log).
Distribution 2.8 answers a tag DELETE with 400 (it deletes manifests by digest only): that time is shown marked, and
the harness removes the tag from its storage itself. See bench/README.md. Never part of the test suite.

`--s3-latency MS [MS ...]` repeats the S3 run with both registries reaching moto through `latency_proxy.py`, which
adds MS ms to every round trip (MS/2 each way; connections independent, in parallel). On moto the time is dominated
by the number of S3 requests (moto handles them one at a time); on real S3, by the number of round trips made one
after another. With two or more values it also prints, for each against the one before it, what the added latency
added to each p50 and that / the difference: the round trips on the request's critical path.

    .venv/bin/python bench/tag_scaling.py --storage filesystem     # N = 1, 1000, 10000 on the filesystem (~3 min)
    .venv/bin/python bench/tag_scaling.py --sizes 1 1000           # both storages up to 1,000 tags (~5 min)
    .venv/bin/python bench/tag_scaling.py                          # both storages up to 10,000 (over 30 min on moto)
    .venv/bin/python bench/tag_scaling.py --sizes 1 50 --samples 5 --storage s3   # smoke test
    .venv/bin/python bench/tag_scaling.py --storage s3 --sizes 1 1000 --s3-latency 0 10   # moto, then moto + 10 ms RTT
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_proxy import LatencyProxy
from servers import (
    CLOCK_TICKS,
    CpuSnapshot,
    Moto,
    Server,
    export_source,
    free_port,
    git_state,
    start_distribution,
    start_moorage,
    wait_for_idle,
    wait_moorage_ready,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORY = "bench/tags"
STORAGES = ("filesystem", "s3")
SERVERS = ("distribution", "moorage")
OPERATIONS = ("manifest PUT", "tag DELETE", "manifest DELETE by digest")
FILL_CONCURRENCY = {"filesystem": 8, "s3": 16}
MIN_SAMPLES = 3
PROGRESS_EVERY_S = 10.0
REQUEST_TIMEOUT_S = 300.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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


async def put(client: httpx.AsyncClient, reference: str, body: bytes) -> int:
    response = await client.put(
        f"/v2/{REPOSITORY}/manifests/{reference}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    if response.status_code != 201:
        raise RuntimeError(f"PUT {reference}: {response.status_code} {response.text[:200]}")
    return response.status_code


async def delete(client: httpx.AsyncClient, reference: str, accept: tuple[int, ...] = (202,)) -> int:
    response = await client.delete(f"/v2/{REPOSITORY}/manifests/{reference}")
    if response.status_code not in accept:
        raise RuntimeError(f"DELETE {reference}: {response.status_code} {response.text[:200]}")
    return response.status_code


# Distribution 2.8 deletes manifests by digest only: DELETE /v2/<name>/manifests/<tag> answers 400 DIGEST_INVALID
# (tag deletion came in 3.0). Its "tag DELETE" time is that error's; the harness then removes the tag from its storage
# itself (untimed), so that the repository keeps N tags.
DISTRIBUTION_TAGS = "docker/registry/v2/repositories/" + REPOSITORY + "/_manifests/tags"


def remove_distribution_tag(server: Server, moto: Moto | None, tag: str) -> None:
    if server.storage == "s3" and moto is not None and server.bucket is not None:
        if not moto.delete_prefix(server.bucket, f"{DISTRIBUTION_TAGS}/{tag}/"):
            raise RuntimeError(f"distribution tag {tag} not found in bucket {server.bucket}")
    else:
        shutil.rmtree(server.root / DISTRIBUTION_TAGS / tag)


@dataclass
class OpSamples:
    """One operation at one N: every timing (ms) and, on S3, every request's S3 request count by kind."""

    times_ms: list[float] = field(default_factory=list)
    s3_requests: list[dict[str, int]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def spent_s(self) -> float:
        return sum(self.times_ms) / 1000

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "p50_ms": round(statistics.median(self.times_ms), 2),
            "min_ms": round(min(self.times_ms), 2),
            "max_ms": round(max(self.times_ms), 2),
            "samples": len(self.times_ms),
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "times_ms": [round(t, 2) for t in self.times_ms],
        }
        if self.s3_requests:
            totals = [sum(kinds.values()) for kinds in self.s3_requests]
            kinds = sorted({k for sample in self.s3_requests for k in sample})
            out["s3_requests_p50"] = statistics.median(totals)
            out["s3_requests_by_kind_p50"] = {
                k: statistics.median(sample.get(k, 0) for sample in self.s3_requests) for k in kinds
            }
            out["s3_requests"] = self.s3_requests
        return out


class Measurer:
    """Times requests one at a time against one server; on S3, counts the S3 requests each one made."""

    def __init__(self, server: Server, moto: Moto | None) -> None:
        self.server = server
        self.moto = moto if server.storage == "s3" else None

    async def timed(self, samples: OpSamples, action: Awaitable[int]) -> int:
        start_offset = self.moto.log_offset() if self.moto else 0
        started = time.perf_counter()
        status = await action
        samples.times_ms.append((time.perf_counter() - started) * 1000)
        samples.statuses[status] += 1
        if self.moto is not None and self.server.bucket is not None:
            kinds: Counter[str] = self.moto.requests(self.server.bucket, start_offset)
            kinds.pop("HEAD bucket", None)  # Moorage's availability probe, every 5 s: not the request's doing
            samples.s3_requests.append(dict(kinds))
        return status


async def fill(client: httpx.AsyncClient, start: int, stop: int, concurrency: int, label: str) -> float:
    """Tags t<start> .. t<stop - 1>, each on its own manifest, `concurrency` PUTs in flight; progress every 10 s."""
    if stop <= start:
        return 0.0
    began = time.monotonic()
    done = 0
    last_report = began
    queue = iter(range(start, stop))

    async def worker() -> None:
        nonlocal done, last_report
        for i in queue:
            await put(client, f"t{i}", manifest(f"fill-{i}"))
            done += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                rate = done / (now - began)
                left = (stop - start - done) / rate if rate else float("inf")
                log(f"  {label}: filled {start + done:,}/{stop:,} tags ({rate:.0f}/s, ~{left:.0f} s left)")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    log(f"  {label}: {stop - start:,} tags in {elapsed:.1f} s ({(stop - start) / elapsed:.0f}/s)")
    return elapsed


async def measure(
    server: Server,
    moto: Moto | None,
    sizes: list[int],
    samples: int,
    op_budget_s: float,
    fill_concurrency: int,
    result: dict[str, Any],
    proxy: LatencyProxy | None = None,
) -> None:
    """Every N for one server; results go into `result` as they come (an interrupted run keeps what it did)."""
    label = f"{server.storage}/{server.kind}" + (f" +{proxy.rtt_ms:g} ms RTT" if proxy else "")
    measurer = Measurer(server, moto)
    limits = httpx.Limits(max_connections=fill_concurrency, max_keepalive_connections=fill_concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
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
            entry: dict[str, Any] = {}
            result[str(n)] = entry
            entry["fill_s"] = round(await fill(client, have, n, fill_concurrency, f"{label} N={n:,}"), 1)
            have = n
            ops = {op: OpSamples() for op in OPERATIONS}
            began = time.monotonic()
            for k in range(samples):
                tag = f"probe-{n}-{k}"
                await measurer.timed(ops["manifest PUT"], put(client, tag, manifest(tag)))
                accept = (202, 400) if server.kind == "distribution" else (202,)
                if await measurer.timed(ops["tag DELETE"], delete(client, tag, accept)) == 400:
                    remove_distribution_tag(server, moto, tag)
                by_digest = ops["manifest DELETE by digest"]
                if len(by_digest.times_ms) < MIN_SAMPLES or by_digest.spent_s < op_budget_s:
                    body = manifest(f"doomed-{n}-{k}")
                    await put(client, f"doomed-{n}-{k}", body)
                    await measurer.timed(by_digest, delete(client, digest(body)))
            for op, values in ops.items():
                entry[op] = values.summary()
            took = time.monotonic() - began
            log(
                f"  {label} N={n:,} ({took:.0f} s): "
                + ", ".join(f"{op} {entry[op]['p50_ms']:.1f} ms (x{entry[op]['samples']})" for op in OPERATIONS)
            )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _failed(entry: dict[str, Any]) -> bool:
    """Whether the server answered this operation with an error (Distribution 2.8's DELETE by tag: 400)."""
    return any(int(code) >= 400 for code in entry.get("statuses", {}))


ERROR_NOTE = (
    "(400) Distribution 2.8 cannot delete a tag: it answers DELETE /v2/<name>/manifests/<tag> with 400 DIGEST_INVALID "
    "(manifests are deleted by digest only), so its figure is the time of that error and there is no ratio."
)


def table(storage: str, results: dict[str, dict[str, Any]], sizes: list[int]) -> str:
    moorage, distribution = results.get("moorage", {}), results.get("distribution", {})
    s3 = storage == "s3"
    header = "| operation | N tags | Moorage p50 (ms) | Distribution p50 (ms) | Moorage / Distribution |"
    rule = "|---|---:|---:|---:|---:|"
    if s3:
        header += " S3 requests: Moorage | S3 requests: Distribution |"
        rule += "---:|---:|"
    lines = [header, rule]
    # The sizes both servers finished (an interrupted run leaves an entry without its operations).
    done = [n for n in sizes if all(OPERATIONS[-1] in r.get(str(n), {}) for r in (moorage, distribution))]
    notes = set()
    for op in OPERATIONS:
        for n in done:
            m, d = moorage[str(n)][op], distribution[str(n)][op]
            samples = "" if m["samples"] == d["samples"] else f" ({m['samples']} / {d['samples']} samples)"
            m_cell, d_cell = f"{m['p50_ms']:.1f}", f"{d['p50_ms']:.1f}"
            ratio = _ratio(m["p50_ms"], d["p50_ms"])
            if _failed(d) or _failed(m):
                notes.add(ERROR_NOTE)
                ratio = "-"
                m_cell += " (error)" if _failed(m) else ""
                d_cell += f" ({'/'.join(c for c in d['statuses'] if int(c) >= 400)})" if _failed(d) else ""
            line = f"| {op}{samples} | {n:,} | {m_cell} | {d_cell} | {ratio} |"
            if s3:
                line += f" {m['s3_requests_p50']:g} | {d['s3_requests_p50']:g} |"
            lines.append(line)
    if len(done) > 1:
        first, last = done[0], done[-1]
        for op in OPERATIONS:
            mg = moorage[str(last)][op]["p50_ms"] / moorage[str(first)][op]["p50_ms"]
            dg = distribution[str(last)][op]["p50_ms"] / distribution[str(first)][op]["p50_ms"]
            line = f"| {op}: p50 at N={last:,} / p50 at N={first:,} | | {mg:.2f}x | {dg:.2f}x | |"
            if s3:
                line += " | |"
            lines.append(line)
    return "\n".join([*lines, "", *sorted(notes)] if notes else lines)


def s3_kinds_table(results: dict[str, dict[str, Any]], sizes: list[int]) -> str:
    """The S3 requests per operation by kind (medians), both servers: where the count grows with N."""
    lines = [
        "| operation | N tags | Moorage S3 requests by kind | Distribution S3 requests by kind |",
        "|---|---:|---|---|",
    ]
    for op in OPERATIONS:
        for n in sizes:
            cells = []
            for kind in ("moorage", "distribution"):
                entry = results.get(kind, {}).get(str(n), {}).get(op)
                by_kind = entry.get("s3_requests_by_kind_p50", {}) if entry else {}
                cells.append(", ".join(f"{k} {v:g}" for k, v in by_kind.items() if v) or "-")
            lines.append(f"| {op} | {n:,} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def run_key(storage: str, latency_ms: float) -> str:
    """The key of one run in the JSON's results: "filesystem", "s3" (moto directly), "s3+10ms" (behind the proxy)."""
    return f"{storage}+{latency_ms:g}ms" if latency_ms else storage


def run_title(storage: str, latency_ms: float) -> str:
    if storage == "filesystem":
        return "filesystem"
    if not latency_ms:
        return "S3 (moto)"
    return f"S3 (moto behind the latency proxy: +{latency_ms:g} ms per round trip)"


def latency_table(lower: dict[str, Any], higher: dict[str, Any], sizes: list[int], step_ms: float) -> str:
    """What `step_ms` more latency added to each p50 (`higher` - `lower`) and that / `step_ms`: the round trips to S3
    on the request's critical path, next to the S3 requests it made (in `higher`)."""
    rounds = f"added / {step_ms:g} ms"
    lines = [
        f"| operation | N tags | Moorage: added (ms) | Moorage: {rounds} | Moorage: S3 requests "
        f"| Distribution: added (ms) | Distribution: {rounds} | Distribution: S3 requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op in OPERATIONS:
        for n in sizes:
            cells = []
            for kind in ("moorage", "distribution"):
                before = lower.get(kind, {}).get(str(n), {}).get(op)
                after = higher.get(kind, {}).get(str(n), {}).get(op)
                if not before or not after:
                    cells += ["-", "-", "-"]
                    continue
                added = after["p50_ms"] - before["p50_ms"]
                mark = f" ({'/'.join(c for c in after['statuses'] if int(c) >= 400)})" if _failed(after) else ""
                cells += [f"{added:.1f}{mark}", f"{added / step_ms:.1f}", f"{after.get('s3_requests_p50', 0):g}"]
            lines.append(f"| {op} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def others_load(before: CpuSnapshot, after: CpuSnapshot, sessions: set[int], wall: float) -> dict[str, Any]:
    """The cores other processes used on average (not this harness, not the servers nor moto) and the top three."""
    me = os.getpid()
    used: list[tuple[float, str]] = []
    for key, info in after.procs.items():
        if info.pid == me or info.ppid == me or info.session in sessions:
            continue
        earlier = before.procs.get(key)
        seconds = (info.cpu_ticks - (earlier.cpu_ticks if earlier else 0)) / CLOCK_TICKS
        if seconds > 0:
            used.append((seconds, f"pid {info.pid} {info.comm}"))
    used.sort(reverse=True)
    total = sum(seconds for seconds, _ in used)
    return {
        "cores": round(total / wall, 2) if wall > 0 else 0.0,
        "top": [f"{seconds:.1f}s {name}" for seconds, name in used[:3]],
    }


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--samples", type=int, default=30, help="timed requests per operation and N (default 30)")
    parser.add_argument(
        "--op-budget",
        type=float,
        default=60.0,
        help="stop timing manifest DELETE by digest at one N once it has taken this many seconds and has at least "
        f"{MIN_SAMPLES} samples (default 60; it reads every tag, which takes long on S3 at 10,000 tags)",
    )
    parser.add_argument(
        "--s3-latency",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="MS",
        help="on S3, run once per value: 0 = moto directly; MS > 0 = both registries reach moto through "
        "latency_proxy.py, which adds MS ms to every round trip (MS/2 each way; default 0; e.g. --s3-latency 0 10)",
    )
    parser.add_argument("--fill-concurrency", type=int, help="manifest PUTs in flight while filling (8 fs, 16 s3)")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=30.0,
        help="before each server's turn, wait up to this many seconds for other processes to use < 0.15 cores",
    )
    parser.add_argument("--moorage-bin", default=str(Path(sys.executable).parent / "moorage"))
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument("--moorage-workers", type=int, default=None)
    parser.add_argument(
        "--moorage-commit",
        default="HEAD",
        help="run Moorage's code as of this commit (git archive into the work directory; default HEAD: others edit "
        "the checkout while benchmarks run), or 'worktree' for the checkout as it is",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tag_scaling.json")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    storages = [s for s in STORAGES if s in args.storage]
    latencies = sorted(set(args.s3_latency))
    if any(ms < 0 for ms in latencies):
        parser.error("--s3-latency: milliseconds must be >= 0")
    # (storage, added RTT in ms): the filesystem once, S3 once per latency.
    runs = [(storage, ms) for storage in storages for ms in (latencies if storage == "s3" else [0.0])]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="moorage-tag-scaling-"))
    output: dict[str, Any] = {
        "config": {
            "storages": storages,
            "s3_latency_ms": latencies if "s3" in storages else [],
            "sizes": sizes,
            "samples": args.samples,
            "op_budget_s": args.op_budget,
            "min_samples": MIN_SAMPLES,
            "fill_concurrency": args.fill_concurrency or FILL_CONCURRENCY,
            "moorage_workers": args.moorage_workers or "default",
        },
        "git": git_state(None if args.moorage_commit == "worktree" else args.moorage_commit),
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": {},
        "errors": [],
    }
    status = 0
    moto: Moto | None = None
    proxy: LatencyProxy | None = None
    moorage_env: dict[str, str] = {}
    try:
        if args.moorage_commit != "worktree":
            commit, moorage_env = export_source(args.moorage_commit, work / "moorage-src")
            log(f"Moorage from commit {commit[:12]} ({args.moorage_commit})")
        if "s3" in storages:
            moto = Moto(work).start()
            log(f"moto_server on {moto.endpoint_url}")
        for storage, latency_ms in runs:
            key = run_key(storage, latency_ms)
            output["results"][key] = {}
            if latency_ms and moto is not None:
                proxy = LatencyProxy(work, moto.port, latency_ms, free_port())  # assigned first: stopped in `finally`
                proxy.start()
                log(f"latency proxy on {proxy.endpoint_url} -> moto, +{latency_ms:g} ms per round trip")
            for kind in SERVERS:
                result: dict[str, Any] = {}
                output["results"][key][kind] = result
                root = work / key / kind
                root.mkdir(parents=True)
                result["idle_wait"] = wait_for_idle(args.idle_wait, 0.15)
                bucket = moto.new_bucket(f"tag-scaling-{kind}-{os.getpid()}") if storage == "s3" and moto else None
                # The registry reaches moto through the proxy; the harness's own calls (bucket setup and removal,
                # Distribution's tag removal) go to moto directly.
                served = dataclasses.replace(bucket, endpoint_url=proxy.endpoint_url) if bucket and proxy else bucket
                if kind == "moorage":
                    server = start_moorage(
                        args.moorage_bin, root, root, args.moorage_workers, s3=served, env=moorage_env
                    )
                    wait_moorage_ready(server)
                else:
                    server = start_distribution(args.distribution_bin, root, root, s3=served)
                cpu_before, turn_start = CpuSnapshot.take(), time.monotonic()
                try:
                    log(f"{key}/{kind} on {server.url}")
                    concurrency = args.fill_concurrency or FILL_CONCURRENCY[storage]
                    asyncio.run(measure(server, moto, sizes, args.samples, args.op_budget, concurrency, result, proxy))
                    sessions = {server.proc.pid} | ({moto.proc.pid} if moto and moto.proc else set())
                    sessions |= {proxy.proc.pid} if proxy and proxy.proc else set()
                    load = others_load(cpu_before, CpuSnapshot.take(), sessions, time.monotonic() - turn_start)
                    result["other_processes"] = load
                    log(f"  other processes used {load['cores']:.2f} cores on average: {', '.join(load['top'])}")
                except Exception as e:
                    status = 1
                    output["errors"].append(f"{key}/{kind}: {type(e).__name__}: {e}")
                    result["log_tail"] = server.log_tail()
                    if proxy is not None:
                        result["proxy_log_tail"] = proxy.log_tail()
                    log(f"FAILED {key}/{kind}: {e}")
                finally:
                    result["exit_status"] = server.stop()
                    if bucket is not None and moto is not None:
                        try:
                            deleted = moto.drop_bucket(bucket.bucket)
                            log(f"  bucket {bucket.bucket} dropped ({deleted:,} objects)")
                        except Exception as e:  # keep going: the next server gets its own bucket anyway
                            log(f"  could not drop bucket {bucket.bucket}: {e}")
                    shutil.rmtree(root, ignore_errors=True)
            if proxy is not None:
                proxy.stop()
                proxy = None
    except KeyboardInterrupt:
        status = 130
        output["errors"].append("interrupted")
        log("interrupted")
    except Exception as e:
        status = 1
        output["errors"].append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}")
    finally:
        if proxy is not None:
            proxy.stop()
        if moto is not None:
            if status:
                output["moto_log_tail"] = moto.log_tail()
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    output["duration_s"] = round(time.monotonic() - t0, 1)
    print()
    git = output["git"]
    source = f"commit {git['commit']}" if git["source"] == "commit" else f"the working tree at {git['commit']}"
    modified = f" with local changes to {len(git['modified'])} file(s)" if git["modified"] else ""
    print(f"{time.strftime('%Y-%m-%d')}, Moorage from {source}{modified}, {output['duration_s']:.0f} s")
    for storage, latency_ms in runs:
        results = output["results"].get(run_key(storage, latency_ms), {})
        title = run_title(storage, latency_ms)
        print(f"\n{title}: p50 of up to {args.samples} requests, one at a time\n")
        print(table(storage, results, sizes))
        loads = [
            f"{kind} {results[kind]['other_processes']['cores']:.2f}"
            for kind in SERVERS
            if "other_processes" in results.get(kind, {})
        ]
        if loads:
            print(f"\nOther processes on the machine (average cores during each server's turn): {', '.join(loads)}")
        if storage == "s3":
            print("\nS3 requests per operation by kind (medians; moto's request log, the bucket HEAD probe left out)\n")
            print(s3_kinds_table(results, sizes))
    # Each latency against the one before it: from 0 (direct) the step includes the proxy's own cost (0.2-0.5 ms per
    # S3 request, so a little more for the server that makes more requests); between two latencies it cancels out.
    measured = [ms for ms in latencies if "s3" in storages and output["results"].get(run_key("s3", ms))]
    for low, high in itertools.pairwise(measured):
        step = high - low
        how = "both behind the proxy"
        if not low:
            how = "behind the proxy minus direct: includes the proxy's own 0.2-0.5 ms per S3 request"
        print(
            f"\nWhat going from +{low:g} to +{high:g} ms per round trip added to each p50 (S3, {how}), and that / "
            f"{step:g} ms: the round trips to S3 made one after another, next to the S3 requests made\n"
        )
        print(latency_table(output["results"][run_key("s3", low)], output["results"][run_key("s3", high)], sizes, step))
    for error in output["errors"]:
        print(f"error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    log(f"results in {args.out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
