"""The deployment files under deploy/ and the Dockerfile, validated without a Docker engine or a cluster.

Every file is parsed (PyYAML, a small Dockerfile reader, a regex look at nginx.conf) and its structure checked:
services and their references, the replicas sharing one secret and one bucket, Kubernetes selectors, probes,
Secret and ConfigMap references, the kustomization. Above all, every MOORAGE_* variable these files set, and the
configuration file the ConfigMap carries, go through `registry.settings.load_settings` exactly as the container
would see them (the image's ENV underneath, the file's environment over it): a misspelt key fails here, not at the
first deploy. The image's ENTRYPOINT + CMD run in the virtualenv, and its HEALTHCHECK runs against that server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from registry.cli import build_parser
from registry.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = REPO / "Dockerfile"
SYSTEMD_UNIT = DEPLOY / "systemd" / "moorage.service"

SINGLE_NODE = COMPOSE / "single-node.yml"
HA = COMPOSE / "ha.yml"
NGINX_CONF = COMPOSE / "nginx.conf"
COMPOSE_FILES = [SINGLE_NODE, HA]

# What an operator would export before `docker compose up` (the HA file refuses to start without the first two).
COMPOSE_VARIABLES = {
    "MOORAGE_HTTP_SECRET": "a-test-secret-of-more-than-16-characters",
    "MINIO_ROOT_PASSWORD": "a-test-minio-password",
    "POSTGRES_PASSWORD": "a-test-postgres-password",
}

PREFIX = "MOORAGE_"
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MOORAGE_* variable of the machine running the tests, and no config/moorage.yml from the work tree."""
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


# --- reading the files ----------------------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def yaml_document(path: Path) -> dict[str, Any]:
    docs = yaml_documents(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    assert isinstance(docs[0], dict), f"{path.name}: the document is not a mapping"
    return docs[0]


class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is not set: compose refuses to start."""


_COMPOSE_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over a whole parsed file: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
    `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`, `${NAME:+alt}`, `${NAME+alt}`."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return variables.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"unsupported compose interpolation ${{{match['braced']}}}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        current = variables.get(name)
        if op is None:
            return current or ""
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return arg if unset else str(current)
        if op.endswith("?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return "" if unset else arg

    return _COMPOSE_REFERENCE.sub(replace, value)


def compose_file(path: Path, variables: Mapping[str, str] = COMPOSE_VARIABLES) -> dict[str, Any]:
    """The compose file as compose sees it after interpolation."""
    document = yaml_document(path)
    interpolated: dict[str, Any] = interpolate(document, variables)
    return interpolated


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment:` (mapping or list form) as strings, the way compose hands it to the container."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env: dict[str, str] = {}
    for key, value in raw.items():
        assert value is not None, f"environment {key} has no value (it would be taken from the host's environment)"
        env[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def moorage_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Moorage: those built from this repository."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def build_context(compose_path: Path, service: Mapping[str, Any]) -> Path:
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    return (compose_path.parent / context).resolve()


# --- the Dockerfile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped (as the Docker builder reads them)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    return instructions[starts[-1] :]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in instructions if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the image's stage, found {len(found)}"
    return found[0]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD: the shell form would put /bin/sh between docker's SIGTERM and us."""
    value = json.loads(instruction.args)
    assert isinstance(value, list), f"{instruction.keyword} must be in exec form (a JSON list)"
    assert all(isinstance(item, str) for item in value)
    return value


def dockerfile_env() -> dict[str, str]:
    """The ENV values of the image's stage (`ENV K=V ...`, or the legacy `ENV K V`)."""
    env: dict[str, str] = {}
    for instruction in final_stage(dockerfile_instructions()):
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.args)
        if "=" not in words[0]:
            env[words[0]] = instruction.args.split(None, 1)[1]
            continue
        for word in words:
            key, sep, value = word.partition("=")
            assert sep, f"ENV {instruction.args!r}: mixes the K=V and the K V forms"
            env[key] = value
    return env


def dockerfile_moorage_env() -> dict[str, str]:
    return {key: value for key, value in dockerfile_env().items() if key.startswith(PREFIX)}


def dockerfile_uid() -> int:
    match = re.search(r"useradd\b[^&]*--uid\s+(\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert match, "the Dockerfile creates no user with an explicit --uid"
    return int(match.group(1))


def dockerfile_command() -> list[str]:
    stage = final_stage(dockerfile_instructions())
    return exec_form(only(stage, "ENTRYPOINT")) + exec_form(only(stage, "CMD"))


# --- the settings check ---------------------------------------------------------------------------------------------


def setting_path(variable: str) -> list[str]:
    """`MOORAGE_STORAGE__S3__BUCKET` -> ["storage", "s3", "bucket"], failing unless it names one setting.

    pydantic-settings silently ignores a variable whose first part is not a section (MOORAGE_STORGE__S3__BUCKET),
    so the path is checked against the settings model here.
    """
    assert variable == variable.upper(), f"{variable}: write MOORAGE_* variables in upper case"
    parts = variable.removeprefix(PREFIX).lower().split("__")
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        key = ".".join(parts[: depth + 1])
        assert part in model.model_fields, f"{variable}: {key} is not a Moorage setting"
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth == len(parts) - 1:
            assert not is_section, f"{variable}: {key} is a whole section, not one setting"
        else:
            assert is_section, f"{variable}: {key} is a setting, not a section"
            assert isinstance(annotation, type)
            model = annotation
    return parts


def setting_value(settings: Settings, path: list[str]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def same_value(actual: Any, raw: str) -> bool:
    """Does the loaded setting hold what the variable said?"""
    if isinstance(actual, bool):
        return raw.strip().lower() in ({"1", "true", "yes", "on"} if actual else {"0", "false", "no", "off"})
    if isinstance(actual, int | float):
        return actual == float(raw)
    if isinstance(actual, Path):
        return actual == Path(raw)
    return str(actual) == raw


def check_settings(env: Mapping[str, str], where: str, config_file: Path | None = None) -> Settings:
    """Load the settings the way a Moorage process with this environment (and config file) would.

    Raises AssertionError if a MOORAGE_* variable is not a setting, if load_settings rejects the whole, or if a
    variable's value did not reach its setting.
    """
    # Case-insensitive, like pydantic-settings: a lower-case name would still reach Moorage.
    variables = {key: value for key, value in env.items() if key.upper().startswith(PREFIX) and key != CONFIG_ENV}
    paths = {key: setting_path(key) for key in variables}
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(PREFIX):
                patch.delenv(key)
        for key, value in variables.items():
            patch.setenv(key, value)
        if config_file is not None:
            patch.setenv(CONFIG_ENV, str(config_file))
        try:
            settings = load_settings()
        except ConfigError as e:
            raise AssertionError(f"{where}: Moorage rejects this configuration: {e}") from None
    for key, value in variables.items():
        actual = setting_value(settings, paths[key])
        assert same_value(actual, value), f"{where}: {key}={value!r} did not arrive (the setting is {actual!r})"
    return settings


def container_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a container of the image sees: the image's ENV, overridden by the deployment's own variables."""
    return {**dockerfile_moorage_env(), **env}


# --- Kubernetes -----------------------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml_document(KUBERNETES / "kustomization.yaml")


def kubernetes_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs.extend(yaml_documents(KUBERNETES / name))
    return docs


def the(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}{f' named {name}' if name else ''}, found {len(found)}"
    return found[0]


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    data = {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}
    data.update({key: str(value) for key, value in (secret.get("stringData") or {}).items()})
    return data


def moorage_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "moorage"]
    assert len(found) == 1, "the Deployment has no container named moorage"
    container: dict[str, Any] = found[0]
    return container


def pod_environment(container: Mapping[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's variables with Secret and ConfigMap references resolved (each must exist)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            env.update(secret_data(the(docs, "Secret", source["secretRef"]["name"])))
        else:
            env.update(the(docs, "ConfigMap", source["configMapRef"]["name"]).get("data") or {})
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = secret_data(the(docs, "Secret", ref["name"]))
        else:
            ref = source["configMapKeyRef"]
            data = the(docs, "ConfigMap", ref["name"]).get("data") or {}
        assert ref["key"] in data, f"env {name}: {ref['name']} has no key {ref['key']!r}"
        env[name] = data[ref["key"]]
    return env


def mounted_config(deployment: Mapping[str, Any], docs: list[dict[str, Any]], path: str) -> str:
    """The text of the ConfigMap entry a path inside the container is, through the volume mounted over it."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    for mount in moorage_container(deployment).get("volumeMounts") or []:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = volumes[mount["name"]]
        assert "configMap" in volume, f"{path} is on volume {mount['name']}, which is not a ConfigMap"
        configmap = the(docs, "ConfigMap", volume["configMap"]["name"])
        relative = path[len(prefix) :]
        items = volume["configMap"].get("items")
        keys = {item["path"]: item["key"] for item in items} if items else {key: key for key in configmap["data"]}
        assert relative in keys, f"{path}: the ConfigMap volume has no entry {relative!r}"
        text: str = configmap["data"][keys[relative]]
        return text
    raise AssertionError(f"{path} is not on any volume of the moorage container")


def resolve_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or a Service's port (a number or a port name) as the container port number it reaches."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    numbers = {p["containerPort"] for p in container["ports"]}
    if isinstance(port, str):
        assert port in ports, f"port {port!r} is not a named port of the container"
        return int(ports[port])
    assert port in numbers, f"port {port} is not a port of the container"
    return port


# --- every file parses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = yaml_documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


def test_the_expected_files_exist() -> None:
    expected = [
        SINGLE_NODE,
        HA,
        NGINX_CONF,
        *(KUBERNETES / f"{name}.yaml" for name in ("namespace", "configmap", "secret", "deployment", "service")),
        KUBERNETES / "kustomization.yaml",
        DEPLOY / "README.md",
    ]
    assert [path for path in expected if not path.is_file()] == []


# --- the settings check itself catches mistakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MOORAGE_STORAGE__S3__BUKET": "b"}, "storage.s3.buket is not a Moorage setting"),
        # pydantic-settings would ignore this one entirely: the section name itself is misspelt.
        ({"MOORAGE_STORGE__S3__BUCKET": "b"}, "storge is not a Moorage setting"),
        ({"MOORAGE_HTTP__SECRET": "short"}, "http.secret"),
        ({"MOORAGE_STORAGE__S3__PATH_STYLE": "sometimes"}, "storage.s3.path_style"),
        ({"MOORAGE_STORAGE__BACKEND": "s3"}, "storage.s3.bucket is required"),
        ({"MOORAGE_STORAGE": '{"backend": "s3"}'}, "is a whole section"),
        ({"moorage_http__port": "5001"}, "upper case"),
    ],
)
def test_the_settings_check_catches_mistakes(env: dict[str, str], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_settings(env, "test")


def test_the_settings_check_catches_lower_case_names() -> None:
    with pytest.raises(AssertionError, match="upper case"):
        setting_path("MOORAGE_HTTP__port")


def test_the_settings_check_catches_a_typo_in_the_configmap(tmp_path: Path) -> None:
    docs = kubernetes_documents()
    text = mounted_config(the(docs, "Deployment"), docs, "/etc/moorage/moorage.yml")
    assert "bucket:" in text
    config = tmp_path / "typo.yml"
    config.write_text(text.replace("bucket:", "bukcet:", 1), encoding="utf-8")
    with pytest.raises(AssertionError, match=r"storage\.s3\.bukcet: unknown key"):
        check_settings({}, "configmap with a typo", config)


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET", variables) == "$SET v v"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:-d}", variables) == "d d  v"
    assert interpolate("${SET:+alt}${UNSET:+alt}", variables) == "alt"
    with pytest.raises(MissingVariable, match="UNSET: say so"):
        interpolate("${UNSET:?say so}", variables)
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?say so}", variables)


# --- compose --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_are_complete(path: Path) -> None:
    compose = compose_file(path)
    services: dict[str, dict[str, Any]] = compose["services"]
    assert services
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "build" in service:
            assert (build_context(path, service) / "Dockerfile").is_file(), f"{name}: build context has no Dockerfile"
            assert build_context(path, service) == REPO, f"{name}: build the repository's Dockerfile"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{name}: bind-mounted {source} does not exist"
            elif source:
                assert source in declared_volumes, f"{name}: volume {source} is not declared under volumes:"
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
        if service.get("restart") != "no":
            # Long-running services have a health check (from the compose file; Moorage's image has one too).
            assert "healthcheck" in service, f"{name}: no healthcheck"
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[:2] == ["CMD", "python"]:
            assert test[2] == "-c"
            compile(test[3], f"{name} healthcheck", "exec")


def test_single_node_compose() -> None:
    compose = compose_file(SINGLE_NODE)
    services = compose["services"]
    assert list(services) == ["moorage"]
    service = services["moorage"]
    assert service["build"] == "../.."
    assert "5000:5000" in service["ports"]

    env = compose_environment(service)
    settings = check_settings(container_environment(env), "single-node.yml")
    assert settings.storage.backend == "filesystem"
    assert settings.http.port == 5000
    assert settings.http.host == "0.0.0.0"
    mounts = {target: source for source, target in (v.split(":")[:2] for v in service["volumes"])}
    root = str(settings.storage.filesystem.root)
    assert root in mounts, f"the storage root {root} is not on a volume"
    assert mounts[root] in compose["volumes"], "the storage root must be on a named volume"
    assert root in final_stage_volumes(), "the storage root should be the image's VOLUME"


def final_stage_volumes() -> list[str]:
    volumes: list[str] = []
    for instruction in final_stage(dockerfile_instructions()):
        if instruction.keyword == "VOLUME":
            args = instruction.args
            volumes.extend(json.loads(args) if args.startswith("[") else args.split())
    return volumes


def test_ha_compose_replicas_share_one_secret_and_one_bucket() -> None:
    raw_replicas = moorage_services(yaml_document(HA))
    assert len(raw_replicas) >= 2, "the HA shape has at least two Moorage replicas"
    # Before interpolation: the same reference everywhere, so no replica can drift from another.
    for key in ("MOORAGE_HTTP__SECRET", "MOORAGE_STORAGE__S3__BUCKET"):
        references = {compose_environment(service).get(key) for service in raw_replicas.values()}
        assert len(references) == 1 and None not in references, f"the replicas disagree on {key}: {references}"
    secret_reference = compose_environment(next(iter(raw_replicas.values())))["MOORAGE_HTTP__SECRET"]
    assert re.fullmatch(r"\$\{MOORAGE_HTTP_SECRET:\?[^}]+\}", secret_reference), secret_reference

    replicas = moorage_services(compose_file(HA))
    environments = [compose_environment(service) for service in replicas.values()]
    assert all(env == environments[0] for env in environments), "the replicas must be configured identically"
    assert environments[0]["MOORAGE_HTTP__SECRET"] == COMPOSE_VARIABLES["MOORAGE_HTTP_SECRET"]


def test_ha_compose_refuses_to_start_without_the_secret() -> None:
    variables = {k: v for k, v in COMPOSE_VARIABLES.items() if k != "MOORAGE_HTTP_SECRET"}
    with pytest.raises(MissingVariable, match="MOORAGE_HTTP_SECRET"):
        compose_file(HA, variables)
    with pytest.raises(MissingVariable, match="MOORAGE_HTTP_SECRET"):
        compose_file(HA, {**variables, "MOORAGE_HTTP_SECRET": ""})


def test_ha_compose_replicas_settings_are_accepted() -> None:
    compose = compose_file(HA)
    services = compose["services"]
    minio = services["minio"]
    minio_env = compose_environment(minio)
    bucket_job = services["create-bucket"]
    for name, service in moorage_services(compose).items():
        settings = check_settings(container_environment(compose_environment(service)), f"ha.yml {name}")
        storage = settings.storage
        assert storage.backend == "s3"
        assert storage.s3.endpoint_url == "http://minio:9000"
        assert storage.s3.path_style is True
        assert storage.s3.region
        assert storage.s3.access_key_id == minio_env["MINIO_ROOT_USER"]
        assert storage.s3.secret_access_key is not None
        assert storage.s3.secret_access_key.get_secret_value() == minio_env["MINIO_ROOT_PASSWORD"]
        assert storage.s3.bucket == compose_environment(bucket_job)["BUCKET"], "the replicas use the bucket created"
        # Presigned URLs would point at http://minio:9000, a name only the compose network resolves.
        assert storage.redirect.disable is True
        assert settings.http.secret == COMPOSE_VARIABLES["MOORAGE_HTTP_SECRET"]
        assert settings.http.host == "0.0.0.0" and settings.http.port == 5000
        assert service["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
        assert "ports" not in service, f"{name}: replicas are reached through the load balancer only"
        # One metadata index for every replica, in the compose file's PostgreSQL, with its credentials.
        postgres = compose_environment(services["postgres"])
        assert settings.database.url == (
            f"postgresql://{postgres['POSTGRES_USER']}:{COMPOSE_VARIABLES['POSTGRES_PASSWORD']}@postgres:5432/"
            f"{postgres['POSTGRES_DB']}"
        )
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_ha_compose_minio_and_the_bucket_job() -> None:
    compose = compose_file(HA)
    services = compose["services"]
    minio = services["minio"]
    assert minio["image"].split(":")[0] == "minio/minio"
    assert minio["command"][:2] == ["server", "/data"]
    assert any(volume.split(":")[1] == "/data" for volume in minio["volumes"]), "MinIO's data must be on a volume"
    assert len(compose_environment(minio)["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO wants a password of 8+ characters"

    job = services["create-bucket"]
    assert job["image"].split(":")[0] == "minio/mc"
    assert job["restart"] == "no"
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(job["entrypoint"] + job["command"])
    assert "mc alias set minio http://minio:9000" in script
    assert re.search(r"mc mb --ignore-existing \"minio/\$BUCKET\"", script), script
    # `$$` reached the container's shell as `$`: compose did not expand the variables itself.
    assert '"$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"' in script


def nginx_upstream_servers(text: str) -> list[tuple[str, int, list[str]]]:
    block = re.search(r"upstream\s+moorage\s*\{(?P<body>[^}]*)\}", text)
    assert block, "nginx.conf has no `upstream moorage { ... }`"
    servers = []
    for match in re.finditer(r"^\s*server\s+([\w.-]+):(\d+)([^;]*);", block["body"], re.MULTILINE):
        servers.append((match.group(1), int(match.group(2)), match.group(3).split()))
    return servers


def nginx_directives(text: str) -> set[str]:
    """Every `directive args;` of the file, whitespace-normalised, comments dropped."""
    without_comments = re.sub(r"#[^\n]*", "", text)
    return {" ".join(statement.split()) for statement in re.split(r"[;{}]", without_comments) if statement.strip()}


def test_ha_compose_load_balancer() -> None:
    compose = compose_file(HA)
    services = compose["services"]
    replicas = moorage_services(compose)
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert "5000:5000" in lb["ports"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert {name for name, dep in lb["depends_on"].items() if dep["condition"] == "service_healthy"} == set(replicas)

    text = NGINX_CONF.read_text(encoding="utf-8")
    servers = nginx_upstream_servers(text)
    assert sorted((host, port) for host, port, _ in servers) == sorted((name, 5000) for name in replicas), (
        "the load balancer must send to every replica, and only to them"
    )
    directives = nginx_directives(text)
    for directive in (
        "client_max_body_size 0",
        "proxy_request_buffering off",
        "proxy_buffering off",
        "proxy_http_version 1.1",
        "listen 5000",
        "proxy_pass http://moorage",
    ):
        assert directive in directives, f"nginx.conf lacks `{directive};`"
    # No balancing method: round-robin. No stickiness is needed, any replica continues any upload.
    assert not directives & {"ip_hash", "least_conn", "random", "hash"}
    for timeout in ("proxy_read_timeout", "proxy_send_timeout", "client_body_timeout", "send_timeout"):
        values = [d.split()[1] for d in directives if d.split()[0] == timeout]
        assert values and nginx_seconds(values[0]) >= 300, f"{timeout} should be long (layers are big)"
    if any("resolve" in options for _, _, options in servers):
        # `resolve` in an upstream server is in open-source nginx from 1.27.3 on, and needs a resolver and a zone.
        assert any(d.startswith("resolver ") for d in directives)
        assert any(d.startswith("zone ") for d in directives)
        version = tuple(int(part) for part in re.findall(r"\d+", lb["image"].split(":")[1])[:3])
        assert version >= (1, 27, 3) or version[:2] >= (1, 28), f"{lb['image']} is too old for `resolve`"


def nginx_seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m|h)?", value)
    assert match, f"unexpected nginx time {value!r}"
    return int(match.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


# --- Kubernetes -----------------------------------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_files_present() -> None:
    listed = kustomization()["resources"]
    present = sorted(p.name for p in KUBERNETES.iterdir() if p.suffix in {".yaml", ".yml"})
    assert sorted(listed) == [name for name in present if name != "kustomization.yaml"]
    assert len(set(listed)) == len(listed)


def test_kubernetes_documents_are_well_formed() -> None:
    docs = kubernetes_documents()
    namespace = the(docs, "Namespace")["metadata"]["name"]
    assert kustomization()["namespace"] == namespace
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "Secret", "Service"]
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        assert isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name"), doc
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']} is not in namespace {namespace}"
    expected_api = {"Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1"}
    assert {doc["kind"]: doc["apiVersion"] for doc in docs} == expected_api


def test_deployment_service_and_probes_agree() -> None:
    docs = kubernetes_documents()
    deployment = the(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod_labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items(), "the Deployment's selector must match its pods"

    service = the(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no pod"
    container = moorage_container(deployment)
    assert [p["containerPort"] for p in container["ports"]] == [5000]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 5000
    assert resolve_port(container, service_port["targetPort"]) == 5000

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path, f"{probe}: GET {path} is the endpoint for it"
        assert resolve_port(container, check["port"]) == 5000, f"{probe} does not probe the container's port"


def test_deployment_references_exist() -> None:
    docs = kubernetes_documents()
    deployment = the(docs, "Deployment")
    container = moorage_container(deployment)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"
    for volume in volumes.values():
        if "configMap" in volume:
            configmap = the(docs, "ConfigMap", volume["configMap"]["name"])
            for item in volume["configMap"].get("items") or []:
                assert item["key"] in configmap["data"], f"the ConfigMap has no key {item['key']}"
    # Every secretKeyRef names an existing Secret and key (pod_environment asserts it).
    env = pod_environment(container, docs)
    secret_refs = [i for i in container["env"] if "secretKeyRef" in (i.get("valueFrom") or {})]
    assert {i["name"] for i in secret_refs} >= {
        "MOORAGE_HTTP__SECRET",
        "MOORAGE_STORAGE__S3__ACCESS_KEY_ID",
        "MOORAGE_STORAGE__S3__SECRET_ACCESS_KEY",
    }, "the shared secret and the S3 keys come from the Secret"
    # MOORAGE_CONFIG names the file the ConfigMap volume provides.
    assert mounted_config(deployment, docs, env[CONFIG_ENV]).strip()


def test_deployment_security_and_resources() -> None:
    docs = kubernetes_documents()
    deployment = the(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = moorage_container(deployment)
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == dockerfile_uid(), "run as the image's user"
    assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp_mounts) == 1 and "emptyDir" in volumes[tmp_mounts[0]["name"]], "a writable /tmp (emptyDir)"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # Kubernetes would otherwise inject MOORAGE_PORT=tcp://..., MOORAGE_SERVICE_HOST=... for the Service moorage.
    assert pod["enableServiceLinks"] is False
    # uvicorn drains for 30 s on SIGTERM.
    assert pod["terminationGracePeriodSeconds"] > 30


def test_kubernetes_settings_are_accepted(tmp_path: Path) -> None:
    docs = kubernetes_documents()
    deployment = the(docs, "Deployment")
    env = pod_environment(moorage_container(deployment), docs)
    config = tmp_path / "moorage.yml"
    config.write_text(mounted_config(deployment, docs, env[CONFIG_ENV]), encoding="utf-8")

    settings = check_settings(container_environment(env), "kubernetes Deployment", config)
    secret = secret_data(the(docs, "Secret"))
    assert settings.storage.backend == "s3"
    assert settings.storage.s3.bucket
    assert settings.http.secret == secret["http-secret"]
    assert settings.storage.s3.access_key_id == secret["s3-access-key-id"]
    assert settings.http.host == "0.0.0.0" and settings.http.port == 5000


def test_configmap_file_alone_is_valid_and_not_shadowed_by_the_image(tmp_path: Path) -> None:
    docs = kubernetes_documents()
    deployment = the(docs, "Deployment")
    env = pod_environment(moorage_container(deployment), docs)
    text = mounted_config(deployment, docs, env[CONFIG_ENV])
    config = tmp_path / "moorage.yml"
    config.write_text(text, encoding="utf-8")
    from_file = check_settings({}, "ConfigMap moorage.yml", config)
    assert from_file.storage.backend == "s3"
    in_pod = check_settings(container_environment(env), "kubernetes Deployment", config)
    # The environment wins over the file: a key the file sets that the image's ENV also sets would be silently
    # overridden. Such keys must agree (better: the file leaves them out).
    data = yaml.safe_load(text)
    for variable in dockerfile_moorage_env():
        if variable in env:
            continue
        path = setting_path(variable)
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            assert setting_value(from_file, path) == setting_value(in_pod, path), (
                f"the ConfigMap sets {'.'.join(path)}, but the image's {variable} overrides it"
            )


def test_deployment_command_is_the_image_command() -> None:
    container = moorage_container(the(kubernetes_documents(), "Deployment"))
    assert "command" not in container, "keep the image's ENTRYPOINT"
    entrypoint = exec_form(only(final_stage(dockerfile_instructions()), "ENTRYPOINT"))
    argv = entrypoint + container["args"]
    assert argv[0] == "moorage"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.workers >= 1


def test_secret_placeholders_are_strings() -> None:
    secret = the(kubernetes_documents(), "Secret")
    assert secret["type"] == "Opaque"
    assert all(isinstance(value, str) and value for value in secret["stringData"].values())
    assert len(secret["stringData"]["http-secret"]) >= 16


# --- the systemd unit -----------------------------------------------------------------------------------------------


def test_systemd_unit_settings_and_command_are_accepted(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    exec_start: list[str] = []
    for line in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if key == "Environment" and sep:
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                env[name] = setting
        elif key == "ExecStart":
            exec_start = shlex.split(value)
    assert exec_start[0].endswith("/moorage")
    assert build_parser().parse_args(exec_start[1:]).command == "serve"
    config = tmp_path / "moorage.yml"
    config.write_text("", encoding="utf-8")  # the unit points MOORAGE_CONFIG at /etc/moorage/moorage.yml
    check_settings(env, "moorage.service", config)


# --- the Dockerfile -------------------------------------------------------------------------------------------------


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: build in one stage, copy the result into a small one"
    names = [m.group(1) for i in stages if (m := re.search(r"\bAS\s+(\S+)", i.args, re.IGNORECASE))]
    copied_from = [m.group(1) for i in instructions if (m := re.search(r"--from=(\S+)", i.args))]
    assert names and set(copied_from) & set(names), "the final stage copies from a named build stage"

    stage = final_stage(instructions)
    user = only(stage, "USER").args.split(":")[0]
    assert user not in {"root", "0"}, "the image runs as a non-root user"
    assert re.search(rf"useradd\b[^&]*\b{re.escape(user)}\b", DOCKERFILE.read_text(encoding="utf-8")) or user.isdigit()
    assert dockerfile_uid() != 0

    env = dockerfile_env()
    port = env["MOORAGE_HTTP__PORT"]
    assert only(stage, "EXPOSE").args.split() == [port] == ["5000"]
    assert env["MOORAGE_HTTP__HOST"] == "0.0.0.0", "a container must listen on all its interfaces"
    assert env["MOORAGE_STORAGE__FILESYSTEM__ROOT"] in final_stage_volumes(), "the storage root is the VOLUME"

    healthcheck = only(stage, "HEALTHCHECK").args
    assert healthcheck.upper() != "NONE"
    _options, sep, command = healthcheck.partition(" CMD ")
    assert sep, "HEALTHCHECK ... CMD [...]"
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"] and "/readyz" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")

    assert dockerfile_command() == ["moorage", "serve", "--workers", "2"]


def test_dockerfile_env_is_accepted() -> None:
    env = dockerfile_moorage_env()
    assert set(env) >= {"MOORAGE_HTTP__HOST", "MOORAGE_HTTP__PORT", "MOORAGE_STORAGE__FILESYSTEM__ROOT"}
    settings = check_settings(env, "Dockerfile ENV")
    assert settings.storage.backend == "filesystem"


def test_dockerfile_cmd_flags_are_accepted() -> None:
    argv = dockerfile_command()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts.get(argv[0]) == "registry.cli:main", "the ENTRYPOINT is the package's console script"
    help_text = subprocess.run(
        [sys.executable, "-m", "registry", *argv[1:2], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=REPO,
    ).stdout
    flags = [word for word in argv[2:] if word.startswith("--")]
    assert flags
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}\b", help_text), f"`moorage serve --help` does not list {flag}"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.workers == 2


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                # Its own process group: this reaches uvicorn's worker processes too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=SERVER_STOP_TIMEOUT)


def test_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the image's ENV, run from the virtualenv; then the image's HEALTHCHECK against it.

    Only what cannot hold outside a container changes: 127.0.0.1 and a free port instead of 0.0.0.0:5000, and a
    temporary storage root instead of /var/lib/moorage.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(PREFIX)}
    env.update(dockerfile_moorage_env())
    env.update(
        MOORAGE_HTTP__HOST="127.0.0.1",
        MOORAGE_HTTP__PORT=str(port),
        MOORAGE_STORAGE__FILESYSTEM__ROOT=str(tmp_path / "data"),
    )
    argv = [sys.executable, "-m", "registry", *dockerfile_command()[1:]]
    log = tmp_path / "moorage.log"
    healthcheck = json.loads(only(final_stage(dockerfile_instructions()), "HEALTHCHECK").args.partition(" CMD ")[2])
    with running(argv, env, tmp_path, log) as proc:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        status = None
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, f"`{' '.join(argv)}` exited with {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                status = httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2.0).status_code
            time.sleep(0.1)
        assert status == 200, f"not serving after {SERVER_START_TIMEOUT}s:\n{log.read_text()}"
        check = subprocess.run(
            [sys.executable, *healthcheck[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert check.returncode == 0, f"the HEALTHCHECK failed against a serving registry: {check.stderr}"
    assert (tmp_path / "data").is_dir()
    # With nothing listening the health check must fail (it is not a no-op).
    check = subprocess.run(
        [sys.executable, *healthcheck[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode != 0


# --- the documentation ----------------------------------------------------------------------------------------------


def test_deploy_readme_covers_every_file() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"):
        relative = str(path.relative_to(DEPLOY))
        assert relative in text or path.name in text, f"deploy/README.md does not mention {relative}"
    for needle in ("kubectl apply -k deploy/kubernetes", "docker run", "MOORAGE_HTTP_SECRET", "systemctl"):
        assert needle in text, f"deploy/README.md does not mention {needle!r}"


def test_deploy_readme_names_only_real_settings() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    variables = set(re.findall(r"\bMOORAGE_[A-Z0-9_]*__[A-Z0-9_]*[A-Z0-9]\b", text))
    assert len(variables) >= 5
    for variable in sorted(variables):
        setting_path(variable)
