"""HTTPS (`http.tls`) with a self-signed certificate made by the test, authentication on: skopeo verifies it with
`--cert-dir`, the companion client with `--ca-file`, and the token realm in the challenge is https too."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .auth_servers import PASSWORDS, RULES, SERVICE, write_htpasswd
from .conftest import READY_TIMEOUT, REPO_ROOT, STOP_TIMEOUT, Skopeo, free_port
from .images import OciLayout, small_image

pytestmark = pytest.mark.e2e


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own CA (so that clients can trust it directly)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage e2e")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class TlsServer:
    def __init__(self, tmp_path: Path) -> None:
        self.cert, key = self_signed_certificate(tmp_path)
        self.port = free_port()
        config = tmp_path / "tls.yml"
        settings = {
            "http": {"tls": {"certificate": str(self.cert), "key": str(key)}},
            "storage": {"filesystem": {"root": str(tmp_path / "root"), "fsync": False}},
            "auth": {
                "htpasswd": {"path": str(write_htpasswd(tmp_path / "htpasswd", PASSWORDS))},
                "token": {"enabled": True, "service": SERVICE},
            },
            "access": RULES,
        }
        config.write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        self.log_path = tmp_path / "tls-server.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "registry", "serve", "--config", str(config), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(verify=ssl.create_default_context(cafile=self.cert), timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log_path.read_text()
                try:
                    if client.get(f"https://{self.host}/v2/").status_code == 401:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        pytest.fail(f"the TLS server did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._log.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_https_with_a_self_signed_certificate(tls_server: TlsServer, skopeo: Skopeo, tmp_path: Path) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=tls_server.cert), timeout=10.0) as client:
        challenge = client.get(f"https://{tls_server.host}/v2/").headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="https://{tls_server.host}/auth/token"'), challenge
        token = client.get(
            f"https://{tls_server.host}/auth/token", params={"service": SERVICE}, auth=("alice", PASSWORDS["alice"])
        )
        assert token.status_code == 200
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=10.0) as untrusting:
        untrusting.get(f"https://{tls_server.host}/v2/")  # the system's CAs do not know our certificate

    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="tls", tag="v1")
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(tls_server.cert.read_bytes())
    ref = f"docker://{tls_server.host}/team/app:v1"
    alice = f"alice:{PASSWORDS['alice']}"
    skopeo.run("copy", "--dest-cert-dir", str(cert_dir), "--dest-creds", alice, f"oci:{layout.path}:v1", ref)
    refused = skopeo.run("copy", "--dest-creds", alice, f"oci:{layout.path}:v1", ref, check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr  # verification really is on
    denied = skopeo.run(
        "inspect", "--cert-dir", str(cert_dir), "--creds", f"carol:{PASSWORDS['carol']}", ref, check=False
    )
    assert denied.returncode != 0 and "denied" in denied.stderr, denied.stderr
    skopeo.run(
        "copy",
        "--src-cert-dir",
        str(cert_dir),
        "--src-creds",
        f"bob:{PASSWORDS['bob']}",
        ref,
        f"oci:{tmp_path / 'out'}:v1",
    )

    # The companion client: login and push over HTTPS, trusting the certificate with --ca-file.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "DOCKER_"))}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

    def moorage(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "registry", *argv], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    ca = ["--ca-file", str(tls_server.cert)]
    login = moorage("login", *ca, tls_server.host, "-u", "alice", "--password-stdin")
    assert login.returncode == 1  # no password on stdin: refused before any request
    login = moorage("login", *ca, tls_server.host, "-u", "alice", "-p", PASSWORDS["alice"])
    assert login.returncode == 0, login.stderr
    push = moorage("push", *ca, f"{layout.path}:v1", f"{tls_server.host}/team/web:v1", "--quiet")
    assert push.returncode == 0, push.stderr
    untrusted = moorage("push", f"{layout.path}:v1", f"{tls_server.host}/team/web:v2", "--quiet")
    assert untrusted.returncode == 1
