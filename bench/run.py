"""Moorage vs CNCF Distribution, side by side (issue 9). See bench/README.md.

    .venv/bin/python bench/run.py [--rounds 3] [--quick] [--out bench/results/latest.json]

Each round runs the machine-limit probes, then the whole workload against Distribution and against Moorage (the
order alternates between rounds), each on a fresh data directory. Medians over the rounds go in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oci_layouts import Inputs, build_inputs
from servers import (
    MIB,
    CpuSnapshot,
    Server,
    ServerError,
    TreeSampler,
    autogroup_nice,
    set_autogroup_nice,
    set_server_nice,
    start_distribution,
    start_moorage,
    wait_for_idle,
)
from workloads import (
    EMPTY_DIGEST,
    FAST_DOWNLOADS,
    MB,
    Skopeo,
    WorkloadError,
    check_head,
    check_manifest,
    concurrent_pushes,
    machine_limits,
    put_empty_blob,
    raw_download,
    raw_download_fast,
    raw_upload,
    remove_tree,
    wrk,
    wrk_head_script,
    wrk_manifest_script,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
GIB = 1024 * MIB
SERVERS = ("distribution", "moorage")
BIG_REPO = "bench/big"
RAW_REPO = "bench/raw"
# Before each server's turn, wait (up to --idle-wait s) until other processes use less than this many cores.
IDLE_THRESHOLD_CORES = 0.15
# A server-round during which other processes used more than this many cores on average is reported.
NOISY_CORES = 0.25


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    rounds: int
    big_size: int
    wrk_seconds: int
    wrk_connections: int
    wrk_threads: int
    small_images: int
    small_layers: int
    small_layer_size: int
    moorage_workers: int | None
    moorage_bin: str
    distribution_bin: str
    skopeo_bin: str
    sample_interval: float
    idle_wait: float


# -- one server, one round ----------------------------------------------------------------------------------------


class Phases:
    """Runs the phases of one server-round; a failing phase is recorded and the round goes on where it can."""

    def __init__(self, sampler: TreeSampler, result: dict[str, Any], server: Server) -> None:
        self.sampler = sampler
        self.result = result
        self.server = server
        self.errors: list[str] = result.setdefault("errors", [])

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        # Dirty pages of the previous phase are written out first, so that each phase pays only for itself.
        os.sync()
        self.sampler.mark(f"before-{name}")
        cpu_before = CpuSnapshot.take()
        start = time.perf_counter()
        try:
            yield
        except (WorkloadError, OSError, ValueError, KeyError) as e:
            self.errors.append(f"{name}: {e}")
            log(f"  !! {name} failed: {e}")
            if not self.server.alive():
                self.errors.append(f"{name}: server exited with status {self.server.proc.returncode}")
        finally:
            wall = time.perf_counter() - start
            entry = self.sampler.mark(name)
            acct = CpuSnapshot.take().since(cpu_before, entry["server_cpu_s"], self.sampler.session)
            self.result.setdefault("phases", {})[name] = {"wall_s": round(wall, 3), **entry, **acct}


def run_server_round(
    kind: str, cfg: Config, inputs: Inputs, workdir: Path, result: dict[str, Any], limit_mbps: float
) -> None:
    """Start `kind` on a fresh root, run every phase against it, stop it; fill `result` as it goes (so that an
    interrupted turn keeps what it measured)."""
    cwd = workdir / kind
    cwd.mkdir(parents=True)
    root = cwd / "data"
    skopeo = Skopeo(cfg.skopeo_bin, cwd)
    result.update({"server": kind, "errors": []})
    os.sync()
    if cfg.idle_wait > 0:
        result["idle_wait"] = wait_for_idle(cfg.idle_wait, IDLE_THRESHOLD_CORES)
    round_start = time.perf_counter()
    cpu_start = CpuSnapshot.take()
    server: Server | None = None
    sampler: TreeSampler | None = None
    try:
        if kind == "moorage":
            server = start_moorage(cfg.moorage_bin, root, cwd, cfg.moorage_workers)
        else:
            server = start_distribution(cfg.distribution_bin, root, cwd)
        result["argv"] = server.argv
        sampler = TreeSampler(server.proc.pid, cfg.sample_interval).start()
        sampler.mark("startup")
        ph = Phases(sampler, result, server)
        host, url = server.host, server.url
        big, raw = inputs.big, inputs.raw
        pushed = False

        with ph.phase("push"):
            log(f"  {kind}: skopeo push {big.layers[0].size / MIB:.0f} MiB image")
            seconds = skopeo.copy(big.ref, f"docker://{host}/{BIG_REPO}:latest")
            result["push_s"] = seconds
            result["push_MBps"] = big.total_bytes / MB / seconds
            pushed = True

        with ph.phase("pull"):
            if not pushed:
                raise WorkloadError("skipped: the push failed")
            log(f"  {kind}: skopeo pull")
            dest = cwd / "pulled"
            try:
                seconds = skopeo.copy(f"docker://{host}/{BIG_REPO}:latest", f"oci:{dest}:latest")
            finally:
                remove_tree(dest)
            result["pull_s"] = seconds
            result["pull_MBps"] = big.total_bytes / MB / seconds

        with ph.phase("raw_upload"):
            log(f"  {kind}: curl raw blob upload (POST + PATCH + PUT)")
            up = raw_upload(url, RAW_REPO, Path(inputs.raw_path), raw.digest, raw.size, cwd)
            result["raw_upload"] = up
            result["raw_upload_MBps"] = up["MBps"]
            result["raw_upload_pct_limit"] = 100.0 * up["MBps"] / limit_mbps

        with ph.phase("raw_download"):
            if "raw_upload" not in result:
                raise WorkloadError("skipped: the upload failed")
            log(f"  {kind}: curl raw blob download")
            down = raw_download(url, RAW_REPO, raw.digest, raw.size, cwd)
            result["raw_download"] = down
            result["raw_download_MBps"] = down["MBps"]
            log(f"  {kind}: blob download with 4 MiB reads (fast_get.py)")
            fast = raw_download_fast(url, RAW_REPO, raw.digest, raw.size)
            result["raw_download_fast"] = fast
            result["raw_download_fast_MBps"] = fast["MBps"]

        wrk_args = {"seconds": cfg.wrk_seconds, "connections": cfg.wrk_connections, "threads": cfg.wrk_threads}
        with ph.phase("wrk_manifest"):
            if not pushed:
                raise WorkloadError("skipped: the push failed")
            check_manifest(url, BIG_REPO, "latest", big.manifest.digest, cwd)
            log(f"  {kind}: wrk GET manifest by tag, {cfg.wrk_seconds}s")
            stats = wrk(f"{url}/v2/{BIG_REPO}/manifests/latest", wrk_manifest_script(), cwd, **wrk_args)
            _record_wrk(result, "manifest", stats, ph)

        with ph.phase("wrk_head"):
            if not pushed:
                raise WorkloadError("skipped: the push failed")
            put_empty_blob(url, BIG_REPO, cwd)
            check_head(url, BIG_REPO, big.layers[0].digest, big.layers[0].size, cwd)
            check_head(url, BIG_REPO, EMPTY_DIGEST, 0, cwd)
            log(f"  {kind}: wrk HEAD blob, {cfg.wrk_seconds}s")
            stats = wrk(f"{url}/v2/{BIG_REPO}/blobs/{EMPTY_DIGEST}", wrk_head_script(), cwd, **wrk_args)
            _record_wrk(result, "head", stats, ph)

        with ph.phase("small_pushes"):
            log(f"  {kind}: {len(inputs.small)} concurrent skopeo pushes")
            small = concurrent_pushes(skopeo, inputs.small, host, timeout=180.0)
            result["small_pushes"] = small
            if small["failures"]:
                raise WorkloadError(f"{len(small['failures'])} pushes failed: {small['failures']}")
            result["small_push_s"] = small["wall_s"]

        if not server.alive():
            result["errors"].append(f"server exited early with status {server.proc.returncode}")
    except ServerError as e:
        result["errors"].append(f"server: {e}")
        log(f"  !! {kind}: {e}")
    finally:
        if sampler is not None:
            sampler.stop()
            result["peak_rss_mib"] = sampler.peak_rss / MIB
            result["cpu_s"] = sampler.cpu_seconds
            result["peak_processes"] = sampler.peak_procs
            result["processes"] = sampler.processes()
            result["samples"] = sampler.samples
            result["startup"] = sampler.phases.get("startup")
            acct = CpuSnapshot.take().since(cpu_start, sampler.cpu_seconds, sampler.session)
            result["cpu_accounting"] = acct
            result["background_cores"] = acct["background_cpu_s"] / max(1e-9, time.perf_counter() - round_start)
            if result["background_cores"] > NOISY_CORES:
                busiest = sorted(
                    ((name, p.get("background_cpu_s", 0.0)) for name, p in result.get("phases", {}).items()),
                    key=lambda x: -x[1],
                )[:3]
                result.setdefault("warnings", []).append(
                    f"other processes used {result['background_cores']:.2f} cores on average during this "
                    f"server's turn, its figures are noisy; busiest phases (background CPU s): {busiest}; "
                    f"top other processes: {acct['top_others']}"
                )
        if server is not None:
            result["exit_status"] = server.stop()
            if result["errors"]:
                result["log_tail"] = server.log_tail(3000)
        remove_tree(root)
        result["round_wall_s"] = time.perf_counter() - round_start


def _record_wrk(result: dict[str, Any], name: str, stats: dict[str, Any], ph: Phases) -> None:
    text = stats.pop("text")
    result[f"wrk_{name}"] = stats
    result[f"{name}_rps"] = stats["rps"]
    result[f"{name}_p99_ms"] = stats["p99_ms"]
    if stats["errors"]:
        ph.errors.append(f"wrk {name}: {stats['errors']} errors (status/socket/timeouts): {stats}\n{text}")


# -- the table ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    # ("ratio_min", x): Moorage/Distribution >= x; ("ratio_max", x): <= x; ("moorage_max", x): Moorage < x;
    # ("moorage_min", x): Moorage >= x; None: no target.
    target: tuple[str, float] | None
    digits: int = 1


def metrics(big_label: str) -> list[Metric]:
    return [
        Metric("push_s", f"skopeo push {big_label} image, wall", "s", ("ratio_max", 1.0), 2),
        Metric("push_MBps", f"skopeo push {big_label} image", "MB/s", ("ratio_min", 1.0)),
        Metric("pull_s", f"skopeo pull {big_label} image, wall", "s", ("ratio_max", 1.0), 2),
        Metric("pull_MBps", f"skopeo pull {big_label} image", "MB/s", ("ratio_min", 1.0)),
        Metric("raw_upload_MBps", f"curl blob upload {big_label} (POST+PATCH+PUT)", "MB/s", ("ratio_min", 1.0)),
        Metric("raw_upload_pct_limit", "  upload as % of min(sha256, dd)", "%", ("moorage_min", 70.0)),
        Metric("raw_download_MBps", f"curl blob download {big_label}", "MB/s", ("ratio_min", 1.0)),
        Metric(
            "raw_download_fast_MBps",
            f"  blob download, 4 MiB reads (median of {FAST_DOWNLOADS})",
            "MB/s",
            ("ratio_min", 2.0),
        ),
        Metric("manifest_rps", "GET manifest by tag (wrk)", "req/s", ("ratio_min", 2.0), 0),
        Metric("manifest_p99_ms", "GET manifest by tag p99", "ms", ("ratio_max", 0.5), 2),
        Metric("head_rps", "HEAD blob (wrk)", "req/s", ("ratio_min", 2.0), 0),
        Metric("head_p99_ms", "HEAD blob p99", "ms", ("ratio_max", 0.5), 2),
        Metric("small_push_s", "20 concurrent pushes (5 x 1 MiB), wall", "s", ("ratio_max", 1.0), 2),
        Metric("peak_rss_mib", "peak RSS, whole process tree", "MiB", ("moorage_max", 150.0)),
        Metric("cpu_s", "CPU seconds, whole round", "s", None, 1),
    ]


def target_text(target: tuple[str, float] | None) -> str:
    if target is None:
        return "-"
    kind, value = target
    return {
        "ratio_min": f">= {value:g}x",
        "ratio_max": f"<= {value:g}x",
        "moorage_max": f"M < {value:g}",
        "moorage_min": f"M >= {value:g}",
    }[kind]


def target_met(target: tuple[str, float] | None, moorage: float | None, ratio: float | None) -> bool | None:
    if target is None:
        return None
    kind, value = target
    if kind.startswith("ratio"):
        if ratio is None:
            return None
        return ratio >= value if kind == "ratio_min" else ratio <= value
    if moorage is None:
        return None
    return moorage < value if kind == "moorage_max" else moorage >= value


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rounds: list[dict[str, Any]], big_label: str) -> dict[str, Any]:
    medians: dict[str, dict[str, float | None]] = {}
    for kind in SERVERS:
        medians[kind] = {m.key: median([r.get(kind, {}).get(m.key) for r in rounds]) for m in metrics(big_label)}
    machine: dict[str, float | None] = {
        key: median([r["machine"].get(key) for r in rounds]) for key in ("sha256_MBps", "dd_MBps", "limit_MBps")
    }
    for kind in SERVERS:
        machine[f"background_cores_{kind}"] = median([r.get(kind, {}).get("background_cores") for r in rounds])
    rows = []
    for m in metrics(big_label):
        d, mo = medians["distribution"][m.key], medians["moorage"][m.key]
        ratio = mo / d if d not in (None, 0) and mo is not None else None
        rows.append(
            {
                "key": m.key,
                "label": m.label,
                "unit": m.unit,
                "distribution": d,
                "moorage": mo,
                "ratio": ratio,
                "target": target_text(m.target),
                "met": target_met(m.target, mo, ratio),
            }
        )
    return {"medians": medians, "machine": machine, "rows": rows}


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(summary: dict[str, Any], big_label: str, rounds: int) -> str:
    by_key = {m.key: m for m in metrics(big_label)}
    header = ["metric", "unit", "Distribution", "Moorage", "M/D", "target", "met"]
    lines = []
    for row in summary["rows"]:
        digits = by_key[row["key"]].digits
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        lines.append(
            [
                row["label"],
                row["unit"],
                fmt(row["distribution"], digits),
                fmt(row["moorage"], digits),
                "-" if row["ratio"] is None else f"{row['ratio']:.2f}x",
                row["target"],
                met,
            ]
        )
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">", "<", "<"]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(x) for x in lines)]
    m = summary["machine"]
    out.append("")
    out.append(
        f"Machine limits (median of {rounds} round(s)): sha256 {fmt(m['sha256_MBps'], 0)} MB/s, "
        f"dd conv=fdatasync {fmt(m['dd_MBps'], 0)} MB/s, min {fmt(m['limit_MBps'], 0)} MB/s."
    )
    out.append(
        "Other processes on the machine (median cores used during each server's turn): "
        f"Distribution {fmt(m['background_cores_distribution'], 2)}, Moorage {fmt(m['background_cores_moorage'], 2)}."
    )
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark Moorage against CNCF Distribution (issue 9).")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round, 256 MiB instead of 1 GiB, 3 s wrk runs")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON results file")
    p.add_argument("--moorage-workers", type=int, default=None, help="moorage serve --workers (default: its own)")
    p.add_argument("--moorage-bin", default=str(REPO_ROOT / ".venv" / "bin" / "moorage"))
    p.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    p.add_argument("--skopeo-bin", default=shutil.which("skopeo") or "/usr/bin/skopeo")
    p.add_argument("--work-dir", type=Path, help="scratch directory (default: a new temporary directory, removed)")
    p.add_argument("--cache-dir", type=Path, help="keep the generated images here and reuse them across runs")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=20.0,
        help="before each server's turn, wait up to this many seconds for other processes to go quiet (default 20)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="CPU priority of the harness, the clients and the servers (process and session autogroup), so that "
        "other work on the machine disturbs the measurements less (default -10; needs root, else unchanged)",
    )
    p.add_argument("--only", choices=SERVERS, help="run one server only (debugging; no ratios)")
    return p.parse_args(argv)


def check_tools(cfg: Config) -> None:
    missing = [
        name
        for name, path in [
            ("moorage", cfg.moorage_bin),
            ("docker-registry", cfg.distribution_bin),
            ("skopeo", cfg.skopeo_bin),
            ("wrk", shutil.which("wrk") or ""),
            ("curl", shutil.which("curl") or ""),
            ("dd", shutil.which("dd") or ""),
        ]
        if not (path and os.access(path, os.X_OK))
    ]
    if missing:
        sys.exit(f"bench: missing tools: {', '.join(missing)} (apt-get install skopeo docker-registry wrk curl)")


def set_priority(nice: int) -> dict[str, Any]:
    """Give the harness, every client it starts and every server CPU priority `nice` over other processes.

    Returns what was done, with the harness session's previous autogroup nice value to restore at the end.
    """
    done: dict[str, Any] = {"requested": nice, "autogroup_before": autogroup_nice()}
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        log(f"cannot set CPU priority {nice} ({e.strerror}): other processes on the machine compete on equal terms")
    done["process"] = os.getpriority(os.PRIO_PROCESS, 0)
    if done["autogroup_before"] is not None:
        done["autogroup"] = set_autogroup_nice("self", nice)
        set_server_nice(nice if done["autogroup"] else None)
    return done


def restore_priority(done: dict[str, Any]) -> None:
    if done.get("autogroup") and done["autogroup_before"] is not None:
        set_autogroup_nice("self", done["autogroup_before"])


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    big_size = 256 * MIB if args.quick else GIB
    big_label = "256 MiB" if args.quick else "1 GiB"
    cfg = Config(
        rounds=rounds,
        big_size=big_size,
        wrk_seconds=3 if args.quick else 10,
        wrk_connections=32,
        wrk_threads=2,
        small_images=20,
        small_layers=5,
        small_layer_size=MIB,
        moorage_workers=args.moorage_workers,
        moorage_bin=args.moorage_bin,
        distribution_bin=args.distribution_bin,
        skopeo_bin=args.skopeo_bin,
        sample_interval=0.1,
        idle_wait=args.idle_wait,
    )
    check_tools(cfg)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    started = time.time()
    t0 = time.perf_counter()
    own_workdir = args.work_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="moorage-bench-")) if own_workdir else args.work_dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir.resolve() if args.cache_dir else workdir / "inputs"
    servers = (args.only,) if args.only else SERVERS
    all_rounds: list[dict[str, Any]] = []
    interrupted = False
    priority = set_priority(args.nice)
    try:
        log(f"work dir {workdir}; {rounds} round(s), big image {big_label}, wrk {cfg.wrk_seconds}s")
        t_inputs = time.perf_counter()
        inputs = build_inputs(
            cache,
            big_size=cfg.big_size,
            small_images=cfg.small_images,
            small_layers=cfg.small_layers,
            small_layer_size=cfg.small_layer_size,
            log=log,
        )
        inputs_s = time.perf_counter() - t_inputs
        log(f"inputs ready in {inputs_s:.1f}s")
        for r in range(rounds):
            order = servers if r % 2 == 0 else tuple(reversed(servers))
            log(f"round {r + 1}/{rounds}: machine limits, then {' then '.join(order)}")
            limits = machine_limits(cfg.big_size, workdir)
            entry: dict[str, Any] = {"round": r + 1, "order": list(order), "machine": limits}
            all_rounds.append(entry)  # now, so that an interrupted round keeps what it measured
            log(f"  sha256 {limits['sha256_attempts_MBps']} MB/s, dd {limits['dd_attempts_MBps']} MB/s (best counts)")
            for kind in order:
                round_dir = workdir / f"round{r + 1}"
                res: dict[str, Any] = {}
                entry[kind] = res
                run_server_round(kind, cfg, inputs, round_dir, res, limits["limit_MBps"])
                remove_tree(round_dir / kind)
                log(f"  {kind}: done in {res['round_wall_s']:.1f}s, {len(res['errors'])} error(s)")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: servers stopped, writing what was measured")
    finally:
        restore_priority(priority)
        if own_workdir:
            remove_tree(workdir)
        elif args.cache_dir is None:
            remove_tree(cache)

    duration = time.perf_counter() - t0
    summary = summarize(all_rounds, big_label) if all_rounds else {"rows": [], "medians": {}, "machine": {}}
    anomalies = [
        f"round {r['round']} {kind}: {e}"
        for r in all_rounds
        for kind in SERVERS
        for e in [*r.get(kind, {}).get("errors", []), *r.get(kind, {}).get("warnings", [])]
    ]
    failed = any(r.get(kind, {}).get("errors") for r in all_rounds for kind in SERVERS)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(duration, 1),
        "interrupted": interrupted,
        "config": {**cfg.__dict__, "quick": args.quick},
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "nice": priority,
        "rounds": all_rounds,
        "summary": summary,
        "anomalies": anomalies,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if all_rounds:
        print()
        workers = cfg.moorage_workers or "default"
        print(f"Moorage ({workers} workers) vs Distribution: medians of {len(all_rounds)} round(s)")
        print(render_table(summary, big_label, len(all_rounds)))
    print(f"\nRun took {duration:.0f}s. Raw numbers: {args.out}")
    if anomalies:
        print(f"\n{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}:")
        for a in anomalies:
            print(f"  - {a.splitlines()[0][:400]}")
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
