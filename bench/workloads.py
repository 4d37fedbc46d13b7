"""The measured operations: skopeo push/pull, curl blob upload/download, wrk request loads, concurrent small pushes,
and the machine's own limits (sha256 and disk write throughput).

Every operation is bounded: each external command has a timeout and is killed when it runs out (or when the
harness is interrupted). A failure raises `WorkloadError` with the command and the tail of its output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from oci_layouts import Layout

MB = 1_000_000
MIB = 1024 * 1024
SKOPEO_BIG_TIMEOUT = 300.0
SKOPEO_SMALL_TIMEOUT = 180.0
CURL_TIMEOUT = 300.0
WRK_GRACE = 30.0

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class WorkloadError(RuntimeError):
    pass


def _tail(text: str | bytes | None, limit: int = 1500) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else "..." + text[-limit:]


def run(argv: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or WorkloadError (non-zero exit, timeout) with its output."""
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise WorkloadError(f"`{' '.join(argv)}` timed out after {timeout:.0f}s; stderr: {_tail(e.stderr)}") from e
    if result.returncode != 0:
        raise WorkloadError(
            f"`{' '.join(argv)}` exited with {result.returncode}; stderr: {_tail(result.stderr)} "
            f"stdout: {_tail(result.stdout)}"
        )
    return result.stdout.decode(errors="replace")


# -- skopeo -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skopeo:
    binary: str
    tmpdir: Path

    def env(self) -> dict[str, str]:
        return dict(os.environ, TMPDIR=str(self.tmpdir))

    def copy_argv(self, src: str, dest: str) -> list[str]:
        argv = [self.binary, "--insecure-policy", "copy", "--preserve-digests", "--retry-times=0", "--quiet"]
        if src.startswith("docker://"):
            argv.append("--src-tls-verify=false")
        if dest.startswith("docker://"):
            argv.append("--dest-tls-verify=false")
        return [*argv, src, dest]

    def copy(self, src: str, dest: str, timeout: float = SKOPEO_BIG_TIMEOUT) -> float:
        """Wall seconds of one `skopeo copy`."""
        start = time.perf_counter()
        run(self.copy_argv(src, dest), timeout=timeout, env=self.env())
        return time.perf_counter() - start


def concurrent_pushes(skopeo: Skopeo, layouts: list[Layout], host: str, timeout: float) -> dict[str, Any]:
    """Push every layout at once (one skopeo process each); wall seconds until the last one finished."""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    start = time.perf_counter()
    finished: dict[str, float] = {}
    failures: list[str] = []
    try:
        for i, layout in enumerate(layouts):
            dest = f"docker://{host}/bench/small-{i:02d}:latest"
            argv = skopeo.copy_argv(layout.ref, dest)
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=skopeo.env()
            )
            procs.append((dest, proc))
        deadline = start + timeout
        for dest, proc in procs:
            try:
                _, stderr = proc.communicate(timeout=max(0.1, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                failures.append(f"{dest}: timed out after {timeout:.0f}s")
                continue
            finished[dest] = time.perf_counter() - start
            if proc.returncode != 0:
                failures.append(f"{dest}: exit {proc.returncode}: {_tail(stderr, 600)}")
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
    wall = time.perf_counter() - start
    times = sorted(finished.values())
    return {
        "wall_s": wall,
        "images": len(layouts),
        "failures": failures,
        "first_done_s": times[0] if times else None,
        "median_done_s": times[len(times) // 2] if times else None,
        "bytes": sum(layout.total_bytes for layout in layouts),
    }


# -- curl -------------------------------------------------------------------------------------------------------

CURL_WRITE_OUT = "%{http_code} %{time_total} %{size_upload} %{size_download}"


@dataclass(frozen=True)
class CurlResult:
    status: int
    time_total: float
    size_upload: int
    size_download: int
    headers: dict[str, str]


def curl(args: list[str], url: str, header_file: Path, timeout: float = CURL_TIMEOUT) -> CurlResult:
    argv = ["curl", "-sS", "--http1.1", "-o", "/dev/null", "-D", str(header_file), "-w", CURL_WRITE_OUT, *args, url]
    out = run(argv, timeout=timeout).split()
    headers: dict[str, str] = {}
    for line in header_file.read_text(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return CurlResult(int(out[0]), float(out[1]), int(float(out[2])), int(float(out[3])), headers)


def raw_upload(base_url: str, repo: str, path: Path, digest: str, size: int, workdir: Path) -> dict[str, Any]:
    """POST (start), one PATCH carrying the whole file, PUT ?digest= (commit). MB/s over the sum of the three."""
    hdr = workdir / "curl-headers.txt"
    start = time.perf_counter()
    post = curl(["-X", "POST", "-H", "Content-Length: 0"], f"{base_url}/v2/{repo}/blobs/uploads/", hdr)
    if post.status != 202 or "location" not in post.headers:
        raise WorkloadError(f"POST upload answered {post.status}, headers {post.headers}")
    location = urljoin(base_url + "/", post.headers["location"])
    patch = curl(
        ["-X", "PATCH", "-T", str(path), "-H", "Content-Type: application/octet-stream", "-H", "Expect:"],
        location,
        hdr,
    )
    if patch.status != 202 or "location" not in patch.headers:
        raise WorkloadError(f"PATCH upload answered {patch.status}, headers {patch.headers}")
    if patch.size_upload != size:
        raise WorkloadError(f"PATCH sent {patch.size_upload} bytes, expected {size}")
    location = urljoin(base_url + "/", patch.headers["location"])
    sep = "&" if "?" in location else "?"
    put = curl(
        ["-X", "PUT", "-H", "Content-Length: 0", "-H", "Content-Type: application/octet-stream"],
        f"{location}{sep}digest={digest}",
        hdr,
    )
    wall = time.perf_counter() - start
    if put.status != 201:
        raise WorkloadError(f"PUT upload answered {put.status}, headers {put.headers}")
    if put.headers.get("docker-content-digest") not in (None, digest):
        raise WorkloadError(f"PUT answered digest {put.headers.get('docker-content-digest')}, expected {digest}")
    total = post.time_total + patch.time_total + put.time_total
    return {
        "seconds": total,
        "wall_s": wall,
        "post_s": post.time_total,
        "patch_s": patch.time_total,
        "put_s": put.time_total,
        "MBps": size / MB / total,
    }


def raw_download(base_url: str, repo: str, digest: str, size: int, workdir: Path) -> dict[str, Any]:
    hdr = workdir / "curl-headers.txt"
    get = curl(["-L"], f"{base_url}/v2/{repo}/blobs/{digest}", hdr)
    if get.status != 200 or get.size_download != size:
        raise WorkloadError(f"GET blob answered {get.status} with {get.size_download} bytes, expected 200 and {size}")
    return {"seconds": get.time_total, "MBps": size / MB / get.time_total}


FAST_GET = Path(__file__).with_name("fast_get.py")
FAST_DOWNLOADS = 3


def raw_download_fast(base_url: str, repo: str, digest: str, size: int) -> dict[str, Any]:
    """The same blob, fetched FAST_DOWNLOADS times by fast_get.py (4 MiB reads): MB/s of the median fetch."""
    url = f"{base_url}/v2/{repo}/blobs/{digest}"
    fetches = []
    for _ in range(FAST_DOWNLOADS):
        answer = json.loads(run([sys.executable, str(FAST_GET), url, str(CURL_TIMEOUT)], timeout=CURL_TIMEOUT + 10))
        if answer["status"] != 200 or answer["bytes"] != size:
            raise WorkloadError(
                f"GET blob answered {answer['status']} with {answer['bytes']} bytes, expected 200, {size}"
            )
        fetches.append(answer["seconds"])
    seconds = sorted(fetches)[len(fetches) // 2]
    return {"seconds": seconds, "all_seconds": fetches, "MBps": size / MB / seconds}


def put_empty_blob(base_url: str, repo: str, workdir: Path) -> None:
    """The zero-length blob (target of the HEAD load, see wrk_head_script), pushed with POST + PUT ?digest=."""
    hdr = workdir / "curl-headers.txt"
    post = curl(["-X", "POST", "-H", "Content-Length: 0"], f"{base_url}/v2/{repo}/blobs/uploads/", hdr)
    if post.status != 202:
        raise WorkloadError(f"POST upload answered {post.status}")
    location = urljoin(base_url + "/", post.headers["location"])
    sep = "&" if "?" in location else "?"
    put = curl(["-X", "PUT", "-H", "Content-Length: 0"], f"{location}{sep}digest={EMPTY_DIGEST}", hdr)
    if put.status != 201:
        raise WorkloadError(f"PUT empty blob answered {put.status}")


def check_head(base_url: str, repo: str, digest: str, size: int, workdir: Path) -> None:
    res = curl(["-I"], f"{base_url}/v2/{repo}/blobs/{digest}", workdir / "curl-headers.txt")
    length = res.headers.get("content-length")
    if res.status != 200 or length != str(size) or res.headers.get("docker-content-digest") != digest:
        raise WorkloadError(f"HEAD blob {digest}: {res.status}, headers {res.headers}; expected 200, {size} bytes")


def check_manifest(base_url: str, repo: str, tag: str, digest: str, workdir: Path) -> None:
    res = curl(["-H", f"Accept: {MANIFEST_ACCEPT}"], f"{base_url}/v2/{repo}/manifests/{tag}", workdir / "curl-h.txt")
    if res.status != 200 or res.headers.get("docker-content-digest") != digest:
        raise WorkloadError(f"GET manifest {repo}:{tag}: {res.status}, headers {res.headers}; expected {digest}")


# -- wrk --------------------------------------------------------------------------------------------------------

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect_errors":%.0f,"read_errors":%.0f,' ..
    '"write_errors":%.0f,"status_errors":%.0f,"timeouts":%.0f,"mean_us":%.1f,"max_us":%.0f,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"p999_us":%.0f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def wrk_manifest_script() -> str:
    return f'wrk.method = "GET"\nwrk.headers["Accept"] = "{MANIFEST_ACCEPT}"\n' + WRK_DONE


def wrk_head_script() -> str:
    # wrk 4.1 waits for a body after a HEAD response that carries a non-zero Content-Length (wg/wrk#198): it then
    # completes no request at all. So the HEAD load targets the zero-length blob, whose Content-Length is 0; the
    # server's work per request (repository link, blob stat, headers) does not depend on the size.
    return 'wrk.method = "HEAD"\n' + WRK_DONE


def wrk(url: str, script: str, workdir: Path, *, seconds: int, connections: int, threads: int) -> dict[str, Any]:
    script_path = workdir / "wrk-script.lua"
    script_path.write_text(script)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script_path),
        url,
    ]
    out = run(argv, timeout=seconds + WRK_GRACE)
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise WorkloadError(f"wrk printed no summary: {_tail(out)}")
    stats: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6) if stats["duration_us"] else 0.0
    stats["p99_ms"] = stats["p99_us"] / 1000.0
    stats["p50_ms"] = stats["p50_us"] / 1000.0
    errors = sum(stats[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    stats["errors"] = errors
    if stats["requests"] == 0:
        raise WorkloadError(f"wrk completed no request against {url}: {_tail(out)}")
    stats["text"] = out
    return stats


# -- machine limits ----------------------------------------------------------------------------------------------


def sha256_throughput(size: int) -> float:
    """MB/s of hashlib.sha256 over `size` bytes (1 MiB updates from memory), on one thread."""
    buf = os.urandom(MIB)
    h = hashlib.sha256()
    start = time.perf_counter()
    for _ in range(size // MIB):
        h.update(buf)
    h.hexdigest()
    return size / MB / (time.perf_counter() - start)


def dd_throughput(size: int, workdir: Path) -> float:
    """MB/s of `dd if=/dev/zero of=FILE bs=1M count=N conv=fdatasync` (wall time of the whole command)."""
    target = workdir / "dd-test.bin"
    os.sync()
    start = time.perf_counter()
    try:
        run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size // MIB}", "conv=fdatasync"], timeout=300)
        elapsed = time.perf_counter() - start
    finally:
        target.unlink(missing_ok=True)
        # The freed blocks are discarded at the next journal commit: not on the next measurement's time.
        os.sync()
    return size / MB / elapsed


def machine_limits(size: int, workdir: Path, attempts: int = 2) -> dict[str, Any]:
    """sha256 and dd throughput, each the best of `attempts` (what the machine can do, not what a hiccup allowed)."""
    sha = [sha256_throughput(size) for _ in range(attempts)]
    dd = [dd_throughput(size, workdir) for _ in range(attempts)]
    return {
        "sha256_MBps": max(sha),
        "dd_MBps": max(dd),
        "limit_MBps": min(max(sha), max(dd)),
        "sha256_attempts_MBps": [round(x, 1) for x in sha],
        "dd_attempts_MBps": [round(x, 1) for x in dd],
    }


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
