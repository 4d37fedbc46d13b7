"""Benchmark of the metadata index in PostgreSQL vs SQLite at 100,000 repositories x 10 tags.

    .venv/bin/python bench/database.py                        # 100,000 repositories (~12 min)
    .venv/bin/python bench/database.py --repositories 2000    # smoke run (~15 s)
    .venv/bin/python bench/database.py --output FILE.md       # also write the table to FILE.md (and FILE.json)

Targets (the issue): catalog page p99 < 20 ms, search p99 < 50 ms, manifest PUT p50 unchanged against SQLite.

For each engine (a throwaway PostgreSQL from tests/postgres_server.py, then an SQLite file) the index is filled
directly, not through HTTP: `Database` creates the schema, then every table gets its rows in batches of 1,000
repositories per transaction (teams x a few hundred service words, 3 image manifests per repository with labels and a
platform each, 10 tags over them, blobs with consistent reference counts and listing counters). `moorage serve` then
starts on an empty filesystem root whose `moorage/index-epoch` holds the epoch written into the index's meta, with a
current position, so it trusts the filled index instead of rebuilding it (checked: `/readyz` 200, `/v2/_catalog`
lists filled names, no "building the metadata index" in its log). Requests go one at a time over one keep-alive
httpx connection: 10 warm-up then `--samples` timed per query; then manifest PUTs of small distinct manifests into one
new repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_DIR))

from servers import Server, start_moorage, wait_moorage_ready  # noqa: E402

from registry import paths  # noqa: E402
from registry.index.changes import position_at  # noqa: E402
from registry.index.database import Database  # noqa: E402
from tests.postgres_server import PostgresServer, postgres_bin_dir  # noqa: E402

MOORAGE = str(REPO_DIR / ".venv" / "bin" / "moorage")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DESCRIPTION = "org.opencontainers.image.description"
VERSION = "org.opencontainers.image.version"
BATCH_REPOSITORIES = 1000
PG_ROWS_PER_STATEMENT = 500
WARMUP = 10
PACED_PUT_SECONDS = 0.05  # long enough for the index write of the previous PUT to finish, on either engine
TAGS_PER_REPOSITORY = 10
MANIFESTS_PER_REPOSITORY = 3
BASE_LAYERS = 50
PLATFORMS = ("linux/amd64", "linux/arm64", "linux/amd64", "linux/arm/v7")
TEAMS = (
    "payments",
    "billing",
    "search",
    "ads",
    "identity",
    "platform",
    "data",
    "ml",
    "infra",
    "security",
    "mobile",
    "web",
    "checkout",
    "catalog",
    "inventory",
    "shipping",
    "fraud",
    "growth",
    "analytics",
    "messaging",
    "media",
    "maps",
    "pricing",
    "support",
    "notifications",
    "ledger",
    "risk",
    "content",
    "devtools",
    "observability",
    "storage",
    "network",
    "compute",
    "edge",
    "partner",
    "loyalty",
    "orders",
    "reviews",
    "recommendations",
)
_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_NUCLEI = ("a", "e", "i", "o", "u")
_CODAS = ("r", "n", "x", "l")
# A few hundred pronounceable service words ("baran", "kelix", ...): 15 x 5 x 4 = 300.
WORDS = tuple(
    f"{o}{n}{o2}{n}{c}"
    for o, o2 in zip(_ONSETS, _ONSETS[3:] + _ONSETS[:3], strict=True)
    for n in _NUCLEI
    for c in _CODAS
)
PG_TARGETS = {"catalog": 20.0, "search": 50.0}
SQL_INSERT = {
    "repositories": "name, description, pushed_at, pulls, tag_count, size, logical",
    "manifests": "repository, digest, media_type, artifact_type, size, platforms, created, labels, pushed_at, "
    "blobs, manifest_bytes",
    "tags": "repository, tag, digest, pushed_at, pulls",
    "labels": "repository, digest, key, value",
    "platforms": "repository, digest, platform",
    "blobs": "repository, digest, blob, size",
    "repository_blobs": "repository, blob, size, refs",
    "blob_refs": "blob, size, repositories",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def repository_name(i: int) -> str:
    return f"{TEAMS[i % len(TEAMS)]}/{WORDS[(i * 7919) % len(WORDS)]}-{i:05d}"


BASE = [(sha(f"base-layer-{b}"), 20_000_000 + b * 100_000) for b in range(BASE_LAYERS)]


def repository_rows(i: int, now: float, rng: random.Random) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of repository `i` but its shared base layer's `blob_refs` row (counted over all of them)."""
    name = repository_name(i)
    team = TEAMS[i % len(TEAMS)]
    word = WORDS[(i * 7919) % len(WORDS)]
    rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in SQL_INSERT}
    base, base_size = BASE[i % BASE_LAYERS]
    started = now - 365 * 86400 + (i * 311) % (360 * 86400)
    major = i % 5 + 1
    description = f"the {word} service of the {team} team"
    digests = []
    size_total = 0
    logical = base_size
    repo_blobs: list[tuple[Any, ...]] = [(name, base, base_size, MANIFESTS_PER_REPOSITORY)]
    for m in range(MANIFESTS_PER_REPOSITORY):
        digest = sha(f"{name}#{m}")
        digests.append(digest)
        config, config_size = sha(f"{name}#{m}#config"), 1200 + (i + m) % 700
        own, own_size = sha(f"{name}#{m}#layer"), 1_000_000 + (i * 13 + m) % 4_000_000
        manifest_bytes = 700 + m
        blobs = [(config, config_size), (base, base_size), (own, own_size)]
        size = manifest_bytes + sum(s for _, s in blobs)
        size_total += size
        platform = PLATFORMS[(i + m) % len(PLATFORMS)]
        pushed_at = started + m * 3600
        labels = {DESCRIPTION: description, "team": team, VERSION: f"{major}.{m * 3}"}
        rows["manifests"].append(
            (
                name,
                digest,
                OCI_MANIFEST,
                None,
                size,
                json.dumps([platform]),
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pushed_at)),
                json.dumps(labels),
                pushed_at,
                json.dumps(blobs),
                manifest_bytes,
            )
        )
        rows["labels"] += [(name, digest, k, v) for k, v in labels.items()]
        rows["platforms"].append((name, digest, platform))
        references = [(digest, manifest_bytes), *blobs]
        rows["blobs"] += [(name, digest, blob, s) for blob, s in references]
        for blob, s in (references[0], references[1], references[3]):
            repo_blobs.append((name, blob, s, 1))
            rows["blob_refs"].append((blob, s, 1))
            logical += s
    rows["repository_blobs"] = repo_blobs
    tags = [("latest", MANIFESTS_PER_REPOSITORY - 1)] + [(f"v{major}.{k}", k * 3 // 9) for k in range(9)]
    pushed = 0.0
    for k, (tag, m) in enumerate(tags):
        at = started + m * 3600 + k
        pushed = max(pushed, at)
        rows["tags"].append((name, tag, digests[m], at, rng.randrange(50)))
    rows["repositories"].append((name, description, pushed, rng.randrange(5000), len(tags), size_total, logical))
    return rows


def insert(db: Any, dialect: str, table: str, rows: list[tuple[Any, ...]]) -> None:
    """SQLite: executemany of one-row INSERTs; PostgreSQL: executemany of INSERTs of 500 rows each (one round trip
    per statement in psycopg's pipeline, instead of one per row)."""
    if not rows:
        return
    columns = SQL_INSERT[table]
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    if dialect == "sqlite":
        db.executemany(f"INSERT INTO {table} ({columns}) VALUES {one}", rows)
        return
    per = PG_ROWS_PER_STATEMENT
    full = len(rows) // per * per
    if full:
        sql = f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([one] * per)
        db.executemany(sql, [sum(rows[s : s + per], ()) for s in range(0, full, per)])
    if full < len(rows):
        rest = rows[full:]
        db.execute(f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([one] * len(rest)), sum(rest, ()))


def fill(database: Database, repositories: int, epoch: str, url: str | None = None) -> dict[str, Any]:
    """Write `repositories` repositories into the (empty) index; returns row counts and seconds."""
    rng = random.Random(13)
    now = time.time()
    counts = dict.fromkeys(SQL_INSERT, 0)
    base_users = [0] * BASE_LAYERS
    started = time.perf_counter()
    for start in range(0, repositories, BATCH_REPOSITORIES):
        batch: dict[str, list[tuple[Any, ...]]] = {table: [] for table in SQL_INSERT}
        for i in range(start, min(repositories, start + BATCH_REPOSITORIES)):
            base_users[i % BASE_LAYERS] += 1
            for table, rows in repository_rows(i, now, rng).items():
                batch[table] += rows
        with database.engine.transaction() as db:
            for table, rows in batch.items():
                insert(db, database.dialect, table, rows)
                counts[table] += len(rows)
        if (start // BATCH_REPOSITORIES) % 20 == 19:
            log(f"  {start + BATCH_REPOSITORIES:,} repositories, {time.perf_counter() - started:.0f}s")
    shared = [(blob, size, n) for (blob, size), n in zip(BASE, base_users, strict=True) if n]
    with database.engine.transaction() as db:
        insert(db, database.dialect, "blob_refs", shared)
    counts["blob_refs"] += len(shared)
    database.set_meta({"epoch": epoch, "position": position_at(time.time())})
    insert_seconds = time.perf_counter() - started
    analyzed = time.perf_counter()
    if url is not None:
        # What autovacuum does on its own within minutes of such inserts (statistics, visibility map), done now so
        # that it does not run beside the measurements (it took a core for minutes after the fill).
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")
    return {
        "rows": counts,
        "rows_total": sum(counts.values()),
        "insert_seconds": round(insert_seconds, 1),
        "analyze_seconds": round(time.perf_counter() - analyzed, 1),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, Any]:
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def timed_gets(client: httpx.Client, urls: list[str], check: Callable[[httpx.Response], None]) -> dict[str, Any]:
    for url in urls[:WARMUP]:
        check(client.get(url))
    ms = []
    for url in urls[WARMUP:]:
        started = time.perf_counter()
        response = client.get(url)
        response.read()
        ms.append((time.perf_counter() - started) * 1000)
        check(response)
    return summary(ms)


def ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:300]}")


def queries(repositories: int) -> list[tuple[str, str, str, Callable[[int], str]]]:
    """(name, kind, what, url of sample k): kind is the target it is held to."""
    names = sorted(repository_name(i) for i in range(repositories))
    rng = random.Random(7)
    lasts = [rng.choice(names) for _ in range(10_000)]
    word = WORDS[len(WORDS) // 3]
    team = TEAMS[5]

    def search(q: str) -> Callable[[int], str]:
        return lambda _: f"/api/v1/search?q={quote(q, safe='')}&n=25"

    return [
        ("catalog page", "catalog", "`/v2/_catalog?n=100&last=<random name>`",
         lambda k: f"/v2/_catalog?n=100&last={quote(lasts[k % len(lasts)], safe='')}"),
        (f"search '{word}'", "search", f"`/api/v1/search?q={word}&n=25`", search(word)),
        ("search 'platform:linux/arm64'", "search", "`q=platform:linux/arm64`", search("platform:linux/arm64")),
        (f"search 'label:team={team}'", "search", f"`q=label:team={team}`", search(f"label:team={team}")),
        ("search 'tag:v1.*'", "search", "`q=tag:v1.*`", search("tag:v1.*")),
        ("search 'zzqx' (no match)", "search", "`q=zzqx`", search("zzqx")),
        ("UI list by last push", "", "`/ui/?sort=pushed`", lambda _: "/ui/?sort=pushed"),
    ]  # fmt: skip


CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = b"bench layer " * 100
PUT_REPOSITORY = "bench/puts"


def small_manifest(serial: str) -> bytes:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha_bytes(CONFIG), "size": len(CONFIG)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha_bytes(LAYER), "size": len(LAYER)}],
        "annotations": {"serial": serial},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sha_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_puts(client: httpx.Client, samples: int, pause: float = 0.0, prefix: str = "put") -> dict[str, Any]:
    """Back to back (`pause` 0: each PUT overlaps the previous one's index write, which runs after the answer, off
    the request path), or `pause` seconds apart (the request path alone)."""
    for data in (CONFIG, LAYER):
        response = client.post(f"/v2/{PUT_REPOSITORY}/blobs/uploads/?digest={sha_bytes(data)}", content=data)
        if response.status_code != 201:
            raise RuntimeError(f"blob upload: {response.status_code} {response.text[:200]}")
    ms = []
    for k in range(WARMUP + samples):
        tag = f"{prefix}-{k}"
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        response = client.put(
            f"/v2/{PUT_REPOSITORY}/manifests/{tag}", content=small_manifest(tag), headers={"Content-Type": OCI_MANIFEST}
        )
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 201:
            raise RuntimeError(f"PUT {tag}: {response.status_code} {response.text[:200]}")
        if k >= WARMUP:
            ms.append(elapsed)
    # The index has them all (a server's queries wait for its own writes).
    listed = client.get(f"/api/v1/search?q={PUT_REPOSITORY.split('/')[1]}&n=1")
    ok(listed)
    return summary(ms)


def machine_load() -> dict[str, Any]:
    top = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[:6]
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "top": [" ".join(line.split())[:140] for line in top]}


def serve_and_measure(
    engine: str, env: dict[str, str], work: Path, epoch: str, repositories: int, samples: int, puts: int
) -> dict[str, Any]:
    root = work / f"root-{engine}"
    (root / paths.INDEX_EPOCH).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.INDEX_EPOCH).write_text(epoch)
    server: Server = start_moorage(MOORAGE, root, work, None, env=env)
    result: dict[str, Any] = {}
    try:
        result["ready_seconds"] = round(wait_moorage_ready(server, timeout=120.0), 2)
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            first = client.get("/v2/_catalog?n=10")
            ok(first)
            listed = first.json()["repositories"]
            expected = sorted(repository_name(i) for i in range(repositories))[:10]
            if listed != expected:
                raise RuntimeError(f"{engine}: the catalog lists {listed}, not the filled {expected}")
            log_text = server.log_path.read_text(errors="replace")
            if "building the metadata index" in log_text:
                raise RuntimeError(f"{engine}: the server rebuilt the index instead of trusting it")
            result["load_before"] = machine_load()
            result["queries"] = {}
            for name, _, _, url in queries(repositories):
                result["queries"][name] = timed_gets(client, [url(k) for k in range(WARMUP + samples)], ok)
                log(f"  {engine} {name}: {result['queries'][name]}")
            result["manifest_put"] = manifest_puts(client, puts)
            log(f"  {engine} manifest PUT: {result['manifest_put']}")
            result["manifest_put_paced"] = manifest_puts(client, puts, PACED_PUT_SECONDS, "paced")
            log(f"  {engine} manifest PUT, {PACED_PUT_SECONDS * 1000:g} ms apart: {result['manifest_put_paced']}")
            result["load_after"] = machine_load()
        log_text = server.log_path.read_text(errors="replace")
        result["log_error_lines"] = sum(1 for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line)
        result["rebuilt"] = "building the metadata index" in log_text
    finally:
        server.stop()
    return result


def run_engine(engine: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    epoch = uuid.uuid4().hex
    postgres: PostgresServer | None = None
    try:
        if engine == "postgresql":
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
            postgres = PostgresServer(bin_dir, work / "postgres.log")
            postgres.start()
            url = postgres.new_database()
            database = Database.connect(url)
            env = {"MOORAGE_DATABASE__URL": url}
        else:
            path = work / "index.sqlite"
            database = Database.open(path)
            env = {"MOORAGE_INDEX__PATH": str(path)}
        log(f"{engine}: filling {args.repositories:,} repositories")
        try:
            result = {"fill": fill(database, args.repositories, epoch, url if engine == "postgresql" else None)}
        finally:
            database.close()
        if engine == "sqlite":
            result["fill"]["file_mb"] = round(sum(p.stat().st_size for p in work.glob("index.sqlite*")) / 1e6, 1)
        log(f"{engine}: filled {result['fill']}")
        result.update(serve_and_measure(engine, env, work, epoch, args.repositories, args.samples, args.puts))
        return result
    finally:
        if postgres is not None:
            postgres.stop()


def target(kind: str, p99: float) -> str:
    limit = PG_TARGETS.get(kind)
    if limit is None:
        return "-"
    return f"< {limit:g} ms: {'yes' if p99 < limit else '**no**'}"


def table(result: dict[str, Any]) -> str:
    engines = result["engines"]
    pg, lite = engines.get("postgresql"), engines.get("sqlite")
    lines = [
        f"{result['repositories']:,} repositories x {TAGS_PER_REPOSITORY} tags; "
        f"{result['samples']} samples per query after {WARMUP} warm-up, one at a time on a keep-alive connection",
        "",
        "| query | request | PostgreSQL p50 ms | PostgreSQL p99 ms | SQLite p50 ms | SQLite p99 ms | p99 target "
        "(PostgreSQL / SQLite) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, kind, what, _ in queries(result["repositories"]):
        cells = []
        verdicts = []
        for engine in (pg, lite):
            stats = engine["queries"][name] if engine else None
            cells += [f"{stats['p50_ms']:.1f}", f"{stats['p99_ms']:.1f}"] if stats else ["-", "-"]
            verdicts.append(target(kind, stats["p99_ms"]) if stats else "-")
        verdict = verdicts[0] if kind == "" else f"{verdicts[0]} / {verdicts[1].split(': ')[-1]}"
        lines.append(f"| {name} | {what} | {' | '.join(cells)} | {verdict} |")
    if pg and lite:
        a, b = pg["manifest_put"], lite["manifest_put"]
        ratio = a["p50_ms"] / b["p50_ms"]
        lines.append(
            f"| manifest PUT ({a['samples']}), back to back | `PUT /v2/{PUT_REPOSITORY}/manifests/<tag>` | "
            f"{a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | p50 ratio "
            f"PostgreSQL/SQLite {ratio:.2f} |"
        )
        if "manifest_put_paced" in pg and "manifest_put_paced" in lite:
            a, b = pg["manifest_put_paced"], lite["manifest_put_paced"]
            lines.append(
                f"| manifest PUT ({a['samples']}), {PACED_PUT_SECONDS * 1000:g} ms apart | same | "
                f"{a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | p50 ratio "
                f"PostgreSQL/SQLite {a['p50_ms'] / b['p50_ms']:.2f} |"
            )
    lines.append("")
    for label, engine in (("PostgreSQL", pg), ("SQLite", lite)):
        if engine is None:
            continue
        f = engine["fill"]
        extra = f", {f['file_mb']} MB file" if "file_mb" in f else f", VACUUM ANALYZE {f['analyze_seconds']} s"
        lines.append(
            f"- {label}: filled {f['rows_total']:,} rows in {f['insert_seconds']} s{extra}; server ready "
            f"(`/readyz` 200, no rebuild) after {engine['ready_seconds']} s; load average "
            f"{engine['load_before']['loadavg']} before, {engine['load_after']['loadavg']} after; "
            f"{engine['log_error_lines']} error lines in the server log"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200, help="timed requests per query (after 10 warm-up)")
    parser.add_argument("--puts", type=int, default=200, help="timed manifest PUTs (after 10 warm-up)")
    parser.add_argument("--engines", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite")
    parser.add_argument("--work-dir", type=Path, help="parent of the scratch directory (default: the system's)")
    parser.add_argument("--output", type=Path, help="also write the table to this file (and the JSON next to it)")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {
        "repositories": args.repositories,
        "samples": args.samples,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "load_at_start": machine_load(),
        "engines": {},
    }
    with tempfile.TemporaryDirectory(prefix="moorage-db-bench-", dir=args.work_dir) as scratch:
        for engine in args.engines.split(","):
            work = Path(scratch) / engine
            work.mkdir()
            result["engines"][engine] = run_engine(engine, work, args)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    text = table(result)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
