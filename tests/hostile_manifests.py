"""Hypothesis strategies for what an attacker (or a careless tool, or another registry's storage) can put where a
manifest or an image config is expected: real manifests of every kind, with zero to three of their fields
replaced by hostile values (sizes beyond 64 bits, floats and booleans for integers, lone surrogates, NUL bytes,
absurdly long strings, wrong types, deep nesting), and image configs of any shape."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.api.helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)

# Strings hypothesis' text() never makes on its own (it leaves out surrogates) or rarely makes long.
ODD_STRINGS = ("\ud800", "a\udfffb", "\udc00\ud800", "\x00", "a\x00b", "\U0001f600", "é", "", " ", '"\\[{', "x" * 5000)
DEEP_LIST: Any = []
for _ in range(300):
    DEEP_LIST = [DEEP_LIST]
ODD_NUMBERS = (2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1, -1, 0, 1.5, 1e308, float("inf"), float("nan"))

texts = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(ODD_NUMBERS), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)
hostile = st.one_of(
    json_values,
    st.dictionaries(texts, json_values, max_size=4),
    st.sampled_from([DEEP_LIST, *ODD_NUMBERS, *ODD_STRINGS]),
)
string_maps = st.dictionaries(st.text(max_size=12), texts, max_size=3)

# Paths into a manifest whose value a mutation replaces (an index in a list: its first item).
IMAGE_FIELDS = (
    ("schemaVersion",),
    ("mediaType",),
    ("config",),
    ("config", "mediaType"),
    ("config", "digest"),
    ("config", "size"),
    ("config", "annotations"),
    ("layers",),
    ("layers", 0),
    ("layers", 0, "size"),
    ("layers", 0, "mediaType"),
    ("layers", 0, "urls"),
    ("annotations",),
    ("annotations", "org.opencontainers.image.description"),
    ("artifactType",),
    ("subject",),
    ("subject", "size"),
    ("manifests",),
    ("extra",),
)
INDEX_FIELDS = (
    ("schemaVersion",),
    ("mediaType",),
    ("manifests",),
    ("manifests", 0),
    ("manifests", 0, "size"),
    ("manifests", 0, "digest"),
    ("manifests", 0, "platform"),
    ("manifests", 0, "platform", "architecture"),
    ("manifests", 0, "platform", "os.features"),
    ("annotations",),
    ("config",),
    ("extra",),
)


def encode(value: Any) -> bytes:
    """As a client's JSON encoder would send it: lone surrogates as `\\ud800` escapes, NaN as `NaN`."""
    return json.dumps(value).encode()


def _replace(body: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        if isinstance(body, dict) and isinstance(key, str):
            body = body.setdefault(key, {})
        elif isinstance(body, list) and isinstance(key, int) and key < len(body):
            body = body[key]
        else:
            return  # an earlier mutation changed the shape: nothing left to replace here
    last = path[-1]
    if (isinstance(body, dict) and isinstance(last, str)) or (isinstance(body, list) and last in range(len(body))):
        body[last] = value


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _content_type(draw: st.DrawFn, declared: str, other: str) -> str:
    """What a client sends as Content-Type: mostly the manifest's own media type, sometimes none or another."""
    return draw(st.sampled_from([declared, declared, "", "application/json", other]))


@st.composite
def image_manifests(draw: st.DrawFn, config: tuple[str, int], layer: tuple[str, int]) -> tuple[bytes, str]:
    """An OCI or Docker image manifest or an OCI artifact naming the given config and layer blobs, mutated; and
    the Content-Type to send it with."""
    kind = draw(st.sampled_from(["oci", "docker", "artifact"]))
    docker = kind == "docker"
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": _descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, *config),
        "layers": [_descriptor(DOCKER_LAYER if docker else OCI_LAYER, *layer)],
    }
    if kind == "artifact":
        body["artifactType"] = "application/vnd.example.sbom.v1+json"
        body["subject"] = _descriptor(OCI_MANIFEST, "sha256:" + "5" * 64, 1234)
    if draw(st.booleans()):
        body["annotations"] = draw(string_maps)
    for path in draw(st.lists(st.sampled_from(IMAGE_FIELDS), max_size=3)):
        _replace(body, path, draw(hostile))
    return encode(body), _content_type(draw, DOCKER_MANIFEST if docker else OCI_MANIFEST, OCI_INDEX)


@st.composite
def index_manifests(draw: st.DrawFn, child: tuple[str, int]) -> tuple[bytes, str]:
    """An OCI index or Docker manifest list over the given child image manifest, mutated; and the Content-Type."""
    docker = draw(st.booleans())
    platform = draw(
        st.fixed_dictionaries(
            {"architecture": st.sampled_from(["amd64", "arm64"]), "os": st.just("linux")},
            optional={"variant": texts, "os.features": st.lists(texts, max_size=2)},
        )
    )
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST if docker else OCI_INDEX,
        "manifests": [{**_descriptor(DOCKER_MANIFEST if docker else OCI_MANIFEST, *child), "platform": platform}],
    }
    if draw(st.booleans()):
        body["annotations"] = draw(string_maps)
    for path in draw(st.lists(st.sampled_from(INDEX_FIELDS), max_size=3)):
        _replace(body, path, draw(hostile))
    return encode(body), _content_type(draw, DOCKER_LIST if docker else OCI_INDEX, OCI_MANIFEST)


_config_objects = st.fixed_dictionaries(
    {},
    optional={
        "architecture": st.one_of(st.sampled_from(["amd64", "arm64"]), hostile),
        "os": st.one_of(st.just("linux"), hostile),
        "variant": st.one_of(texts, hostile),
        "created": st.one_of(texts, hostile),
        "config": st.one_of(
            hostile,
            st.fixed_dictionaries(
                {}, optional={"Labels": st.one_of(hostile, st.dictionaries(texts, st.one_of(texts, hostile)))}
            ),
        ),
    },
)
BROKEN_CONFIGS = (
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"os": ' + b"1" * 5000 + b"}",
    b'{"config": {"Labels": {"a": "\\ud800", "\\udfff": "b"}}}',
    b'{"config": {"Labels": {"a": "\xff\xfe"}}}',
    b"\xef\xbb\xbf{}",
    b'{"os": NaN, "architecture": Infinity}',
    b"not json",
    b"",
)
configs = st.one_of(
    _config_objects.map(encode),
    json_values.map(encode),
    st.sampled_from(BROKEN_CONFIGS),
    st.binary(max_size=32),
)
"""Image config blobs: config-shaped objects with hostile fields, any JSON, broken JSON, any bytes."""

stored_manifests = st.one_of(
    st.sampled_from(BROKEN_CONFIGS),
    json_values.map(encode),
    st.binary(max_size=32),
)
"""What storage may hold under a manifest's digest besides real manifests (written by hand or another registry)."""
