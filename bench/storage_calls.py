"""Storage calls per API request (issue 13): Moorage vs Distribution, on filesystem storage and on S3 (moto).

For each storage, each server in turn gets a repository with a few tags, then every request below is sent one at a
time, and the server's own storage-call counters are read before and after it:
  - Moorage: `/metrics` on its port, `moorage_storage_operation_duration_seconds_count{backend, operation}` (one
    observation per call of its storage backend; the `check` operation, its availability probe, is left out);
  - Distribution 2.8: its debug listener's `/metrics`, `registry_storage_action_seconds_count{driver, action}`
    (GetContent, PutContent, Stat, List, Move, Delete, URLFor: 2.8 does not count Reader, Writer or Walk).
On S3, the S3 requests each API request made are also counted from moto's request log (per bucket).
Each request is measured `--repeats` times after one warm-up round; the tables show medians. Never part of the
test suite.

    .venv/bin/python bench/storage_calls.py                        # both storages (~1-2 min)
    .venv/bin/python bench/storage_calls.py --storage filesystem --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import (
    Moto,
    S3Bucket,
    Server,
    export_source,
    git_state,
    start_distribution,
    start_moorage,
    wait_moorage_ready,
)

STORAGES = ("filesystem", "s3")
SERVERS = ("moorage", "distribution")
REPOSITORY = "bench/calls"
TAGS = 5
LAYER_SIZE = 256 * 1024
UPLOAD_SIZE = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
MOORAGE_METRIC = "moorage_storage_operation_duration_seconds"
DISTRIBUTION_METRIC = "registry_storage_action_seconds"
# Not caused by the request: Moorage's storage probe (every 5 s, and at most once a second on /metrics).
MOORAGE_IGNORED_OPS = frozenset({"check"})
NO_POLL_S = 86400  # MOORAGE_INDEX__POLL_INTERVAL during the per-request rounds: no change-record polling
STARTUP_SETTLE_S = 3.0
# Moorage re-reads the rows a change record names once the record is `index.settle` (30 s) old: the idle window
# starts after that, so that it shows the steady background work only (the re-reads are the writes' own cost).
IDLE_AFTER_WRITES_S = 35.0
REQUESTS = (
    "idle (no request)",
    "GET manifest (by tag)",
    "HEAD manifest (by tag)",
    "PUT manifest (by tag)",
    "HEAD blob",
    "GET blob",
    "upload: POST",
    "upload: PATCH",
    "upload: PUT ?digest=",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = hashlib.sha256(b"layer seed").digest() * (LAYER_SIZE // 32)


def manifest(serial: str) -> bytes:
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


class BenchError(RuntimeError):
    pass


def _expect(response: httpx.Response, what: str, *codes: int) -> httpx.Response:
    if response.status_code not in codes:
        raise BenchError(f"{what}: {response.status_code} {response.text[:300]}")
    return response


# -- counters -----------------------------------------------------------------------------------------------------


def read_counts(client: httpx.Client, url: str, family: str, label: str, ignore: frozenset[str]) -> Counter[str]:
    """The `_count` samples of histogram `family` at `url` (Prometheus text), by the value of `label`."""
    response = _expect(client.get(url), f"GET {url}", 200)
    counts: Counter[str] = Counter()
    for metric in text_string_to_metric_families(response.text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name == f"{family}_count" and sample.labels.get(label) not in ignore:
                counts[sample.labels[label]] += int(sample.value)
    return counts


@dataclass
class Probe:
    """Reads one server's storage counters and, on S3, where moto's log ends. Moorage's availability probe (its
    `check` operation, a HeadBucket on S3) is left out unless `include_probes`."""

    server: Server
    moto: Moto | None
    include_probes: bool = False

    def snapshot(self, client: httpx.Client) -> tuple[Counter[str], int]:
        if self.server.kind == "moorage":
            ignore = frozenset() if self.include_probes else MOORAGE_IGNORED_OPS
            calls = read_counts(client, f"{self.server.url}/metrics", MOORAGE_METRIC, "operation", ignore)
        else:
            url = f"http://127.0.0.1:{self.server.debug_port}/metrics"
            calls = read_counts(client, url, DISTRIBUTION_METRIC, "action", frozenset())
        return calls, self.moto.log_offset() if self.moto else 0

    def difference(
        self, client: httpx.Client, before: tuple[Counter[str], int]
    ) -> tuple[dict[str, int], dict[str, int] | None]:
        calls, offset = self.snapshot(client)
        delta = {op: calls[op] - before[0][op] for op in calls if calls[op] != before[0][op]}
        s3: dict[str, int] | None = None
        if self.moto is not None and self.server.bucket is not None:
            kinds = self.moto.requests(self.server.bucket, before[1], offset)
            if not self.include_probes:
                kinds.pop("HEAD bucket", None)  # Moorage's availability probe
            s3 = dict(kinds)
        return delta, s3


# -- the requests -------------------------------------------------------------------------------------------------


class Session:
    """The requests against one server; `round(k)` sends each once and returns what it cost."""

    def __init__(self, server: Server, moto: Moto | None, settle: float) -> None:
        self.server = server
        self.probe = Probe(server, moto)
        self.settle = settle
        self.client = httpx.Client(base_url=server.url, timeout=60.0, follow_redirects=False)
        self.metrics_client = httpx.Client(timeout=30.0)
        self.location = ""

    def close(self) -> None:
        self.client.close()
        self.metrics_client.close()

    def upload_blob(self, data: bytes) -> None:
        started = _expect(self.client.post(f"/v2/{REPOSITORY}/blobs/uploads/"), "POST upload", 202)
        location = started.headers["location"]
        separator = "&" if "?" in location else "?"
        put = self.client.put(f"{location}{separator}digest={digest(data)}", content=data)
        _expect(put, "PUT blob", 201)

    def put_manifest(self, tag: str, serial: str) -> httpx.Response:
        url = f"/v2/{REPOSITORY}/manifests/{tag}"
        return self.client.put(url, content=manifest(serial), headers={"Content-Type": OCI_MANIFEST})

    def setup(self) -> None:
        for blob in (CONFIG, LAYER):
            self.upload_blob(blob)
        for i in range(TAGS):
            _expect(self.put_manifest(f"t{i}", f"setup-{i}"), f"PUT manifest t{i}", 201)

    def measured(self, send: Callable[[], httpx.Response | None]) -> dict[str, Any]:
        before = self.probe.snapshot(self.metrics_client)
        response = send()
        time.sleep(self.settle)  # anything the server does right after answering (background work) is counted too
        calls, s3 = self.probe.difference(self.metrics_client, before)
        out: dict[str, Any] = {"status": response.status_code if response is not None else None, "calls": calls}
        if s3 is not None:
            out["s3"] = s3
        return out

    def round(self, k: int) -> dict[str, dict[str, Any]]:
        c = self.client
        manifest_url = f"/v2/{REPOSITORY}/manifests/t0"
        blob_url = f"/v2/{REPOSITORY}/blobs/{digest(LAYER)}"
        upload = os.urandom(UPLOAD_SIZE)  # new bytes every time: never a dedup hit
        out: dict[str, dict[str, Any]] = {}

        def patch() -> httpx.Response:
            response = c.patch(
                self.location,
                content=upload,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(upload) - 1}"},
            )
            _expect(response, "PATCH upload", 202)
            self.location = urljoin(self.server.url + "/", response.headers["location"])
            return response

        def post() -> httpx.Response:
            response = _expect(c.post(f"/v2/{REPOSITORY}/blobs/uploads/"), "POST upload", 202)
            self.location = urljoin(self.server.url + "/", response.headers["location"])
            return response

        def finish() -> httpx.Response:
            separator = "&" if "?" in self.location else "?"
            return _expect(c.put(f"{self.location}{separator}digest={digest(upload)}"), "PUT ?digest=", 201)

        steps: dict[str, Callable[[], httpx.Response | None]] = {
            "idle (no request)": lambda: None,
            "GET manifest (by tag)": lambda: _expect(c.get(manifest_url, headers={"Accept": ACCEPT}), "GET", 200),
            "HEAD manifest (by tag)": lambda: _expect(c.head(manifest_url, headers={"Accept": ACCEPT}), "HEAD", 200),
            "PUT manifest (by tag)": lambda: _expect(self.put_manifest(f"p{k}", f"put-{k}"), "PUT manifest", 201),
            "HEAD blob": lambda: _expect(c.head(blob_url), "HEAD blob", 200, 307),
            "GET blob": lambda: _expect(c.get(blob_url), "GET blob", 200, 307),
            "upload: POST": post,
            "upload: PATCH": patch,
            "upload: PUT ?digest=": finish,
        }
        for name in REQUESTS:
            out[name] = self.measured(steps[name])
        return out


# -- summary ------------------------------------------------------------------------------------------------------


def median_counts(samples: list[dict[str, int]]) -> tuple[float, dict[str, float]]:
    """(median of the totals, median of each key's count) over the samples (a missing key counts 0)."""
    keys = sorted({k for sample in samples for k in sample})
    total = statistics.median(sum(sample.values()) for sample in samples)
    return total, {k: statistics.median(sample.get(k, 0) for sample in samples) for k in keys}


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in REQUESTS:
        entries = [r[name] for r in rounds]
        total, by_op = median_counts([e["calls"] for e in entries])
        statuses = sorted({str(e["status"]) for e in entries if e["status"] is not None})
        summary: dict[str, Any] = {"calls_p50": total, "calls_by_op_p50": by_op, "statuses": statuses}
        if all("s3" in e for e in entries):
            s3_total, s3_kinds = median_counts([e["s3"] for e in entries])
            summary["s3_requests_p50"] = s3_total
            summary["s3_requests_by_kind_p50"] = s3_kinds
        out[name] = summary
    return out


def _by(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items() if v) or "-"


def _status(entry: dict[str, Any]) -> str:
    return "/".join(entry["statuses"]) or "-"


def tables(storage: str, summary: dict[str, dict[str, Any]]) -> str:
    m, d = summary.get("moorage"), summary.get("distribution")
    if m is None or d is None:
        return "(incomplete)"
    lines = [
        "| request | status M / D | Moorage calls | Moorage by op | Distribution calls | Distribution by action |",
        "|---|---|---:|---|---:|---|",
    ]
    for name in REQUESTS:
        me, de = m[name], d[name]
        lines.append(
            f"| {name} | {_status(me)} / {_status(de)} | {me['calls_p50']:g} | {_by(me['calls_by_op_p50'])} "
            f"| {de['calls_p50']:g} | {_by(de['calls_by_op_p50'])} |"
        )
    if storage == "s3":
        lines += [
            "",
            "S3 requests per API request (moto's request log; the bucket HEAD probe left out):",
            "",
            "| request | Moorage S3 requests | Moorage by kind | Distribution S3 requests | Distribution by kind |",
            "|---|---:|---|---:|---|",
        ]
        for name in REQUESTS:
            me, de = m[name], d[name]
            lines.append(
                f"| {name} | {me['s3_requests_p50']:g} | {_by(me['s3_requests_by_kind_p50'])} "
                f"| {de['s3_requests_p50']:g} | {_by(de['s3_requests_by_kind_p50'])} |"
            )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start(
    kind: str,
    root: Path,
    args: argparse.Namespace,
    bucket: S3Bucket | None,
    moorage_env: dict[str, str],
    *,
    background: bool,
) -> Server:
    """The server for the per-request rounds (`background=False`: Moorage's index polling and Distribution's
    storage health check off, so that nothing but the request touches storage), or with both at their defaults."""
    if kind == "moorage":
        env = dict(moorage_env)
        if not background:
            env["MOORAGE_INDEX__POLL_INTERVAL"] = str(NO_POLL_S)
        # One worker: /metrics then comes from the process that served the request, flushed as it answers.
        server = start_moorage(args.moorage_bin, root, root, 1, s3=bucket, env=env)
        try:
            wait_moorage_ready(server)
        except BaseException:
            server.stop()
            raise
        return server
    return start_distribution(args.distribution_bin, root, root, s3=bucket, debug=True, health=background)


def run_server(
    kind: str, storage: str, args: argparse.Namespace, work: Path, moto: Moto | None, moorage_env: dict[str, str]
) -> dict[str, Any]:
    root = work / storage / kind
    root.mkdir(parents=True)
    bucket = moto.new_bucket(f"storage-calls-{kind}-{os.getpid()}") if storage == "s3" and moto else None
    s3_moto = moto if storage == "s3" else None
    result: dict[str, Any] = {"rounds": []}
    server: Server | None = None
    session: Session | None = None
    try:
        server = start(kind, root, args, bucket, moorage_env, background=False)
        log(f"{storage}/{kind} on {server.url}")
        session = Session(server, s3_moto, args.settle)
        session.setup()
        session.round(-1)  # warm-up: caches, connections, first-use paths
        for k in range(args.repeats):
            result["rounds"].append(session.round(k))
        result["summary"] = summarize(result["rounds"])
        last_write = time.monotonic()
        session.close()
        session = None
        result["exit_status"] = server.stop()
        if args.idle > 0:
            # The same data, the server as configured by default: what it does to storage on its own.
            server = start(kind, root, args, bucket, moorage_env, background=True)
            log(f"{storage}/{kind}: idle {args.idle:g} s with default background work")
            wait = STARTUP_SETTLE_S
            if kind == "moorage":
                wait = max(wait, last_write + IDLE_AFTER_WRITES_S - time.monotonic())
            time.sleep(wait)
            probe = Probe(server, s3_moto, include_probes=True)
            with httpx.Client(timeout=30.0) as client:
                before = probe.snapshot(client)
                time.sleep(args.idle)
                calls, s3 = probe.difference(client, before)
            result["idle"] = {"seconds": args.idle, "calls": calls, "s3": s3}
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        if server is not None:
            result["log_tail"] = server.log_tail()
        raise
    finally:
        if session is not None:
            session.close()
        if server is not None:
            server.stop()
        if bucket is not None and moto is not None:
            try:
                moto.drop_bucket(bucket.bucket)
            except Exception as e:
                log(f"  could not drop bucket {bucket.bucket}: {e}")
        shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds after the warm-up (default 5)")
    parser.add_argument(
        "--settle",
        type=float,
        default=1.2,
        help="seconds between a response and reading the counters (default 1.2: longer than Moorage's 1 s blob "
        "existence cache, so that no request is answered from what the one before it looked up)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="then restart each server with its default background work and count its storage calls over this many "
        "idle seconds (default 10; 0: skip)",
    )
    parser.add_argument("--moorage-bin", default=str(Path(sys.executable).parent / "moorage"))
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument(
        "--moorage-commit",
        default="HEAD",
        help="run Moorage's code as of this commit (default HEAD), or 'worktree' for the checkout as it is",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "storage_calls.json")
    args = parser.parse_args(argv)
    storages = [s for s in STORAGES if s in args.storage]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="moorage-storage-calls-"))
    output: dict[str, Any] = {
        "config": {
            "storages": storages,
            "repeats": args.repeats,
            "settle_s": args.settle,
            "tags": TAGS,
            "layer_bytes": LAYER_SIZE,
            "upload_bytes": UPLOAD_SIZE,
            "moorage_workers": 1,
            "moorage_index_poll_interval_s": NO_POLL_S,
            "idle_s": args.idle,
        },
        "git": git_state(None if args.moorage_commit == "worktree" else args.moorage_commit),
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": {},
        "errors": [],
    }
    status = 0
    moto: Moto | None = None
    try:
        moorage_env: dict[str, str] = {}
        if args.moorage_commit != "worktree":
            commit, moorage_env = export_source(args.moorage_commit, work / "moorage-src")
            log(f"Moorage from commit {commit[:12]} ({args.moorage_commit})")
        if "s3" in storages:
            moto = Moto(work).start()
            log(f"moto_server on {moto.endpoint_url}")
        for storage in storages:
            output["results"][storage] = {}
            for kind in SERVERS:
                try:
                    output["results"][storage][kind] = run_server(kind, storage, args, work, moto, moorage_env)
                except (BenchError, httpx.HTTPError, RuntimeError) as e:
                    status = 1
                    output["errors"].append(f"{storage}/{kind}: {type(e).__name__}: {e}")
                    log(f"FAILED {storage}/{kind}: {e}")
    except KeyboardInterrupt:
        status = 130
        output["errors"].append("interrupted")
        log("interrupted")
    except Exception as e:
        status = 1
        output["errors"].append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}")
    finally:
        if moto is not None:
            if status:
                output["moto_log_tail"] = moto.log_tail()
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    output["duration_s"] = round(time.monotonic() - t0, 1)
    git = output["git"]
    source = f"commit {git['commit']}" if git["source"] == "commit" else f"the working tree at {git['commit']}"
    modified = f" with local changes to {len(git['modified'])} file(s)" if git["modified"] else ""
    print(f"\n{time.strftime('%Y-%m-%d')}, Moorage from {source}{modified}, {output['duration_s']:.0f} s")
    for storage in storages:
        summary = {k: v["summary"] for k, v in output["results"].get(storage, {}).items() if "summary" in v}
        title = "filesystem" if storage == "filesystem" else "S3 (moto)"
        print(f"\n{title}: storage calls per API request, median of {args.repeats} (after a warm-up)\n")
        print(tables(storage, summary))
        idle = {k: v["idle"] for k, v in output["results"].get(storage, {}).items() if "idle" in v}
        if idle:
            print(f"\nOn their own, default settings, idle {args.idle:g} s (no request at all):")
            for kind in SERVERS:
                if kind in idle:
                    entry = idle[kind]
                    s3 = f"; S3 requests: {_by(entry['s3'])}" if entry.get("s3") is not None else ""
                    print(f"- {kind}: storage calls: {_by(entry['calls'])}{s3}")
    print(
        "\nDistribution 2.8 counts GetContent, PutContent, Stat, List, Move, Delete and URLFor only: its Reader, "
        "Writer and Walk calls are not in its metric (registry/storage/driver/base/base.go)."
    )
    for error in output["errors"]:
        print(f"error: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    log(f"results in {args.out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
