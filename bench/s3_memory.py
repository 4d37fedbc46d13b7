"""Peak RSS of `moorage serve` on the S3 backend while large blobs go through it (issue 3). See bench/README.md.

    .venv/bin/python bench/s3_memory.py [--sizes 256M,2G] [--out bench/results/s3_memory.json]

A moto S3 server (not measured: it keeps the objects in memory) and one `moorage serve` on a bucket of it. For each
size: a monolithic upload (POST, one PATCH with the whole file, PUT ?digest=), a chunked upload of other bytes
(64 MiB PATCHes with Content-Range, then PUT) and a download of each blob through moorage (redirects off), every
download checked against the sha256 of its input. Moorage's process-tree RSS is sampled every 100 ms throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import boto3
import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))  # for tests.s3_server (bench/ itself is on the path as the script's directory)

from servers import (  # noqa: E402
    MIB,
    PAGE_SIZE,
    Server,
    TreeSampler,
    _start,
    clean_env,
    free_port,
    session_processes,
)
from workloads import MB  # noqa: E402

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, moto_server_binary  # noqa: E402

GIB = 1024 * MIB
CHUNK_SIZE = 64 * MIB
WRITE_BLOCK = MIB
TARGET_MIB = 200.0
SAMPLE_INTERVAL = 0.1
MOTO_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
SETTLE_S = 2.0
REPO_NAME = "bench/s3-memory"
CURL_WRITE_OUT = "%{http_code} %{time_total} %{size_upload} %{size_download}"
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMG]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": MIB, "G": GIB}


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 2G)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def size_label(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _tail(text: str | bytes | None, limit: int = 1500) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else "..." + text[-limit:]


# -- moto ---------------------------------------------------------------------------------------------------------


class Moto:
    """moto's standalone S3 server in its own session (so that stop() reaches every process it starts).

    Objects larger than moto's key buffer (~5 MiB) spill to anonymous temporary files: TMPDIR points them into the
    work directory."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"moto-{self.port}.log"
        self.tmpdir = workdir / "moto-tmp"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        env = clean_env()
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "TMPDIR": str(self.tmpdir)})
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOTO_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"moto_server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise BenchError(f"moto_server not ready after {MOTO_READY_TIMEOUT:.0f}s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return _tail(self.log_path.read_text(errors="replace"), 2000)
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def empty_bucket(self, name: str) -> int:
        """Delete every object and abort every multipart upload (keeps moto's memory small between sizes)."""
        client = self.client()
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted


def start_moorage_s3(binary: str, cwd: Path, moto: Moto, bucket: str) -> Server:
    """`moorage serve` (its default worker count) on `bucket`, blob GETs streamed through it, access log off."""
    port = free_port()
    env = clean_env()
    env.update(
        {
            "MOORAGE_STORAGE__BACKEND": "s3",
            "MOORAGE_STORAGE__S3__BUCKET": bucket,
            "MOORAGE_STORAGE__S3__ENDPOINT_URL": moto.endpoint_url,
            "MOORAGE_STORAGE__S3__REGION": REGION,
            "MOORAGE_STORAGE__S3__ACCESS_KEY_ID": ACCESS_KEY,
            "MOORAGE_STORAGE__S3__SECRET_ACCESS_KEY": SECRET_KEY,
            "MOORAGE_STORAGE__S3__PATH_STYLE": "true",
            "MOORAGE_STORAGE__REDIRECT__DISABLE": "true",
            "MOORAGE_HTTP__ACCESS_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [binary, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return _start("moorage", argv, env=env, cwd=cwd, port=port, root=cwd)


def tree_rss_mib(sampler: TreeSampler) -> float:
    """The RSS of the server's process tree right now (one sample, outside the peak bookkeeping)."""
    return sum(p.rss_pages for p in session_processes(sampler.session)) * PAGE_SIZE / MIB


# -- inputs -------------------------------------------------------------------------------------------------------


def make_input(path: Path, size: int) -> str:
    """`size` random bytes written to `path` in 1 MiB blocks (never all in memory); their sha256 digest."""
    hasher = hashlib.sha256()
    remaining = size
    with path.open("wb") as f:
        while remaining:
            block = os.urandom(min(WRITE_BLOCK, remaining))
            hasher.update(block)
            f.write(block)
            remaining -= len(block)
    return f"sha256:{hasher.hexdigest()}"


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"


# -- curl ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurlResult:
    status: int
    time_total: float
    size_upload: int
    size_download: int
    headers: dict[str, str]


def _feed(path: Path, offset: int, length: int, fd: int, errors: list[str]) -> None:
    """Write `length` bytes of `path` from `offset` into the pipe `fd` (curl's stdin), then close it."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            remaining = length
            while remaining:
                block = f.read(min(WRITE_BLOCK, remaining))
                if not block:
                    errors.append(f"{path} ended {remaining} bytes early")
                    return
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
                remaining -= len(block)
    except BrokenPipeError:
        errors.append("curl closed its stdin early")
    except OSError as e:
        errors.append(f"feeding curl: {e}")
    finally:
        os.close(fd)


def curl(
    method: str,
    url: str,
    workdir: Path,
    *,
    timeout: float,
    headers: tuple[str, ...] = (),
    upload: Path | None = None,
    upload_range: tuple[int, int] | None = None,
    output: Path | None = None,
) -> CurlResult:
    """One request. `upload`: the whole file as the body (`curl -T`, streamed); with `upload_range` (offset, length)
    only that slice, piped to curl's stdin with an explicit Content-Length (no chunked transfer encoding)."""
    header_file = workdir / "curl-headers.txt"
    argv = ["curl", "-sS", "--http1.1", "-X", method, "-o", str(output or "/dev/null"), "-D", str(header_file)]
    argv += ["-w", CURL_WRITE_OUT, "-H", "Expect:"]
    for header in headers:
        argv += ["-H", header]
    stdin: int = subprocess.DEVNULL
    feed_fd: int | None = None
    if upload is not None and upload_range is None:
        argv += ["-T", str(upload)]
    elif upload is not None and upload_range is not None:
        argv += ["-T", "-", "-H", f"Content-Length: {upload_range[1]}", "-H", "Transfer-Encoding:"]
        stdin, feed_fd = os.pipe()
    elif method in ("POST", "PUT", "PATCH"):
        argv += ["-H", "Content-Length: 0"]
    argv.append(url)
    feeder: threading.Thread | None = None
    feed_errors: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except BaseException:
        if feed_fd is not None:
            os.close(feed_fd)
        raise
    finally:
        if feed_fd is not None:
            os.close(stdin)  # curl has its copy of the read end
    try:
        if feed_fd is not None and upload is not None and upload_range is not None:
            feeder = threading.Thread(
                target=_feed, args=(upload, upload_range[0], upload_range[1], feed_fd, feed_errors), daemon=True
            )
            feeder.start()
            feed_fd = None  # the feeder closes it
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise BenchError(f"curl {method} {url} timed out after {timeout:.0f}s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if feed_fd is not None:
            os.close(feed_fd)
        if feeder is not None:
            feeder.join(timeout=30)
    if proc.returncode != 0:
        raise BenchError(f"curl {method} {url} exited with {proc.returncode}: {_tail(err)}")
    if feed_errors:
        raise BenchError(f"curl {method} {url}: {'; '.join(feed_errors)}")
    fields = out.decode().split()
    parsed: dict[str, str] = {}
    text = header_file.read_text(errors="replace")
    # The last header block (there is one per response; we send no Expect, so there is no 100 Continue).
    for line in text.strip().split("\r\n\r\n")[-1].splitlines():
        name, sep, value = line.partition(":")
        if sep:
            parsed[name.strip().lower()] = value.strip()
    return CurlResult(int(fields[0]), float(fields[1]), int(float(fields[2])), int(float(fields[3])), parsed)


def _expect(res: CurlResult, what: str, status: int, **headers: str) -> None:
    if res.status != status:
        raise BenchError(f"{what} answered {res.status} (expected {status}); headers {res.headers}")
    for name, value in headers.items():
        got = res.headers.get(name.replace("_", "-"))
        if got != value:
            raise BenchError(f"{what}: header {name.replace('_', '-')} is {got!r}, expected {value!r}")


# -- the measured operations --------------------------------------------------------------------------------------


def transfer_timeout(size: int) -> float:
    """Generous but bounded: 2 minutes plus 5 MB/s."""
    return 120.0 + size / (5 * MB)


def start_upload(base: str, workdir: Path) -> tuple[str, float]:
    post = curl("POST", f"{base}/v2/{REPO_NAME}/blobs/uploads/", workdir, timeout=60)
    _expect(post, "POST upload", 202)
    if "location" not in post.headers:
        raise BenchError(f"POST upload answered no Location: {post.headers}")
    return urljoin(base + "/", post.headers["location"]), post.time_total


def finish_upload(base: str, location: str, digest: str, size: int, workdir: Path) -> float:
    sep = "&" if "?" in location else "?"
    put = curl("PUT", f"{location}{sep}digest={digest}", workdir, timeout=transfer_timeout(size))
    _expect(put, "PUT ?digest=", 201, docker_content_digest=digest)
    return put.time_total


def monolithic_upload(base: str, path: Path, size: int, digest: str, workdir: Path) -> dict[str, Any]:
    location, post_s = start_upload(base, workdir)
    patch = curl(
        "PATCH",
        location,
        workdir,
        timeout=transfer_timeout(size),
        headers=("Content-Type: application/octet-stream",),
        upload=path,
    )
    _expect(patch, "PATCH (whole file)", 202, range=f"0-{size - 1}")
    if patch.size_upload != size:
        raise BenchError(f"PATCH sent {patch.size_upload} bytes, expected {size}")
    location = urljoin(base + "/", patch.headers["location"])
    put_s = finish_upload(base, location, digest, size, workdir)
    return {"requests": 3, "post_s": post_s, "patch_s": patch.time_total, "put_s": put_s}


def chunked_upload(base: str, path: Path, size: int, digest: str, workdir: Path) -> dict[str, Any]:
    location, post_s = start_upload(base, workdir)
    patch_times: list[float] = []
    for offset in range(0, size, CHUNK_SIZE):
        length = min(CHUNK_SIZE, size - offset)
        end = offset + length - 1
        patch = curl(
            "PATCH",
            location,
            workdir,
            timeout=transfer_timeout(length),
            headers=("Content-Type: application/octet-stream", f"Content-Range: {offset}-{end}"),
            upload=path,
            upload_range=(offset, length),
        )
        _expect(patch, f"PATCH {offset}-{end}", 202, range=f"0-{end}")
        if patch.size_upload != length:
            raise BenchError(f"PATCH {offset}-{end} sent {patch.size_upload} bytes, expected {length}")
        location = urljoin(base + "/", patch.headers["location"])
        patch_times.append(patch.time_total)
    put_s = finish_upload(base, location, digest, size, workdir)
    return {
        "requests": 2 + len(patch_times),
        "chunk_bytes": CHUNK_SIZE,
        "patches": len(patch_times),
        "post_s": post_s,
        "patch_s": sum(patch_times),
        "patch_max_s": max(patch_times),
        "put_s": put_s,
    }


def download(base: str, digest: str, size: int, workdir: Path) -> dict[str, Any]:
    target = workdir / "download.bin"
    try:
        get = curl(
            "GET", f"{base}/v2/{REPO_NAME}/blobs/{digest}", workdir, timeout=transfer_timeout(size), output=target
        )
        _expect(get, f"GET blob {digest}", 200, docker_content_digest=digest)
        if get.size_download != size:
            raise BenchError(f"GET blob sent {get.size_download} bytes, expected {size}")
        got = file_digest(target)
        if got != digest:
            raise BenchError(f"downloaded blob has digest {got}, expected {digest}")
    finally:
        target.unlink(missing_ok=True)
    return {"requests": 1, "get_s": get.time_total, "verified": True}


PHASES = (
    ("upload", "upload: POST, 1 PATCH, PUT"),
    ("chunked_upload", "chunked upload: 64 MiB PATCHes, PUT"),
    ("download", "download (blob of 'upload')"),
    ("download_chunked", "download (blob of 'chunked upload')"),
)


def measure(sampler: TreeSampler, size: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase: wall seconds, MB/s over them, moorage's peak RSS and CPU seconds during it."""
    sampler.mark("between")
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    entry = sampler.mark("phase")
    result.update(
        {
            "bytes": size,
            "wall_s": round(wall, 3),
            "MBps": round(size / MB / wall, 1),
            "peak_rss_mib": entry["peak_rss_mib"],
            "server_cpu_s": entry["server_cpu_s"],
        }
    )
    return result


def run_size(base: str, size: int, workdir: Path, sampler: TreeSampler, entry: dict[str, Any]) -> None:
    """Every phase for one size; results go into `entry` as they come (an interrupted size keeps what it did)."""
    label = entry["label"]
    plain, chunked = workdir / "input-upload.bin", workdir / "input-chunked.bin"
    try:
        t = time.perf_counter()
        # Different bytes for the chunked upload: the same digest would be a dedup hit (no concatenation at PUT).
        digests = {"upload": make_input(plain, size), "chunked_upload": make_input(chunked, size)}
        entry["inputs_s"] = round(time.perf_counter() - t, 1)
        entry["digests"] = digests
        log(f"{label}: inputs written in {entry['inputs_s']}s")
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "upload": lambda: monolithic_upload(base, plain, size, digests["upload"], workdir),
            "chunked_upload": lambda: chunked_upload(base, chunked, size, digests["chunked_upload"], workdir),
            "download": lambda: download(base, digests["upload"], size, workdir),
            "download_chunked": lambda: download(base, digests["chunked_upload"], size, workdir),
        }
        for name, _ in PHASES:
            result = measure(sampler, size, steps[name])
            entry["phases"][name] = result
            log(
                f"{label} {name}: {result['wall_s']:.1f}s, {result['MBps']:.1f} MB/s, "
                f"peak RSS {result['peak_rss_mib']:.1f} MiB"
            )
        time.sleep(SETTLE_S)
        entry["rss_after_mib"] = round(tree_rss_mib(sampler), 1)
    finally:
        plain.unlink(missing_ok=True)
        chunked.unlink(missing_ok=True)


# -- report -------------------------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Moorage on S3 (moto), `moorage serve` default workers, part_size 16 MiB: peak RSS of moorage's process tree"
        f" (moto not counted), sampled every {SAMPLE_INTERVAL * 1000:.0f} ms",
        f"idle RSS before the first transfer: {results['idle_rss_mib']:.1f} MiB"
        f" ({results.get('idle_processes', '?')} process(es); peak from ready to then"
        f" {results['startup_peak_rss_mib']:.1f} MiB)",
        "",
        "| size    | phase                                | wall s |  MB/s | peak RSS MiB | server CPU s |",
        "|---------|--------------------------------------|--------|-------|--------------|--------------|",
    ]
    for entry in results["sizes"]:
        for name, title in PHASES:
            phase = entry["phases"].get(name)
            if phase is None:
                continue
            lines.append(
                f"| {entry['label']:<7} | {title:<36} | {phase['wall_s']:>6.1f} | {phase['MBps']:>5.1f} "
                f"| {phase['peak_rss_mib']:>12.1f} | {phase['server_cpu_s']:>12.1f} |"
            )
        if "rss_after_mib" in entry:
            lines.append(
                f"| {entry['label']:<7} | {'RSS 2 s after the last phase':<36} |        |       "
                f"| {entry['rss_after_mib']:>12.1f} |              |"
            )
    summary = results.get("summary", {})
    if summary:
        lines += [
            "",
            f"peak RSS over everything: {summary['peak_rss_mib']:.1f} MiB (target < {TARGET_MIB:.0f} MiB: "
            f"{'met' if summary['target_met'] else 'NOT met'})",
        ]
        if summary.get("growth_mib") is not None:
            lines.append(
                "peak RSS by size: "
                + ", ".join(f"{label} {peak:.1f} MiB" for label, peak in summary["peak_by_size_mib"].items())
                + f"; growth from the smallest to the largest size: {summary['growth_mib']:+.1f} MiB"
            )
    return "\n".join(lines)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    peaks = {e["label"]: max(p["peak_rss_mib"] for p in e["phases"].values()) for e in results["sizes"] if e["phases"]}
    if not peaks:
        return {}
    done = [e for e in results["sizes"] if e["phases"]]
    growth = None
    if len(done) > 1:
        smallest = min(done, key=lambda e: e["size"])
        largest = max(done, key=lambda e: e["size"])
        growth = round(peaks[largest["label"]] - peaks[smallest["label"]], 1)
    peak = max(peaks.values())
    return {
        "peak_rss_mib": peak,
        "target_mib": TARGET_MIB,
        "target_met": peak < TARGET_MIB,
        "peak_by_size_mib": peaks,
        "growth_mib": growth,
    }


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Peak RSS of moorage on the S3 backend during large transfers (issue 3).")
    p.add_argument(
        "--sizes",
        default="256M,2G",
        type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
        help="comma-separated blob sizes, binary units (default 256M,2G)",
    )
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "s3_memory.json", help="JSON results file")
    p.add_argument("--moorage-bin", default=str(REPO_ROOT / ".venv" / "bin" / "moorage"))
    p.add_argument("--work-dir", type=Path, help="scratch directory (default: a new temporary directory, removed)")
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl",):
        if shutil.which(tool) is None:
            print(f"s3_memory: {tool} not found", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.perf_counter()
    own_workdir = args.work_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="moorage-s3mem-")) if own_workdir else args.work_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "chunk_bytes": CHUNK_SIZE,
            "sample_interval_s": SAMPLE_INTERVAL,
            "moorage_bin": args.moorage_bin,
            "workers": "moorage default",
            "s3_part_size": "moorage default",
        },
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": os.getloadavg(),
        "sizes": [],
        "errors": [],
    }
    moto = Moto(workdir)
    server: Server | None = None
    sampler: TreeSampler | None = None
    status = 0
    try:
        log(f"work dir {workdir}; sizes {', '.join(size_label(s) for s in args.sizes)}")
        moto.start()
        bucket = f"moorage-bench-{os.getpid()}"
        moto.create_bucket(bucket)
        server_dir = workdir / "moorage"
        server_dir.mkdir()
        server = start_moorage_s3(args.moorage_bin, server_dir, moto, bucket)
        sampler = TreeSampler(server.proc.pid, SAMPLE_INTERVAL).start()
        time.sleep(SETTLE_S)
        results["idle_rss_mib"] = round(tree_rss_mib(sampler), 1)
        results["idle_processes"] = len(session_processes(sampler.session))
        results["startup_peak_rss_mib"] = sampler.mark("startup")["peak_rss_mib"]
        log(f"moorage ready on {server.url}; idle RSS {results['idle_rss_mib']:.1f} MiB")
        for i, size in enumerate(args.sizes):
            if i:
                deleted = moto.empty_bucket(bucket)
                log(f"bucket emptied ({deleted} objects)")
            entry: dict[str, Any] = {"size": size, "label": size_label(size), "phases": {}}
            results["sizes"].append(entry)
            try:
                run_size(server.url, size, workdir, sampler, entry)
            except BenchError as e:
                status = 1
                results["errors"].append(f"{size_label(size)}: {e}")
                log(f"FAILED {size_label(size)}: {e}")
                if not server.alive():
                    raise
    except KeyboardInterrupt:
        status = 130
        results["errors"].append("interrupted")
        log("interrupted")
    except Exception as e:  # BenchError, ServerError, OSError, botocore's errors: reported, then cleaned up
        status = 1
        results["errors"].append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}")
    finally:
        if sampler is not None:
            sampler.stop()
            results["processes"] = sampler.processes()
            results["peak_rss_mib_whole_run"] = round(sampler.peak_rss / MIB, 1)
        if server is not None:
            if status:
                results["moorage_log_tail"] = server.log_tail()
            results["moorage_exit"] = server.stop()
        if status:
            results["moto_log_tail"] = moto.log_tail()
        moto.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - t0, 1)
    results["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results)
    if "idle_rss_mib" in results:
        print(table(results))
    print(f"\nrun time {results['duration_s']:.0f} s", *(f"\nerror: {e}" for e in results["errors"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results in {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
