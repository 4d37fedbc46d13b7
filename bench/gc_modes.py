"""Benchmark of GC driven by the metadata database vs the full mark over storage, at 100,000 manifests.

    .venv/bin/python bench/gc_modes.py                          # 10,000 repositories x 10 manifests (~10 min)
    .venv/bin/python bench/gc_modes.py --repositories 200       # smoke run (~20 s)
    .venv/bin/python bench/gc_modes.py --engine postgresql      # the database in a throwaway PostgreSQL
    .venv/bin/python bench/gc_modes.py --output FILE.md         # also write the table to FILE.md (and FILE.json)

Target (issue 14): a DB-driven GC run on an unchanged registry of 100,000 manifests, against the full mark.

Distribution's layout is written directly on a filesystem root (`--repositories` x `--manifests` image manifests, each
with a config and a layer of its own, one layer shared by all, each manifest under one tag). `moorage database
import` then fills the database from it (timed: the import rate). Each GC is a real `moorage gc --json` process on
that root, side by side in one run:

- `moorage gc` (gc.mode auto: the database) on the unchanged registry, twice (the first one also reviews what
  the import queued, if anything);
- `moorage gc --full --dry-run`: the mark over storage (dry, so that both runs see the same registry);
- Distribution 2.8's `docker-registry garbage-collect --dry-run` on the same root (offline, a mark as well);
- after `moorage repo rm` of 1% of the repositories, `moorage gc` again: the cost of collecting what changed.

Each figure is the run's own duration as its report gives it (`seconds`), and the command's wall time (process start,
settings, opening and catching up the index).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_DIR))

from servers import clean_env, distribution_config  # noqa: E402

from tests.postgres_server import PostgresServer, postgres_bin_dir  # noqa: E402

MOORAGE = [sys.executable, "-m", "registry"]  # this checkout's code, whatever the venv has installed
ROOT = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
COMMAND_TIMEOUT = 3600.0


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


def generate(root: Path, repositories: int, manifests: int) -> list[str]:
    shared = b"shared-layer" * 100
    shared_digest = blob(root, shared)
    names = []
    for r in range(repositories):
        name = f"team-{r % 100:02d}/app-{r:05d}"
        names.append(name)
        repo = root / ROOT / "repositories" / name
        link(repo / "_layers", shared_digest)
        for m in range(manifests):
            config = json.dumps({"architecture": "amd64", "os": "linux", "n": [r, m]}).encode()
            layer = f"layer {r} {m}".encode() * 20
            config_digest, layer_digest = blob(root, config), blob(root, layer)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                    "layers": [
                        {"mediaType": OCI_LAYER, "digest": shared_digest, "size": len(shared)},
                        {"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)},
                    ],
                }
            ).encode()
            digest = blob(root, manifest)
            link(repo / "_layers", config_digest)
            link(repo / "_layers", layer_digest)
            link(repo / "_manifests" / "revisions", digest)
            tag = repo / "_manifests" / "tags" / f"v{m}"
            write(tag / "current" / "link", digest.encode())
            link(tag / "index", digest)
        if (r + 1) % 1000 == 0:
            log(f"generated {r + 1} repositories")
    return names


def moorage(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [*MOORAGE, *args], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=env["BENCH_CWD"]
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"moorage {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, result.stdout


def gc(env: dict[str, str], *args: str) -> dict[str, Any]:
    wall, out = moorage(env, "gc", "--json", *args)
    report = json.loads(out)
    return {
        "wall_s": round(wall, 2),
        "run_s": report["seconds"],
        "blobs_removed": len(report["blobs_removed"]),
        "manifests_removed": len(report["manifests_removed"]),
        "blobs_in_use": report["blobs_in_use"],
    }


def distribution_gc(binary: str, root: Path, cwd: Path) -> dict[str, Any]:
    import yaml

    config = cwd / "distribution.yml"
    config.write_text(yaml.safe_dump(distribution_config(root, 5999, health=False)))
    started = time.monotonic()
    result = subprocess.run(
        [binary, "garbage-collect", "--dry-run", str(config)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=clean_env(),
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"docker-registry garbage-collect failed:\n{result.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "run_s": round(wall, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--manifests", type=int, default=10, help="manifests (each under one tag) per repository")
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="moorage-gc-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        root = work / "data"
        started = time.monotonic()
        names = generate(root, args.repositories, args.manifests)
        total = args.repositories * args.manifests
        log(f"generated {total} manifests in {time.monotonic() - started:.0f} s")
        env = {
            **clean_env(),
            "BENCH_CWD": str(work),
            "PYTHONPATH": str(REPO_DIR),
            "MOORAGE_STORAGE__FILESYSTEM__ROOT": str(root),
            "MOORAGE_STORAGE__FILESYSTEM__FSYNC": "false",
            "MOORAGE_GC__GRACE": "0s",
            "MOORAGE_GC__SETTLE": "0s",
        }
        postgres: PostgresServer | None = None
        if args.engine == "postgresql":
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                raise SystemExit("bench: PostgreSQL's binaries are missing (apt-get install postgresql)")
            postgres = PostgresServer(bin_dir, work / "postgres.log")
            postgres.start()
            env["MOORAGE_DATABASE__URL"] = postgres.new_database()
        try:
            result: dict[str, Any] = {"manifests": total, "repositories": args.repositories, "engine": args.engine}
            wall, _ = moorage(env, "database", "import", "--quiet")
            result["import"] = {"wall_s": round(wall, 2), "manifests_per_s": round(total / wall)}
            log(f"imported in {wall:.1f} s")
            result["database_first"] = gc(env)
            result["database_unchanged"] = gc(env)
            log(f"database-driven, unchanged: {result['database_unchanged']}")
            result["full_mark"] = gc(env, "--full", "--dry-run")
            log(f"full mark (dry run): {result['full_mark']}")
            if Path(args.distribution_bin).exists():
                result["distribution_mark"] = distribution_gc(args.distribution_bin, root, work)
                log(f"Distribution's garbage-collect --dry-run: {result['distribution_mark']}")
            removed = names[:: max(1, len(names) // max(1, args.repositories // 100))][
                : max(1, args.repositories // 100)
            ]
            for name in removed:
                moorage(env, "repo", "rm", name)
            result["changed_repositories"] = len(removed)
            result["database_after_change"] = gc(env)
            log(f"database-driven after removing {len(removed)} repositories: {result['database_after_change']}")
            report(result, args.output)  # before the clean-up of 800,000 files, which takes minutes
        finally:
            if postgres is not None:
                postgres.stop()
    return 0


def report(result: dict[str, Any], output: Path | None) -> None:
    table = render(result)
    print(table, flush=True)
    if output is not None:
        output.write_text(table + "\n")
        output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


def render(result: dict[str, Any]) -> str:
    unchanged, full = result["database_unchanged"], result["full_mark"]
    rows = [
        ("database-driven, unchanged registry", unchanged),
        ("full mark over storage (--full --dry-run)", full),
    ]
    if "distribution_mark" in result:
        rows.append(("Distribution 2.8 garbage-collect --dry-run", result["distribution_mark"]))
    rows.append(
        (
            f"database-driven after `repo rm` of {result['changed_repositories']} repositories",
            result["database_after_change"],
        )
    )
    lines = [
        f"GC at {result['manifests']:,} manifests in {result['repositories']:,} repositories ({result['engine']}); "
        f"import {result['import']['wall_s']} s ({result['import']['manifests_per_s']:,} manifests/s)",
        "",
        "| run | run s | command wall s | blobs removed | manifests removed |",
        "|---|---|---|---|---|",
    ]
    for label, figures in rows:
        lines.append(
            f"| {label} | {figures['run_s']} | {figures['wall_s']} | {figures.get('blobs_removed', '-')} | "
            f"{figures.get('manifests_removed', '-')} |"
        )
    ratio = full["run_s"] / unchanged["run_s"] if unchanged["run_s"] else float("inf")
    lines += ["", f"full mark / database-driven (unchanged): {ratio:,.0f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
