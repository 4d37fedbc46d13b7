"""Pull through Moorage's pull-through cache vs straight from the upstream: a 1 GiB image, skopeo (issue 15).

    .venv/bin/python bench/proxy.py [--rounds 3] [--size 1G] [--out bench/results/proxy.json]

The upstream is Debian's docker-registry (CNCF Distribution 2.8) on 127.0.0.1, holding one single-layer image pushed
once by skopeo. Each round, in this order:
- direct: `skopeo copy docker://UPSTREAM/bench/big:latest oci:DIR` (the figure to beat);
- cold: a fresh `moorage serve` (empty storage, `proxy.upstreams` naming the upstream under the prefix `up`), and the
  same pull of `MOORAGE/up/bench/big:latest`: upstream -> Moorage -> skopeo, with Moorage storing what it streams;
- warm: the same pull again from that Moorage, now served from its storage.
Every pulled copy is hashed against the source. One warm-up round comes first and is not counted (`--warmup`).
Targets: cold within 1.2x of direct, warm at most direct.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client import GIB, BenchError, Tools, parse_size, run_measured, size_label, verify_pulled
from oci_layouts import TAG, Layout, build_layout
from servers import Server, clean_env, start_distribution, start_moorage, wait_for_idle, wait_moorage_ready

BENCH_DIR = Path(__file__).resolve().parent
REPO = "bench/big"
PREFIX = "up"
TIMEOUT = 900.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pull(tools: Tools, layout: Layout, host: str, repo: str, scratch: Path, name: str) -> dict[str, Any]:
    dest = scratch / f"{name}-out"
    work = scratch / name
    work.mkdir(parents=True)
    os.sync()
    wait_for_idle(30.0, 0.15)
    argv = tools.command("skopeo", "pull", layout, f"{host}/{repo}:{TAG}", dest)
    result = run_measured(argv, env=tools.env("skopeo", work), timeout=TIMEOUT, log_dir=work, name=name)
    if result.exit_code != 0:
        raise BenchError(f"{name}: skopeo exited with {result.exit_code}: {result.stderr_tail}")
    verify_pulled(dest, layout)
    shutil.rmtree(dest)
    return {"wall_s": result.wall_s, "MBps": layout.total_bytes / 1e6 / result.wall_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=parse_size, default=GIB)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="rounds run first and not counted (a run's first cold pull is 1.5-2.5 s slower: the upstream's page "
        "cache after the push, not Moorage's doing)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "proxy.json")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    moorage = shutil.which("moorage") or str(BENCH_DIR.parent / ".venv" / "bin" / "moorage")
    skopeo = shutil.which("skopeo")
    distribution = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if skopeo is None or not Path(distribution).is_file():
        raise BenchError("needs skopeo and docker-registry (apt-get install skopeo docker-registry)")
    work = Path(tempfile.mkdtemp(prefix="moorage-bench-proxy-", dir=args.workdir))
    rounds: list[dict[str, Any]] = []
    upstream: Server | None = None
    try:
        tools = Tools(moorage, skopeo, work)
        log(f"building a {size_label(args.size)} image")
        layout = build_layout(work / "layout", [args.size], "proxy")
        upstream = start_distribution(distribution, work / "upstream", work)
        push_env = tools.env("skopeo", work / "push")
        argv = tools.command("skopeo", "push", layout, f"{upstream.host}/{REPO}:{TAG}", work)
        pushed = run_measured(argv, env=push_env, timeout=TIMEOUT, log_dir=work / "push", name="push")
        if pushed.exit_code != 0:
            raise BenchError(f"pushing to the upstream failed: {pushed.stderr_tail}")
        upstreams = [{"name": "upstream", "url": upstream.url, "prefix": PREFIX}]
        for n in range(1 - args.warmup, args.rounds + 1):  # rounds up to 0 warm the machine up and are not counted
            scratch = work / f"round-{n}"
            direct = pull(tools, layout, upstream.host, REPO, scratch, "direct")
            cache = start_moorage(
                moorage, scratch / "moorage", scratch, None, env={"MOORAGE_PROXY__UPSTREAMS": json.dumps(upstreams)}
            )
            try:
                wait_moorage_ready(cache)
                cold = pull(tools, layout, cache.host, f"{PREFIX}/{REPO}", scratch, "cold")
                warm = pull(tools, layout, cache.host, f"{PREFIX}/{REPO}", scratch, "warm")
            finally:
                cache.stop()
            shutil.rmtree(scratch / "moorage", ignore_errors=True)
            walls = f"direct {direct['wall_s']:.2f}s, cold {cold['wall_s']:.2f}s, warm {warm['wall_s']:.2f}s"
            if n <= 0:
                log(f"warm-up round (not counted): {walls}")
                continue
            rounds.append({"direct": direct, "cold": cold, "warm": warm})
            log(f"round {n}: {walls}")
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {kind: statistics.median(r[kind]["wall_s"] for r in rounds) for kind in ("direct", "cold", "warm")}
    rows = [
        ("pull straight from the upstream", medians["direct"], "-", "-"),
        ("pull through Moorage, cold", medians["cold"], f"{medians['cold'] / medians['direct']:.2f}x", "<= 1.2x"),
        ("pull through Moorage, warm", medians["warm"], f"{medians['warm'] / medians['direct']:.2f}x", "<= 1.0x"),
    ]
    print(f"skopeo pull of a {size_label(args.size)} image: medians of {len(rounds)} round(s)")
    print("| pull | wall (s) | / direct | target |")
    print("|---|---:|---:|---|")
    for label, wall, ratio, target in rows:
        print(f"| {label} | {wall:.2f} | {ratio} | {target} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "medians_s": medians, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.update({k: v for k, v in clean_env().items() if k == "PATH"})
    sys.exit(main())
