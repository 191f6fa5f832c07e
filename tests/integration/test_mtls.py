"""Client certificates and CA bundles per connector, against a loopback TLS server.

The ``openssl`` command line creates a CA, a server certificate for 127.0.0.1
and a client certificate in a temporary folder. The server requires a client
certificate signed by that CA (``ssl.CERT_REQUIRED``).
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.token_endpoint import TokenEndpoint
from tests.support.webhook_server import Reply, Request, WebhookServer, running_server
from worker.errors import ConfigError
from worker.step import Finished, Outcome, Reschedule, StepRunner
from worker.tenants import TenantStore, parse_tenant_file
from worker.webhook import WebhookClient

TENANT = "acme"
ORDER = {"Id": "1001", "MarketId": "SE", "Status": "New"}


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate and a client certificate."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*arguments: str | Path) -> None:
    subprocess.run(
        ["openssl", *map(str, arguments)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    request, extension_file = directory / f"{name}.csr", directory / f"{name}.ext"
    extension_file.write_text(extensions, encoding="utf-8")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", request, "-subj", f"/CN={name}",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1],
        "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", extension_file,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    server = make_signed(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = make_signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], other_ca, server[0], server[1], client[0], client[1])


@pytest.fixture
def mtls_server(pki: Pki) -> Iterator[WebhookServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(cafile=pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    with running_server(context) as server:
        server.route("/hook", approve)
        yield server


def approve(_request: Request) -> Reply:
    return Reply.json('{"Status":"Approved"}')


def mtls_connector(server: WebhookServer, pki: Pki, **fields: Any) -> dict[str, Any]:
    return {
        "Name": "Hook",
        "ConnectorId": "hook-1",
        "Host": server.url("/hook"),
        "TimeOut": "00:00:05",
        "DisableStandardErrorPolicy": True,
        "ClientCertificateFile": str(pki.client_cert),
        "ClientKeyFile": str(pki.client_key),
        "CaBundleFile": str(pki.ca),
        **fields,
    }


def write_tenant(config_dir: Path, connector: dict[str, Any]) -> Path:
    path = config_dir / f"{TENANT}.json"
    path.write_text(json.dumps({"Connectors": [connector]}), encoding="utf-8")
    return path


def make_job(job_id: str = "job-1", **step: Any) -> dict[str, Any]:
    return {
        "JobId": job_id,
        "TenantId": TENANT,
        "Step": {"Name": "Export", "Connector": "Hook", "StopOnError": True, **step},
        "Order": dict(ORDER),
    }


def run_once(config_dir: Path, job: dict[str, Any]) -> Outcome:
    client = WebhookClient(allow_private_networks=True, max_response_bytes=1_000_000)
    runner = StepRunner(tenants=TenantStore(config_dir), client=client, store=None)
    try:
        return runner.run((job,), {})
    finally:
        client.close()


def finished(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, Finished), outcome
    result: dict[str, Any] = json.loads(outcome.result_json)
    return result


def config_error(config_dir: Path, connector: dict[str, Any]) -> str:
    path = write_tenant(config_dir, connector)
    with pytest.raises(ConfigError) as caught:
        parse_tenant_file(path, TENANT, env={})
    return str(caught.value)


# --- calls -----------------------------------------------------------------


def test_call_with_client_certificate(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    write_tenant(config_dir, mtls_connector(mtls_server, pki))

    result = finished(run_once(config_dir, make_job()))

    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Status"] == "Approved"
    assert len(mtls_server.requests_to("/hook")) == 1


def test_no_client_certificate_fails(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    connector = mtls_connector(mtls_server, pki)
    del connector["ClientCertificateFile"], connector["ClientKeyFile"]
    write_tenant(config_dir, connector)

    result = finished(run_once(config_dir, make_job()))

    assert result["ActionStatus"] == "Error"
    assert result["HttpStatus"] is None
    reason = result["ErrorReason"]
    assert reason.startswith(f"TLS connection to {mtls_server.url('/hook')} failed: ")
    assert "client certificate if the server requires one" in reason
    assert mtls_server.requests_to("/hook") == []


def test_wrong_ca_fails(config_dir: Path, mtls_server: WebhookServer, pki: Pki) -> None:
    write_tenant(
        config_dir, mtls_connector(mtls_server, pki, CaBundleFile=str(pki.other_ca))
    )

    result = finished(run_once(config_dir, make_job()))

    assert result["ActionStatus"] == "Error"
    assert "certificate verify failed" in result["ErrorReason"]
    assert mtls_server.requests_to("/hook") == []


def test_inline_host_gets_no_certificate(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    write_tenant(config_dir, mtls_connector(mtls_server, pki))
    host = {"Key": "Host", "Value": mtls_server.url("/hook")}

    outcome = run_once(config_dir, make_job(Properties=[host]))

    # The inline call neither trusts the test CA nor sends the client
    # certificate, so TLS fails and the standard policy retries.
    assert isinstance(outcome, Reschedule)
    assert "certificate verify failed" in outcome.reason
    assert mtls_server.requests_to("/hook") == []


def test_token_request_uses_client_certificate(
    config_dir: Path,
    mtls_server: WebhookServer,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_CLIENT_SECRET", "cs-mtls-51c3a0")
    tokens = TokenEndpoint("shop", "cs-mtls-51c3a0")
    mtls_server.route("/token", tokens.handle)
    mtls_server.route("/hook", tokens.protect(approve))
    oauth = {
        "TokenUrl": mtls_server.url("/token"),
        "ClientId": "shop",
        "ClientSecret": "${HOOK_CLIENT_SECRET}",
    }
    write_tenant(config_dir, mtls_connector(mtls_server, pki, OAuth=oauth))

    result = finished(run_once(config_dir, make_job()))

    assert result["ActionStatus"] == "Success"
    assert tokens.token_requests() == 1
    assert tokens.rejections == []


# --- settings --------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["ClientCertificateFile", "ClientKeyFile", "CaBundleFile"]
)
def test_missing_file_is_config_error(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki, field: str
) -> None:
    missing = str(config_dir / "missing.pem")
    connector = mtls_connector(mtls_server, pki, **{field: missing})

    error = config_error(config_dir, connector)

    assert f"connector 'hook-1' field {field}: cannot read {missing!r}" in error
    assert "No such file or directory" in error


def test_relative_path_is_config_error(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    connector = mtls_connector(mtls_server, pki, ClientKeyFile="client.key")

    error = config_error(config_dir, connector)

    assert "field ClientKeyFile: 'client.key' must be an absolute path" in error


def test_key_without_certificate(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    connector = mtls_connector(mtls_server, pki)
    del connector["ClientCertificateFile"]

    error = config_error(config_dir, connector)

    assert "connector 'hook-1'" in error
    assert "ClientKeyFile needs ClientCertificateFile" in error


def test_mismatched_key_is_config_error(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    connector = mtls_connector(mtls_server, pki, ClientKeyFile=str(pki.server_key))

    error = config_error(config_dir, connector)

    assert "connector 'hook-1'" in error
    assert "are not a usable PEM certificate and unencrypted private key" in error
    assert pki.server_key.read_text(encoding="utf-8").strip() not in error


def test_ca_bundle_not_pem(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    connector = mtls_connector(mtls_server, pki, CaBundleFile=str(pki.ca) + ".txt")
    Path(str(pki.ca) + ".txt").write_text("not a certificate\n", encoding="utf-8")

    error = config_error(config_dir, connector)

    assert "CaBundleFile" in error
    assert "is not a PEM bundle of CA certificates" in error


def test_key_file_text_is_secret(
    config_dir: Path, mtls_server: WebhookServer, pki: Pki
) -> None:
    path = write_tenant(config_dir, mtls_connector(mtls_server, pki))

    loaded = parse_tenant_file(path, TENANT, env={})

    key_text = pki.client_key.read_text(encoding="utf-8")
    assert key_text.strip() in loaded.secret_values
    assert str(pki.client_key) not in loaded.secret_values
