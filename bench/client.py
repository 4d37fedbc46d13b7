"""`moorage` vs `skopeo` as clients of one Moorage registry: push and pull of a 1 GiB image (issue 4).

    .venv/bin/python bench/client.py [--rounds 3] [--size 1G] [--out bench/results/client.json]

One `moorage serve` (default settings, filesystem storage in a temporary directory, access log off, 127.0.0.1) for
the whole run; one OCI layout holding a single-layer image, built once. Each round runs both clients, in alternating
order; each client's turn pushes the layout to a repository name never used before, then pulls it back into a new
directory. Before every push the registry's storage is emptied (blobs and repositories), so nothing can be skipped
(HEAD) or mounted; after it, the storage is checked for the uploaded blobs. skopeo gets a new, empty blob-info cache
for every command. Every pulled blob is hashed and compared with the source. See bench/README.md.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from oci_layouts import TAG, Layout, build_layout
from run import restore_priority, set_priority
from servers import MIB, CpuSnapshot, Server, ServerError, TreeSampler, clean_env, start_moorage, wait_for_idle
from workloads import MANIFEST_ACCEPT, MB

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
GIB = 1024 * MIB
CLIENTS = ("skopeo", "moorage")
OPS = ("push", "pull")
STORAGE_TREE = "docker/registry/v2"
IDLE_THRESHOLD_CORES = 0.15
NOISY_CORES = 0.25
HASH_CHUNK = 4 * MIB


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def parse_size(text: str) -> int:
    """`1G`, `256M`, `1GiB`, `4096`: binary units."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 1G, 256M)")
    size = int(m.group(1)) * {"": 1, "K": 1024, "M": MIB, "G": GIB}[m.group(2).upper()]
    if size % 512 or size < 4 * 512:
        raise argparse.ArgumentTypeError(f"size {size} must be a multiple of 512 and at least 2048 (a tar layer)")
    return size


def size_label(size: int) -> str:
    if size % GIB == 0:
        return f"{size // GIB} GiB"
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size} B"


# -- running one client command ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcResult:
    wall_s: float
    exit_code: int
    peak_rss_mib: float
    user_s: float
    sys_s: float
    timed_out: bool
    stderr_tail: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else "..." + text[-limit:]


def run_measured(argv: list[str], *, env: dict[str, str], timeout: float, log_dir: Path, name: str) -> ProcResult:
    """Run `argv` to completion in its own process group; wall time, and from wait4() the peak RSS and CPU seconds
    of the process (and of any descendant it waited for). Killed (the whole group) after `timeout` seconds."""
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    lock = threading.Lock()
    reaped = False
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, process_group=0)

        def kill() -> None:
            nonlocal timed_out
            with lock:
                if reaped:
                    return
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        with lock:
            reaped = True
        proc.returncode = os.waitstatus_to_exitcode(status)
    # Anything the command left behind in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return ProcResult(
        wall_s=wall,
        exit_code=proc.returncode,
        peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        timed_out=timed_out,
        stderr_tail=_tail(err_path) or _tail(out_path),
    )


# -- the two clients ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    moorage: str
    skopeo: str
    workdir: Path

    def command(self, client: str, op: str, layout: Layout, ref: str, dest: Path) -> list[str]:
        if client == "moorage":
            if op == "push":
                return [self.moorage, "push", "--quiet", layout.path, ref]
            return [self.moorage, "pull", "--quiet", ref, str(dest)]
        argv = [self.skopeo, "--insecure-policy", "copy", "--preserve-digests", "--retry-times=0", "--quiet"]
        if op == "push":
            return [*argv, "--dest-tls-verify=false", f"oci:{layout.path}:{TAG}", f"docker://{ref}"]
        return [*argv, "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:{TAG}"]

    def env(self, client: str, scratch: Path) -> dict[str, str]:
        """A clean environment; for skopeo a new HOME, XDG dirs and TMPDIR under `scratch`, so that its blob-info
        cache starts empty (it remembers which repositories hold a blob and would try to mount from them)."""
        env = clean_env()
        env["TMPDIR"] = str(scratch / "tmp")
        (scratch / "tmp").mkdir(parents=True, exist_ok=True)
        if client == "skopeo":
            home = scratch / "home"
            for sub in ("data", "config", "cache", "run"):
                (home / sub).mkdir(parents=True, exist_ok=True)
            (home / "run").chmod(0o700)
            env.update(
                HOME=str(home),
                XDG_DATA_HOME=str(home / "data"),
                XDG_CONFIG_HOME=str(home / "config"),
                XDG_CACHE_HOME=str(home / "cache"),
                XDG_RUNTIME_DIR=str(home / "run"),
            )
            if os.geteuid() == 0:
                # As root, containers/image keeps its cache in /var/lib/containers/cache whatever HOME is, unless
                # this (which it reads to decide whether it runs rootless) names another user.
                env["_CONTAINERS_ROOTLESS_UID"] = "65534"
        return env

    @staticmethod
    def skopeo_cache(scratch: Path) -> Path:
        return scratch / "home" / "data" / "containers" / "cache" / "blob-info-cache-v1.boltdb"


# -- the registry's storage --------------------------------------------------------------------------------------


def blob_data(root: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return root / STORAGE_TREE / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"


def reset_storage(root: Path, layout: Layout) -> None:
    """Empty the registry's blobs and repositories (the server keeps no blob index in memory: its state is the
    filesystem), then check that none of the image's blobs is left."""
    for sub in ("blobs", "repositories"):
        shutil.rmtree(root / STORAGE_TREE / sub, ignore_errors=True)
    left = [b.digest for b in [layout.config, *layout.layers] if blob_data(root, b.digest).exists()]
    if left:
        raise BenchError(f"storage still holds {left} after the reset")


def check_stored(root: Path, repo: str, layout: Layout) -> dict[str, Any]:
    """After a push: every blob is in the storage with its size, linked into `repo` (so it was uploaded: the
    storage had none of them before the push, so nothing could be skipped or mounted)."""
    for blob in [layout.config, *layout.layers]:
        data = blob_data(root, blob.digest)
        if not data.is_file() or data.stat().st_size != blob.size:
            raise BenchError(f"after the push, {blob.digest} is not in the storage with {blob.size} bytes")
        _, _, hexdigest = blob.digest.partition(":")
        link = root / STORAGE_TREE / "repositories" / repo / "_layers" / "sha256" / hexdigest / "link"
        if not link.is_file():
            raise BenchError(f"after the push, {repo} has no link to {blob.digest}")
    return {"blobs_uploaded": 1 + len(layout.layers), "bytes_stored": layout.config.size + layout.layers[0].size}


def check_manifest(base_url: str, repo: str, layout: Layout) -> None:
    response = httpx.get(f"{base_url}/v2/{repo}/manifests/{TAG}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    digest = response.headers.get("docker-content-digest")
    if response.status_code != 200 or digest != layout.manifest.digest:
        expected = layout.manifest.digest
        raise BenchError(f"GET {repo}:{TAG} answered {response.status_code} {digest}, expected {expected}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def verify_pulled(dest: Path, layout: Layout) -> dict[str, Any]:
    """The pulled OCI layout holds the source image: same manifest digest, every blob hashed and compared."""
    index = json.loads((dest / "index.json").read_text())
    manifests = index.get("manifests", [])
    if len(manifests) != 1:
        raise BenchError(f"pulled index.json lists {len(manifests)} manifests, expected 1")
    manifest_digest = manifests[0]["digest"]
    if manifest_digest != layout.manifest.digest:
        raise BenchError(f"pulled manifest {manifest_digest}, pushed {layout.manifest.digest}")

    def blob(digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return dest / "blobs" / algorithm / hexdigest

    manifest = json.loads(blob(manifest_digest).read_bytes())
    descriptors = [manifest["config"], *manifest["layers"]]
    expected = [layout.config, *layout.layers]
    if [d["digest"] for d in descriptors] != [b.digest for b in expected]:
        raise BenchError("the pulled manifest's config and layers differ from the source")
    checked = []
    for desc in [{"digest": manifest_digest, "size": layout.manifest.size}, *descriptors]:
        path = blob(desc["digest"])
        actual = _sha256_file(path)
        if actual != desc["digest"] or path.stat().st_size != desc["size"]:
            raise BenchError(f"pulled blob {desc['digest']} hashes to {actual} ({path.stat().st_size} bytes)")
        checked.append(desc["digest"])
    return {"blobs_verified": len(checked), "layer_digests": [b.digest for b in layout.layers]}


# -- one measured operation --------------------------------------------------------------------------------------


@dataclass
class Bench:
    tools: Tools
    server: Server
    sampler: TreeSampler
    layout: Layout
    root: Path
    timeout: float
    idle_wait: float

    def op(self, client: str, op: str, repo: str, dest: Path, scratch: Path) -> dict[str, Any]:
        ref = f"{self.server.host}/{repo}:{TAG}"
        argv = self.tools.command(client, op, self.layout, ref, dest)
        env = self.tools.env(client, scratch)
        record: dict[str, Any] = {"client": client, "op": op, "repo": repo, "argv": argv}
        # The previous operation's dirty pages are written back now, not on this one's time.
        os.sync()
        if self.idle_wait > 0:
            record["idle_wait"] = wait_for_idle(self.idle_wait, IDLE_THRESHOLD_CORES)
        self.sampler.mark(f"before-{client}-{op}")
        before = CpuSnapshot.take()
        result = run_measured(argv, env=env, timeout=self.timeout, log_dir=scratch, name=f"{client}-{op}")
        server_phase = self.sampler.mark(f"{client}-{op}-{repo}")
        acct = CpuSnapshot.take().since(before, server_phase["server_cpu_s"], self.sampler.session)
        record.update(
            wall_s=result.wall_s,
            MBps=self.layout.total_bytes / MB / result.wall_s,
            exit_code=result.exit_code,
            client_peak_rss_mib=result.peak_rss_mib,
            client_cpu_s=result.cpu_s,
            client_user_s=result.user_s,
            client_sys_s=result.sys_s,
            server_cpu_s=server_phase["server_cpu_s"],
            server_peak_rss_mib=server_phase["peak_rss_mib"],
            background_cpu_s=acct["background_cpu_s"],
            background_cores=acct["background_cpu_s"] / max(result.wall_s, 1e-9),
            top_others=acct["top_others"],
        )
        if result.timed_out:
            raise BenchError(f"{client} {op} timed out after {self.timeout:.0f}s: {result.stderr_tail}")
        if result.exit_code != 0:
            raise BenchError(f"{client} {op} exited with {result.exit_code}: {result.stderr_tail}")
        if client == "skopeo":
            cache = Tools.skopeo_cache(scratch)
            record["skopeo_blob_info_cache"] = str(cache)
            if not cache.is_file():
                raise BenchError(f"skopeo did not use the fresh blob-info cache {cache}: isolation failed")
        return record

    def turn(self, client: str, round_no: int, scratch_root: Path) -> dict[str, Any]:
        """Push to a new repository (on emptied storage), check the storage, pull, verify, clean up."""
        repo = f"bench/{client}-round{round_no}"
        turn: dict[str, Any] = {"client": client, "repo": repo, "errors": []}
        dest = scratch_root / f"pulled-{client}-{round_no}"
        try:
            reset_storage(self.root, self.layout)
            log(f"  {client}: push {size_label(self.layout.layers[0].size)} image to {repo}")
            scratch = scratch_root / f"{client}-{round_no}-push"
            push = self.op(client, "push", repo, dest, scratch)
            turn["push"] = push
            push["stored"] = check_stored(self.root, repo, self.layout)
            check_manifest(self.server.url, repo, self.layout)
            log(f"  {client}: push {push['wall_s']:.2f}s ({push['MBps']:.0f} MB/s); pull")
            scratch = scratch_root / f"{client}-{round_no}-pull"
            pull = self.op(client, "pull", repo, dest, scratch)
            turn["pull"] = pull
            pull["verified"] = verify_pulled(dest, self.layout)
            log(f"  {client}: pull {pull['wall_s']:.2f}s ({pull['MBps']:.0f} MB/s), blobs verified")
        except (BenchError, OSError, ValueError, KeyError, httpx.HTTPError) as e:
            turn["errors"].append(f"{type(e).__name__}: {e}")
            log(f"  !! {client} round {round_no}: {e}")
            if not self.server.alive():
                turn["errors"].append(f"server exited with status {self.server.proc.returncode}")
        finally:
            shutil.rmtree(dest, ignore_errors=True)
            for op in OPS:
                shutil.rmtree(scratch_root / f"{client}-{round_no}-{op}", ignore_errors=True)
        for op in OPS:
            rec = turn.get(op)
            if rec and rec["background_cores"] > NOISY_CORES:
                turn.setdefault("warnings", []).append(
                    f"{op}: other processes used {rec['background_cores']:.2f} cores on average "
                    f"({rec['top_others']}): noisy"
                )
        return turn


# -- summary and table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    op: str
    field: str
    label: str
    unit: str
    target: str | None  # "max" (ratio <= 1) or "min" (ratio >= 1), None: no target
    digits: int


def metrics(label: str) -> list[Metric]:
    return [
        Metric("push", "wall_s", f"push {label} image, wall", "s", "max", 2),
        Metric("push", "MBps", f"push {label} image", "MB/s", "min", 1),
        Metric("pull", "wall_s", f"pull {label} image, wall", "s", "max", 2),
        Metric("pull", "MBps", f"pull {label} image", "MB/s", "min", 1),
        Metric("push", "client_peak_rss_mib", "push: client peak RSS", "MiB", None, 1),
        Metric("push", "client_cpu_s", "push: client CPU (user+sys)", "s", None, 2),
        Metric("pull", "client_peak_rss_mib", "pull: client peak RSS", "MiB", None, 1),
        Metric("pull", "client_cpu_s", "pull: client CPU (user+sys)", "s", None, 2),
        Metric("push", "server_cpu_s", "push: server CPU", "s", None, 2),
        Metric("pull", "server_cpu_s", "pull: server CPU", "s", None, 2),
    ]


def summarize(rounds: list[dict[str, Any]], label: str) -> dict[str, Any]:
    rows = []
    for m in metrics(label):
        values: dict[str, list[float]] = {}
        for client in CLIENTS:
            values[client] = [
                r[client][m.op][m.field] for r in rounds if m.op in r.get(client, {}) and not r[client]["errors"]
            ]
        med = {c: statistics.median(v) if v else None for c, v in values.items()}
        s, mo = med["skopeo"], med["moorage"]
        ratio = mo / s if s and mo is not None else None
        met = None
        if m.target and ratio is not None:
            met = ratio <= 1.0 if m.target == "max" else ratio >= 1.0
        rows.append(
            {
                "key": f"{m.op}_{m.field}",
                "label": m.label,
                "unit": m.unit,
                "skopeo": s,
                "moorage": mo,
                "ratio": ratio,
                "target": {"max": "<= 1x", "min": ">= 1x", None: "-"}[m.target],
                "met": met,
                "rounds": values,
            }
        )
    return {"rows": rows}


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(summary: dict[str, Any], label: str) -> str:
    digits = {f"{m.op}_{m.field}": m.digits for m in metrics(label)}
    header = ["metric", "unit", "skopeo", "moorage", "moorage/skopeo", "target", "met"]
    lines = [
        [
            row["label"],
            row["unit"],
            fmt(row["skopeo"], digits[row["key"]]),
            fmt(row["moorage"], digits[row["key"]]),
            "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
            row["target"],
            {True: "yes", False: "NO", None: "-"}[row["met"]],
        ]
        for row in summary["rows"]
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">", "<", "<"]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(x) for x in lines)]
    per_round = []
    for row in summary["rows"]:
        if row["unit"] == "s" and "wall" in row["label"]:
            cells = ", ".join(f"{c} {' / '.join(f'{v:.2f}' for v in row['rounds'][c]) or '-'}" for c in CLIENTS)
            per_round.append(f"  {row['label']} per round (s): {cells}")
    return "\n".join([*out, "", *per_round])


# -- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Push and pull with moorage vs skopeo against one Moorage (issue 4).")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3); each runs both clients")
    p.add_argument("--size", type=parse_size, default=GIB, help="layer size, binary units (default 1G)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "client.json", help="JSON results file")
    p.add_argument("--moorage-bin", default=str(REPO_ROOT / ".venv" / "bin" / "moorage"))
    p.add_argument("--skopeo-bin", default=shutil.which("skopeo") or "/usr/bin/skopeo")
    p.add_argument("--timeout", type=float, default=300.0, help="per client command, seconds (default 300)")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=10.0,
        help="before each command, wait up to this many seconds for other processes to go quiet (default 10)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="CPU priority of the harness, the clients and the server, process and session autogroup (default -10; "
        "needs root, else unchanged)",
    )
    p.add_argument("--work-dir", type=Path, help="scratch directory (default: a new temporary directory, removed)")
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        sys.exit("bench: --rounds must be at least 1")
    missing = [p for p in (args.moorage_bin, args.skopeo_bin) if not os.access(p, os.X_OK)]
    if missing:
        sys.exit(f"bench: missing tools: {', '.join(missing)}")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    label = size_label(args.size)
    started = time.time()
    t0 = time.perf_counter()
    own_workdir = args.work_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="moorage-client-bench-")) if own_workdir else args.work_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    errors: list[str] = []
    interrupted = False
    server: Server | None = None
    sampler: TreeSampler | None = None
    layout: Layout | None = None
    extra: dict[str, Any] = {}
    priority = set_priority(args.nice)
    try:
        log(f"work dir {workdir}; {args.rounds} round(s), one {label} layer")
        t = time.perf_counter()
        layout = build_layout(workdir / "layout", [args.size], "client-bench")
        extra["layout_build_s"] = round(time.perf_counter() - t, 1)
        log(f"layout built in {extra['layout_build_s']}s: layer {layout.layers[0].digest}")
        (workdir / "server").mkdir()
        root = workdir / "server" / "data"
        server = start_moorage(args.moorage_bin, root, workdir / "server", None)
        extra["server_argv"] = server.argv
        sampler = TreeSampler(server.proc.pid, 0.1).start()
        sampler.mark("startup")
        tools = Tools(args.moorage_bin, args.skopeo_bin, workdir)
        bench = Bench(tools, server, sampler, layout, root, args.timeout, args.idle_wait)
        for r in range(args.rounds):
            order = CLIENTS if r % 2 == 0 else tuple(reversed(CLIENTS))
            log(f"round {r + 1}/{args.rounds}: {' then '.join(order)}")
            entry: dict[str, Any] = {"round": r + 1, "order": list(order)}
            rounds.append(entry)
            for client in order:
                entry[client] = bench.turn(client, r + 1, workdir)
            if not server.alive():
                errors.append(f"server exited with status {server.proc.returncode}")
                break
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the server, writing what was measured")
    except (ServerError, BenchError, OSError) as e:
        errors.append(f"{type(e).__name__}: {e}")
        log(f"!! {e}")
    finally:
        if sampler is not None:
            sampler.stop()
            extra["server_peak_rss_mib"] = round(sampler.peak_rss / MIB, 1)
            extra["server_cpu_s"] = round(sampler.cpu_seconds, 2)
            extra["server_processes"] = sampler.processes()
        if server is not None:
            extra["server_exit_status"] = server.stop()
            if errors or any(r.get(c, {}).get("errors") for r in rounds for c in CLIENTS):
                extra["server_log_tail"] = server.log_tail(3000)
        restore_priority(priority)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for sub in ("layout", "server"):
                shutil.rmtree(workdir / sub, ignore_errors=True)

    duration = time.perf_counter() - t0
    summary = summarize(rounds, label)
    anomalies = [*errors]
    for r in rounds:
        for client in CLIENTS:
            turn = r.get(client, {})
            notes = [*turn.get("errors", []), *turn.get("warnings", [])]
            anomalies += [f"round {r['round']} {client}: {e}" for e in notes]
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(duration, 1),
        "interrupted": interrupted,
        "config": {
            "rounds": args.rounds,
            "layer_size": args.size,
            "image_bytes": layout.total_bytes if layout else None,
            "layout": {"manifest": layout.manifest.digest, "layer": layout.layers[0].digest} if layout else None,
            "moorage_bin": args.moorage_bin,
            "skopeo_bin": args.skopeo_bin,
            "timeout_s": args.timeout,
            "idle_wait_s": args.idle_wait,
        },
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "nice": priority,
        **extra,
        "summary": summary,
        "rounds": rounds,
        "anomalies": anomalies,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if rounds:
        print()
        print(f"moorage vs skopeo against one Moorage, {label} single-layer image: medians of {len(rounds)} round(s)")
        print(render_table(summary, label))
    print(f"\nRun took {duration:.0f}s. Raw numbers: {args.out}")
    if anomalies:
        print(f"\n{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}:")
        for a in anomalies:
            print(f"  - {a.splitlines()[0][:400]}")
    failed = bool(errors) or any(r.get(c, {}).get("errors") for r in rounds for c in CLIENTS)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
