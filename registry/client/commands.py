"""What each client subcommand does, over the typed API; `cli` parses the arguments and runs these."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from registry.client import credentials
from registry.client.api import RegistryClient
from registry.client.copy import copy_image
from registry.client.errors import ClientError
from registry.client.inspection import format_inspection, inspect_image
from registry.client.layouts import open_source
from registry.client.manifests import host_platform_spec, parse_platform
from registry.client.mirror import warm_image
from registry.client.progress import Reporter, make_reporter
from registry.client.pull import pull_image
from registry.client.push import push_image
from registry.client.reference import check_tag, parse_reference, parse_registry, parse_repository
from registry.client.terminal import printable, printable_lines


def _connect(args: argparse.Namespace, registry: str) -> RegistryClient:
    return RegistryClient.connect(registry, insecure=args.insecure, ca_file=args.ca_file, attempts=args.retries + 1)


def _reporter(args: argparse.Namespace) -> Reporter:
    return make_reporter(quiet=args.quiet, json_output=args.json_output)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _print_result(args: argparse.Namespace, result: dict[str, Any], text: str | list[str]) -> None:
    """`result` as JSON with --json, else `text`: one line, or a line per item (each kept to its line)."""
    if args.json_output:
        print(json.dumps(result))
    elif isinstance(text, str):
        print(printable(text))
    else:
        print(printable_lines(text))


async def cmd_push(args: argparse.Namespace) -> int:
    dest = parse_reference(args.ref)
    tags = [check_tag(t) for t in args.tag]
    source, source_tag = open_source(args.src)
    root = source.choose_root(source_tag or dest.tag)
    reporter = _reporter(args)
    try:
        async with _connect(args, dest.registry) as registry:
            digest = await push_image(
                source,
                root,
                dest,
                registry,
                reporter,
                extra_tags=tags,
                concurrency=args.concurrency,
                chunk_size=args.chunk_size,
                mount_from=args.mount_from,
            )
    finally:
        reporter.close()
    result = {"reference": str(dest), "digest": digest, "tags": [dest.tag or "latest", *tags]}
    _print_result(args, result, f"{dest.repository_name}@{digest}")
    return 0


async def cmd_pull(args: argparse.Namespace) -> int:
    ref = parse_reference(args.ref)
    platform = parse_platform(args.platform) if args.platform else None
    reporter = _reporter(args)
    try:
        async with _connect(args, ref.registry) as registry:
            top = await pull_image(
                ref, Path(args.dest), registry, reporter, platform=platform, fmt=args.format,
                concurrency=args.concurrency,
            )  # fmt: skip
    finally:
        reporter.close()
    result = {"reference": str(ref), "digest": top.digest, "mediaType": top.media_type, "dest": args.dest}
    _print_result(args, result, f"{ref.repository_name}@{top.digest} -> {args.dest}")
    return 0


async def cmd_cp(args: argparse.Namespace) -> int:
    src, dst = parse_reference(args.src), parse_reference(args.dst)
    reporter = _reporter(args)
    try:
        async with _connect(args, src.registry) as src_registry:
            if dst.registry == src.registry:
                digest = await copy_image(
                    src,
                    dst,
                    src_registry,
                    src_registry,
                    reporter,
                    concurrency=args.concurrency,
                    chunk_size=args.chunk_size,
                )
            else:
                async with _connect(args, dst.registry) as dst_registry:
                    digest = await copy_image(
                        src,
                        dst,
                        src_registry,
                        dst_registry,
                        reporter,
                        concurrency=args.concurrency,
                        chunk_size=args.chunk_size,
                    )
    finally:
        reporter.close()
    _print_result(
        args, {"source": str(src), "reference": str(dst), "digest": digest}, f"{dst.repository_name}@{digest}"
    )
    return 0


async def cmd_mirror(args: argparse.Namespace) -> int:
    refs = list(args.refs)
    if args.file:
        try:
            lines = (await asyncio.to_thread(Path(args.file).read_text)).splitlines()
        except OSError as e:
            raise ClientError(f"{args.file}: {e.strerror or e}") from e
        refs += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not refs:
        raise ClientError("nothing to mirror: give references, or --file")
    platform = None if args.all else parse_platform(args.platform) if args.platform else host_platform_spec()
    results: list[dict[str, Any]] = []
    reporter = _reporter(args)
    try:
        for text in refs:
            ref = parse_reference(text)
            async with _connect(args, ref.registry) as source:
                if args.to:
                    suffix = f"@{ref.digest}" if ref.digest and not ref.tag else f":{ref.tag or 'latest'}"
                    dst = parse_reference(f"{args.to.rstrip('/')}/{ref.repository}{suffix}")
                    async with _connect(args, dst.registry) as destination:
                        digest = await copy_image(ref, dst, source, destination, reporter, concurrency=args.concurrency)
                    results.append({"reference": str(ref), "digest": digest, "copied_to": str(dst)})
                    continue
                top, size = await warm_image(ref, source, reporter, platform=platform, concurrency=args.concurrency)
                results.append({"reference": str(ref), "digest": top.digest, "bytes": size})
    finally:
        reporter.close()
    if args.json_output:
        print(json.dumps(results))
    else:
        for result in results:
            where = f" -> {result['copied_to']}" if "copied_to" in result else ""
            print(printable(f"{result['reference']} {result['digest']}{where}"))
    return 0


async def cmd_tag(args: argparse.Namespace) -> int:
    ref = parse_reference(args.ref)
    new = ref.with_tag(args.new_tag)
    async with _connect(args, ref.registry) as registry:
        registry.allow(ref.repository, "pull,push")
        manifest = await registry.get_manifest(ref.repository, ref.reference)
        digest = await registry.put_manifest(ref.repository, args.new_tag, manifest)
    _print_result(args, {"reference": str(new), "digest": digest}, f"{new}@{digest}")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    ref = parse_reference(args.ref)
    async with _connect(args, ref.registry) as registry:
        registry.allow(ref.repository, "pull,push,delete")
        digest = await registry.manifest_digest(ref.repository, ref.reference)
        await registry.delete_manifest(ref.repository, digest)
    _print_result(
        args, {"reference": str(ref), "digest": digest, "deleted": True}, f"deleted {ref.repository_name}@{digest}"
    )
    return 0


async def cmd_inspect(args: argparse.Namespace) -> int:
    ref = parse_reference(args.ref)
    async with _connect(args, ref.registry) as registry:
        info = await inspect_image(registry, ref)
    if args.json_output:
        _print_json(info)
    else:
        print(printable_lines(format_inspection(info)))
    return 0


async def cmd_tags(args: argparse.Namespace) -> int:
    repo = parse_repository(args.repo)
    async with _connect(args, repo.registry) as registry:
        registry.allow(repo.repository, "pull")
        tags = await registry.tags(repo.repository)
    _print_result(args, {"name": repo.repository, "tags": tags}, tags)
    return 0


async def cmd_catalog(args: argparse.Namespace) -> int:
    host = parse_registry(args.registry)
    async with _connect(args, host) as registry:
        registry.transport.add_scope("registry:catalog:*")
        repositories = await registry.catalog()
    _print_result(args, {"repositories": repositories}, repositories)
    return 0


async def cmd_search(args: argparse.Namespace) -> int:
    host = parse_registry(args.registry)
    async with _connect(args, host) as registry:
        results = await registry.search(args.term, args.limit)
    lines = [f"{r['name']}\t{r.get('description') or ''}".rstrip() for r in results]
    _print_result(args, {"query": args.term, "results": results}, lines)
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if args.password:
        return str(args.password)
    if not sys.stdin.isatty():
        raise ClientError("no password: use --password-stdin (or -p) when stdin is not a terminal")
    return getpass.getpass("Password: ")


async def cmd_login(args: argparse.Namespace) -> int:
    host = parse_registry(args.registry)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise ClientError("no username: use -u/--username")
        username = (await asyncio.to_thread(input, "Username: ")).strip()
    creds = credentials.Credentials(username, _read_password(args))
    if not creds.password:
        raise ClientError("empty password")
    async with RegistryClient.connect(
        host, credentials=creds, insecure=args.insecure, ca_file=args.ca_file, attempts=args.retries + 1
    ) as registry:
        await registry.ping()
    where = credentials.store(host, creds)
    print(f"Login succeeded: credentials for {host} saved in {where}", file=sys.stderr)
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    host = parse_registry(args.registry)
    if credentials.erase(host):
        print(f"Removed login credentials for {host}", file=sys.stderr)
    else:
        print(f"Not logged in to {host}", file=sys.stderr)
    return 0
