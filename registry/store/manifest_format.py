"""Parsing manifests: OCI image manifest and index, Docker schema 2 manifest and list.

One walk, two readers:
- `parse_manifest` is strict. A manifest PUT goes through it before anything is stored, and it refuses
  (MANIFEST_INVALID) whatever the specs let a registry refuse: text that is not UTF-8 JSON (RFC 8259 §8.1) or holds
  unpaired UTF-16 surrogates (RFC 8259 §8.2, I-JSON RFC 7493 §2.1), nesting deeper than MAX_DEPTH, descriptors
  whose size is not an int64 or whose media type is not an RFC 6838 name (image-spec descriptor.md), and shapes
  the declared media type does not have.
- `read_stored_manifest` is lenient, for what storage already holds (accepted under older rules, or written by
  another registry or by hand): it never raises, drops the parts it cannot use, and lists them in `problems`.

And GC's reading, `references_of`: every digest a manifest may reference (Docker schema 1 included), counted
however malformed the descriptor around it, since a blob overlooked there could be collected while still needed.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from registry import media_types
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError

GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})
MAX_DEPTH = 128
"""Real manifests nest 5 levels (index > manifests > descriptor > platform > os.features); Python's JSON decoder
recurses once per level and fails somewhere near 1000, so the bound is checked before it runs."""
INT64_MAX = 2**63 - 1
_SHOWN_CHARACTERS = 80
# RFC 6838 §4.2 restricted-name, for type and subtype.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_OPENING = b"\x01"
_BRACKET_STEPS = bytes.maketrans(b"[{]}", _OPENING * 2 + b"\xff\xff")  # +1, -1 as signed bytes
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_PLATFORM_STRINGS = ("architecture", "os", "os.version", "variant")
_PLATFORM_LISTS = ("os.features", "features")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    has_media_type_field: bool
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def is_index(self) -> bool:
        return self.media_type in media_types.INDEXES

    def referrer_artifact_type(self) -> str | None:
        """What the referrers API reports: artifactType, else the config's media type (never for an index)."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config else None


def invalid(reason: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, detail={"reason": reason})


def parse_manifest(data: bytes, content_type: str = "") -> ParsedManifest:
    """The manifest a client PUT, checked in full; raises MANIFEST_INVALID."""
    body = decode_json(data)
    if not isinstance(body, dict):
        raise invalid("a manifest must be a JSON object")
    schema_version = body.get("schemaVersion")
    if not isinstance(schema_version, int) or isinstance(schema_version, bool) or schema_version != 2:
        raise invalid("schemaVersion must be 2")
    return _Walk(strict=True).manifest(body, _media_type(body, content_type))


def read_stored_manifest(data: bytes, media_type: str = "", problems: list[str] | None = None) -> ParsedManifest | None:
    """A manifest storage holds, as far as it can be read; None for what is no image manifest or index (Docker
    schema 1, other types, not JSON). Never raises. What was dropped, and why, is appended to `problems`."""
    walk = _Walk(strict=False)
    body = decode_stored_json(data, walk.problems)
    parsed = None
    if isinstance(body, dict):
        declared = body.get("mediaType")
        chosen = declared if isinstance(declared, str) and declared else media_type
        if not chosen and body.get("schemaVersion") == 2:
            chosen = media_types.OCI_INDEX if "manifests" in body else media_types.OCI_MANIFEST
        # Anything else was accepted once under other rules (schema 1, withdrawn artifact manifests): no problem.
        if body.get("schemaVersion") == 2 and chosen in media_types.MANIFEST_TYPES:
            parsed = walk.manifest(body, chosen)
    elif body is not None:
        walk.problems.append("not a JSON object")
    if problems is not None:
        problems += walk.problems
    return parsed


def decode_json(data: bytes) -> Any:
    """JSON a client sent: UTF-8 without a byte order mark, at most MAX_DEPTH deep, standard numbers only, no
    unpaired surrogates. Raises MANIFEST_INVALID."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"not UTF-8: invalid byte at offset {e.start}") from None
    if _nests_deeper_than(data, MAX_DEPTH):
        raise invalid(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # not reachable within MAX_DEPTH; kept so that no input can make it a 500
        raise invalid(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, and integers beyond Python's digit limit
        raise invalid(f"not valid JSON: {_shown(str(e))}") from None
    # Strict UTF-8 let no raw surrogate through: only an escape can make one.
    where = _surrogate_in(body) if _SURROGATE_ESCAPE.search(data) else None
    if where is not None:
        raise invalid(f"unpaired UTF-16 surrogate in a JSON string: {where}")
    return body


def decode_stored_json(data: bytes, problems: list[str] | None = None) -> Any:
    """JSON from storage, read as far as it can be: bytes that are not UTF-8 and unpaired surrogates become
    U+FFFD. None (and a problem) when it is no JSON at all, or too deep for the decoder. Never raises."""
    try:
        try:
            body = json.loads(data)
        except UnicodeDecodeError:
            _note(problems, "not UTF-8: invalid bytes replaced by U+FFFD")
            body = json.loads(data.decode("utf-8", "replace"))
    except RecursionError:
        _note(problems, "JSON nested too deep to read")
        return None
    except ValueError as e:
        _note(problems, f"not valid JSON: {_shown(str(e))}")
        return None
    if _surrogate_in(body) is not None:
        _note(problems, "unpaired UTF-16 surrogates replaced by U+FFFD")
        body = _replace_surrogates(body)
    return body


def is_media_type(value: object) -> bool:
    return isinstance(value, str) and _MEDIA_TYPE.fullmatch(value) is not None


class _Walk:
    """One pass over a decoded manifest. Strict, every problem raises; lenient, it is noted, and the part that has
    it is kept when still usable (a media type of odd spelling) and dropped when not (a size that is no integer)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: list[str] = []

    def problem(self, reason: str) -> None:
        if self.strict:
            raise invalid(reason)
        self.problems.append(reason)

    def manifest(self, body: dict[str, Any], media_type: str) -> ParsedManifest:
        artifact_type = body.get("artifactType")
        if artifact_type is not None and not is_media_type(artifact_type):
            self.problem(f"artifactType: must be a media type, not {_shown(artifact_type)}")
            if not isinstance(artifact_type, str):
                artifact_type = None
        annotations = self.string_map(body.get("annotations"), "annotations")
        subject = self.descriptor(body["subject"], "subject") if body.get("subject") is not None else None
        config: Descriptor | None = None
        layers: tuple[Descriptor, ...] = ()
        children: tuple[Descriptor, ...] = ()
        if media_type in media_types.INDEXES:
            if "config" in body or "layers" in body:
                self.problem("an index has manifests, not config or layers")
            children = self.descriptors(body, "manifests", required=True)
        else:
            if "manifests" in body:
                self.problem("an image manifest has config and layers, not manifests")
            config = self.descriptor(body.get("config"), "config")
            layers = self.descriptors(body, "layers", required=media_type == media_types.DOCKER_MANIFEST)
        return ParsedManifest(
            media_type=media_type,
            has_media_type_field=isinstance(body.get("mediaType"), str),
            config=config,
            layers=layers,
            children=children,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    def descriptors(self, body: dict[str, Any], key: str, required: bool) -> tuple[Descriptor, ...]:
        value = body.get(key)
        if value is None:
            if required:
                self.problem(f"{key}: required list")
            return ()
        if not isinstance(value, list):
            self.problem(f"{key}: must be a list")
            return ()
        found = (self.descriptor(item, f"{key}[{i}]", child=key == "manifests") for i, item in enumerate(value))
        return tuple(d for d in found if d is not None)

    def descriptor(self, value: Any, where: str, child: bool = False) -> Descriptor | None:
        if not isinstance(value, dict):
            self.problem(f"{where}: a descriptor must be an object")
            return None
        media_type = value.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            self.problem(f"{where}.mediaType: required media type, not {_shown(media_type)}")
            return None
        if not is_media_type(media_type):
            self.problem(f"{where}.mediaType: must be a media type (RFC 6838), not {_shown(media_type)}")
        raw_digest = value.get("digest")
        try:
            digest = Digest.parse(raw_digest) if isinstance(raw_digest, str) else None
        except RegistryError:
            digest = None
        if digest is None:
            self.problem(f"{where}.digest: required digest, not {_shown(raw_digest)}")
            return None
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            self.problem(f"{where}.size: required integer, not {_shown(size)}")
            return None
        if not 0 <= size <= INT64_MAX:
            self.problem(f"{where}.size: must be within 0..{INT64_MAX}")
            size = min(max(size, 0), INT64_MAX)
        urls = value.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            self.problem(f"{where}.urls: must be a list of strings")
            urls = []
        if value.get("annotations") is not None:
            self.string_map(value["annotations"], f"{where}.annotations")
        artifact_type = value.get("artifactType")
        if artifact_type is not None and not is_media_type(artifact_type):
            self.problem(f"{where}.artifactType: must be a media type, not {_shown(artifact_type)}")
        if child and value.get("platform") is not None:
            self.platform(value["platform"], f"{where}.platform")
        return Descriptor(media_type, digest, size, tuple(urls), value)

    def platform(self, value: Any, where: str) -> None:
        """Types only: Docker and old tools leave fields out (who reads a platform checks what it needs)."""
        if not isinstance(value, dict):
            self.problem(f"{where}: must be an object")
            return
        for key in _PLATFORM_STRINGS:
            if value.get(key) is not None and not isinstance(value[key], str):
                self.problem(f"{where}.{key}: must be a string")
        for key in _PLATFORM_LISTS:
            items = value.get(key)
            if items is not None and not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
                self.problem(f"{where}.{key}: must be a list of strings")

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(f"{where}: must map strings to strings")
            return {}
        strings = {k: v for k, v in value.items() if isinstance(v, str)}
        if len(strings) != len(value):
            self.problem(f"{where}: must map strings to strings")
        return strings


def _media_type(body: dict[str, Any], content_type: str) -> str:
    field_value = body.get("mediaType")
    if field_value is not None and not isinstance(field_value, str):
        raise invalid("mediaType: must be a string")
    header = media_types.strip_parameters(content_type)
    if header in GENERIC_CONTENT_TYPES:
        header = ""
    if field_value and header and field_value != header:
        raise invalid(f"mediaType {_shown(field_value)} does not match Content-Type {_shown(header)}")
    chosen = field_value or header or (media_types.OCI_INDEX if "manifests" in body else media_types.OCI_MANIFEST)
    if chosen in (media_types.DOCKER_SCHEMA1, media_types.DOCKER_SCHEMA1_SIGNED):
        raise invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if chosen not in media_types.MANIFEST_TYPES:
        raise invalid(f"unsupported manifest media type {_shown(chosen)}")
    return chosen


def _nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the brackets of JSON text nest deeper than `limit`, found at C speed with neither recursion nor a
    loop in Python: escapes and strings are cut out, every bracket becomes +1 or -1, and the running sum peaks at
    the depth. A 4 MiB worst case costs about 0.1 s; a manifest with fewer brackets than `limit`, nothing."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b"\\" in data:
        # Left to right, `\\` pairs are exactly the escaped backslashes; what is left before a quote escapes it.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if b'"' in data:
        data = b"".join(data.split(b'"')[::2])  # outside strings
    steps = data.translate(_BRACKET_STEPS, _NOT_BRACKETS)
    if _OPENING * (limit + 1) in steps:
        return True
    return max(itertools.accumulate(memoryview(steps).cast("b")), default=0) > limit


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, list):
        return value
    return []


def _surrogate_in(body: Any) -> str | None:
    """The first string (object keys included) holding an unpaired surrogate, shown escaped; None when none does."""
    pending = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return _shown(value)
        else:
            pending += _children(value)
    return None


def _replace_surrogates(body: Any) -> Any:
    """`body` with U+FFFD for every unpaired surrogate, containers changed in place (without recursion)."""
    if isinstance(body, str):
        return _SURROGATE.sub("\ufffd", body)
    pending = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    value[i] = _SURROGATE.sub("\ufffd", item)
                else:
                    pending.append(item)
        elif isinstance(value, dict):
            for key in list(value):
                item = value.pop(key) if _SURROGATE.search(key) else value[key]
                value[_SURROGATE.sub("\ufffd", key)] = _SURROGATE.sub("\ufffd", item) if isinstance(item, str) else item
                pending.append(item)
    return body


def _note(problems: list[str] | None, reason: str) -> None:
    if problems is not None:
        problems.append(reason)


def _shown(value: object) -> str:
    """A value for an error message: escaped (so never a surrogate on the wire), and short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARACTERS else text[: _SHOWN_CHARACTERS - 3] + "..."


@dataclass(frozen=True, slots=True)
class References:
    """What one manifest points at: blobs (config, layers), child manifests, and its subject."""

    blobs: tuple[Digest, ...] = ()
    blob_sizes: tuple[int, ...] = ()
    children: tuple[Digest, ...] = ()
    subject: Digest | None = None
    size: int = 0
    readable: bool = True


def references_of(data: bytes) -> References:
    """Config, layers, children and subject of any manifest shape (OCI, Docker schema 2 and 1), as GC must read
    them: every digest a descriptor-like object names counts, however malformed the rest of it (a blob it would
    overlook could be collected while a manifest needs it)."""
    body = decode_stored_json(data)  # never raises: not even on a manifest nested past the recursion limit
    if not isinstance(body, dict):
        return References(size=len(data))
    blobs: list[tuple[Digest, int]] = []
    for item in [body.get("config"), *_items(body.get("layers"))]:
        found = _descriptor_digest(item)
        if found is not None and not _is_foreign(item):
            blobs.append(found)
    for item in _items(body.get("fsLayers")):  # Docker schema 1
        blob_sum = _digest_text(item.get("blobSum") if isinstance(item, dict) else None)
        if blob_sum is not None:
            blobs.append((blob_sum, 0))
    children = [found[0] for item in _items(body.get("manifests")) if (found := _descriptor_digest(item))]
    subject = _descriptor_digest(body.get("subject"))
    return References(
        blobs=tuple(d for d, _ in blobs),
        blob_sizes=tuple(s for _, s in blobs),
        children=tuple(children),
        subject=subject[0] if subject else None,
        size=len(data),
    )


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_foreign(item: Any) -> bool:
    if not isinstance(item, dict) or not item.get("urls"):
        return False
    return media_types.is_foreign_layer(str(item.get("mediaType")))


def _digest_text(value: Any) -> Digest | None:
    if not isinstance(value, str):
        return None
    try:
        return Digest.parse(value)
    except RegistryError:
        return None


def _descriptor_digest(item: Any) -> tuple[Digest, int] | None:
    if not isinstance(item, dict):
        return None
    digest = _digest_text(item.get("digest"))
    size = item.get("size")
    return None if digest is None else (digest, size if isinstance(size, int) and size >= 0 else 0)
