"""How fast can skopeo pull at all? Distribution and Moorage against a server that does nothing but sendfile (issue 17).

    .venv/bin/python bench/pull_ceiling.py [--rounds 5] [--size 1G] [--out bench/results/pull_ceiling.json]

Issue 17 asks for skopeo pulls at 1.2x Distribution's throughput. This measures what any registry could reach on this
machine: besides Debian's docker-registry (CNCF Distribution 2.8) and `moorage serve` (two workers, filesystem),
each holding the same single-layer image pushed by skopeo, a third server answers the same pull from the OCI layout
on disk with no registry logic at all: the manifest and each blob by `os.sendfile` of the whole file, a thread per
connection, nothing hashed, checked or logged (`--serve`, below). Its throughput bounds every server's: what is left
is skopeo's own work (receiving, hashing, writing the copy), which no server can take off it.

Each round pulls `skopeo copy docker://HOST/bench/big:latest oci:DIR` from the three, in an order that rotates from
round to round, after a sync and a wait for an idle machine; every pulled copy is hashed against the source. One
warm-up round is not counted. The table gives the medians, each server's ratio to Distribution, and skopeo's CPU
seconds (user + system) per pull.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client import GIB, BenchError, Tools, parse_size, run_measured, size_label, verify_pulled
from oci_layouts import TAG, Layout, build_layout
from servers import Server, clean_env, free_port, start_distribution, start_moorage, wait_for_idle, wait_moorage_ready

BENCH_DIR = Path(__file__).resolve().parent
REPO = "bench/big"
TIMEOUT = 900.0
SERVERS = ("distribution", "moorage", "sendfile")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the sendfile-only server -------------------------------------------------------------------------------------


def serve_layout(layout_dir: Path, port: int) -> None:
    """Answer a pull of the layout's one image, whatever the repository and reference: `/v2/`, the manifest, blobs by
    digest, each a whole file by sendfile(2). Enough for `skopeo copy`, and nothing more."""
    index = json.loads((layout_dir / "index.json").read_text())
    manifest = index["manifests"][0]

    def blob_path(digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return layout_dir / "blobs" / algorithm / hexdigest

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def answer(self, body: bool) -> None:
            parts = self.path.split("?", 1)[0].rstrip("/").split("/")
            media_type, path, digest = "application/json", None, ""
            if len(parts) > 3 and parts[-2] == "manifests":
                media_type, digest = manifest["mediaType"], manifest["digest"]
                path = blob_path(digest)
            elif len(parts) > 3 and parts[-2] == "blobs":
                media_type, digest = "application/octet-stream", parts[-1]
                path = blob_path(digest)
                if not path.is_file() or "/" in digest:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            size = path.stat().st_size if path is not None else 0
            self.send_response(200)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(size))
            self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if body and path is not None:
                self.wfile.flush()
                with path.open("rb") as f:
                    sent = 0
                    while sent < size:
                        n = os.sendfile(self.connection.fileno(), f.fileno(), sent, size - sent)
                        if n == 0:
                            break
                        sent += n

        def do_GET(self) -> None:
            self.answer(body=True)

        def do_HEAD(self) -> None:
            self.answer(body=False)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET

    Server(("127.0.0.1", port), Handler).serve_forever()


def start_sendfile_server(layout: Layout, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", layout.path, "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, env=clean_env())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise BenchError(f"the sendfile server exited with {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise BenchError("the sendfile server did not listen within 30 s")


# -- the measurement ----------------------------------------------------------------------------------------------


def pull(tools: Tools, layout: Layout, host: str, scratch: Path, name: str) -> dict[str, Any]:
    dest = scratch / f"{name}-out"
    work = scratch / name
    work.mkdir(parents=True)
    os.sync()
    wait_for_idle(30.0, 0.15)
    argv = tools.command("skopeo", "pull", layout, f"{host}/{REPO}:{TAG}", dest)
    result = run_measured(argv, env=tools.env("skopeo", work), timeout=TIMEOUT, log_dir=work, name=name)
    if result.exit_code != 0:
        raise BenchError(f"{name}: skopeo exited with {result.exit_code}: {result.stderr_tail}")
    verify_pulled(dest, layout)
    shutil.rmtree(dest)
    return {"wall_s": result.wall_s, "MBps": layout.total_bytes / 1e6 / result.wall_s, "skopeo_cpu_s": result.cpu_s}


def push(tools: Tools, layout: Layout, host: str, work: Path, name: str) -> None:
    (work / name).mkdir(parents=True)
    argv = tools.command("skopeo", "push", layout, f"{host}/{REPO}:{TAG}", work)
    pushed = run_measured(argv, env=tools.env("skopeo", work / name), timeout=TIMEOUT, log_dir=work / name, name=name)
    if pushed.exit_code != 0:
        raise BenchError(f"pushing to {name} failed: {pushed.stderr_tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=parse_size, default=GIB)
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "pull_ceiling.json")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # internal: run the sendfile server
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_layout(args.serve, args.port)
        return 0
    moorage = shutil.which("moorage") or str(BENCH_DIR.parent / ".venv" / "bin" / "moorage")
    skopeo = shutil.which("skopeo")
    distribution = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if skopeo is None or not Path(distribution).is_file():
        raise BenchError("needs skopeo and docker-registry (apt-get install skopeo docker-registry)")
    work = Path(tempfile.mkdtemp(prefix="moorage-bench-ceiling-", dir=args.workdir))
    rounds: list[dict[str, Any]] = []
    registries: list[Server] = []
    sendfile: subprocess.Popen[bytes] | None = None
    try:
        tools = Tools(moorage, skopeo, work)
        log(f"building a {size_label(args.size)} image")
        layout = build_layout(work / "layout", [args.size], "ceiling")
        registries.append(start_distribution(distribution, work / "distribution", work))
        registries.append(start_moorage(moorage, work / "moorage", work, 2))
        wait_moorage_ready(registries[1])
        sendfile, sendfile_host = start_sendfile_server(layout, work)
        hosts = {"distribution": registries[0].host, "moorage": registries[1].host, "sendfile": sendfile_host}
        for name in ("distribution", "moorage"):
            push(tools, layout, hosts[name], work, f"push-{name}")
        for n in range(1 - args.warmup, args.rounds + 1):  # rounds up to 0 warm the machine up and are not counted
            scratch = work / f"round-{n}"
            shift = n % len(SERVERS)
            order = SERVERS[shift:] + SERVERS[:shift]
            results = {name: pull(tools, layout, hosts[name], scratch, name) for name in order}
            shutil.rmtree(scratch, ignore_errors=True)
            walls = ", ".join(f"{name} {results[name]['wall_s']:.2f}s" for name in order)
            if n <= 0:
                log(f"warm-up round (not counted): {walls}")
                continue
            rounds.append(results)
            log(f"round {n}: {walls}")
    finally:
        if sendfile is not None:
            sendfile.kill()
            sendfile.wait()
        for server in registries:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in ("wall_s", "MBps", "skopeo_cpu_s")}
        for name in SERVERS
    }
    base = medians["distribution"]["MBps"]
    print(f"skopeo pull of a {size_label(args.size)} image: medians of {len(rounds)} round(s)")
    print("| server | wall (s) | MB/s | / Distribution | skopeo CPU (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in SERVERS:
        m = medians[name]
        ratio = m["MBps"] / base
        print(f"| {name} | {m['wall_s']:.2f} | {m['MBps']:.1f} | {ratio:.2f}x | {m['skopeo_cpu_s']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "medians": medians, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.update({k: v for k, v in clean_env().items() if k == "PATH"})
    sys.exit(main())
