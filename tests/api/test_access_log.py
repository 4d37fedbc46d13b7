"""Request ids and the access log: one structured line per request, no secrets in it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.logs import ACCESS_LOGGER, JsonFormatter, TextFormatter, logging_config, resolve_format
from tests.api.conftest import ClientFactory, filesystem_storage
from tests.api.helpers import digest_of, push_image


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return filesystem_storage(tmp_path)  # nothing here depends on the storage backend


ACCESS_LOG = {"http": {"access_log": True}}


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]


async def test_request_id_is_generated_or_taken_from_the_client(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/v2/"), await client.get("/v2/")
    assert first.headers["X-Request-ID"] and first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    given = await client.get("/v2/", headers={"X-Request-ID": "ci-run-42.step-7"})
    assert given.headers["X-Request-ID"] == "ci-run-42.step-7"
    # Errors carry it too, and the API version header is still there.
    missing = await client.get("/v2/team/app/manifests/nope", headers={"X-Request-ID": "abc"})
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "abc"
    assert missing.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # Something that could forge a log line is replaced.
    forged = await client.get("/v2/", headers={"X-Request-ID": 'x" \n{"status":200}'})
    assert forged.headers["X-Request-ID"] != 'x" \n{"status":200}'
    assert (await client.get("/v2/", headers={"X-Request-ID": "a" * 500})).headers["X-Request-ID"] != "a" * 500


async def test_one_line_per_request_with_route_and_repository(
    client_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await client_factory(sections=ACCESS_LOG)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _, body = await push_image(client, "team/app", "v1")
    caplog.clear()
    response = await client.get(
        "/v2/team/app/manifests/v1",
        headers={"X-Request-ID": "req-1", "Accept": "application/vnd.oci.image.manifest.v1+json", "User-Agent": "t/1"},
    )
    assert response.status_code == 200
    (record,) = access_records(caplog)
    assert record["request_id"] == "req-1"
    assert record["method"] == "GET"
    assert record["route"] == "/v2/{name:path}/manifests/{reference}"
    assert record["repository"] == "team/app"
    assert record["status"] == 200
    assert record["bytes_in"] == 0
    assert record["bytes_out"] == len(body)
    assert record["duration_ms"] >= 0
    assert record["user"] == ""
    assert record["user_agent"] == "t/1"

    caplog.clear()
    data = b"some layer bytes"
    pushed = await client.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
    assert pushed.status_code == 201
    (record,) = access_records(caplog)
    assert (record["method"], record["status"], record["bytes_in"]) == ("POST", 201, len(data))
    assert record["request_id"] == pushed.headers["X-Request-ID"]

    caplog.clear()
    assert (await client.get("/nowhere")).status_code == 404
    (record,) = access_records(caplog)
    assert record["route"] == "unmatched" and record["repository"] == ""


async def test_no_secrets_in_the_log(client_factory: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = await client_factory(sections=ACCESS_LOG)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    started = await client.post("/v2/team/app/blobs/uploads/", headers={"Authorization": "Bearer top-secret-token"})
    state = started.headers["Location"].split("_state=")[1]
    await client.patch(started.headers["Location"], content=b"x", auth=("alice", "hunter2-password"))
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2
    text = "\n".join(lines)
    for secret in ("top-secret-token", "hunter2-password", state, "_state"):
        assert secret not in text


async def test_access_log_off(client_factory: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = await client_factory()  # the API tests' settings: http.access_log false
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    response = await client.get("/v2/")
    assert response.headers["X-Request-ID"]
    assert access_records(caplog) == []


def make_record(**fields: Any) -> logging.LogRecord:
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "GET %s %d", ("/v2/", 200), None)
    record.fields = fields
    return record


def test_json_lines() -> None:
    line = JsonFormatter().format(make_record(request_id="r1", repository="team/app", status=200))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /v2/ 200"
    assert entry["level"] == "info" and entry["logger"] == ACCESS_LOGGER
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"
    assert (entry["request_id"], entry["repository"], entry["status"]) == ("r1", "team/app", 200)


def test_text_lines() -> None:
    line = TextFormatter().format(make_record(request_id="r1", user="", user_agent="skopeo/1.13 (linux)"))
    assert "INFO" in line and "GET /v2/ 200" in line
    assert 'request_id=r1 user="" user_agent="skopeo/1.13 (linux)"' in line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def test_server_logging_config_replaces_uvicorn_access_log() -> None:
    config = logging_config("json", "warning")
    assert config["formatters"]["moorage"]["()"] == "registry.logs.JsonFormatter"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
    assert config["loggers"]["moorage"]["level"] == "WARNING"
    assert logging_config("text", "info")["formatters"]["moorage"]["()"] == "registry.logs.TextFormatter"
