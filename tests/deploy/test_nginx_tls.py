"""deploy/nginx/qlevents.conf, run for real: Debian's nginx with a certificate made here, in front
of a real ``qlevents serve``; the SDK sends through it over HTTPS.

nginx runs from a temporary prefix (``-p``, ``-c``, ``-e``: its pid, logs and temporary files
stay in the test's directory; no global configuration is read or touched) on a free loopback
port. The site file is the shipped one with its addresses and certificate paths replaced.
``make test`` installs nginx as root; elsewhere the tests skip when it is missing, except under
CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from qlevents import Client, TransportError
from tests.support import ADMIN_TOKEN, RunningServer, free_port, running_server, view

SITE = Path(__file__).parents[2] / "deploy" / "nginx" / "qlevents.conf"
MIB = 1024 * 1024

#: The main configuration around the site file: everything in the test's directory.
MAIN = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
{user}
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/qlevents.conf;
}}
"""

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = qlevents test
[ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def tool(name: str) -> str:
    """The path of the program ``name`` (Debian keeps nginx in /usr/sbin); skip without it,
    or fail under CI=true."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        reason = f"{name} is not installed (as root, `make nginx` installs Debian's)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class Certificates:
    ca: Path
    certificate: Path
    key: Path


def wait_listening(process: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    """Until nginx accepts connections on ``port`` (its error log if it exits first)."""
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, error_log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)


def make_certificates(directory: Path) -> Certificates:
    """A test CA and a certificate it signed for 127.0.0.1 (and localhost), by openssl."""
    openssl = tool("openssl")
    directory.mkdir()
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*arguments: str | Path) -> None:
        command = [openssl, *map(str, arguments)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    run("req", "-config", config, "-x509", "-new", *key_options, "-keyout", ca_key,
        "-out", ca, "-days", "2", "-extensions", "ca", "-subj", "/CN=qlevents test CA")  # fmt: skip
    key, request = directory / "server.key", directory / "server.csr"
    certificate = directory / "server.pem"
    run("req", "-config", config, "-new", *key_options, "-keyout", key, "-out", request,
        "-subj", "/CN=localhost")  # fmt: skip
    run("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-set_serial", "1",
        "-days", "2", "-extfile", config, "-extensions", "server", "-out", certificate)  # fmt: skip
    return Certificates(ca, certificate, key)


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"{SITE} no longer has {old!r}: this test must learn its new shape"
    return text.replace(old, new)


@dataclass
class Nginx:
    """nginx running deploy/nginx/qlevents.conf in front of ``upstream``."""

    port: int
    upstream: RunningServer
    certificates: Certificates
    prefix: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        """A client's TLS context that trusts the test CA (only)."""
        return ssl.create_default_context(cafile=str(self.certificates.ca))


@contextlib.contextmanager
def running_nginx(directory: Path, upstream: RunningServer) -> Iterator[Nginx]:
    """nginx with the shipped site file, in ``directory``, in front of ``upstream``."""
    binary = tool("nginx")
    certificates = make_certificates(directory / "tls")
    prefix = directory / "nginx"
    prefix.mkdir()
    port = free_port()
    site = SITE.read_text()
    site = replaced(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replaced(site, "    listen [::]:443 ssl;\n", "")  # IPv4 loopback only, here
    site = replaced(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream.port};")
    site = replaced(site, "/etc/ssl/qlevents/fullchain.pem", str(certificates.certificate))
    site = replaced(site, "/etc/ssl/qlevents/privkey.pem", str(certificates.key))
    (prefix / "qlevents.conf").write_text(site)
    # As root, nginx's workers would switch to 'nobody', who cannot enter pytest's
    # root-only temporary directory (request bodies are buffered there).
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN.format(prefix=prefix, user=user))
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
               "-e", str(prefix / "error.log")]  # fmt: skip
    check = subprocess.run([*command, "-t"], check=False, capture_output=True, text=True)
    assert check.returncode == 0, f"nginx -t refused the site file:\n{check.stderr}"
    with (prefix / "stderr.log").open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    running = Nginx(port, upstream, certificates, prefix)
    try:
        wait_listening(process, port, prefix / "error.log")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
        process.wait(20)


#: qlevents as the site file expects it: believing the proxy's X-Forwarded-For.
UPSTREAM_OPTIONS = ("--forwarded-allow-ips", "127.0.0.1", "--admin-token", ADMIN_TOKEN)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """One nginx and qlevents for the module's tests that only send through them (each
    with an account of its own: ``account``)."""
    root = tmp_path_factory.mktemp("nginx-tls")
    with running_server(root, *UPSTREAM_OPTIONS) as upstream, running_nginx(root, upstream) as up:
        yield up


@pytest.fixture
def own_nginx(tmp_path: Path, serve: Callable[..., RunningServer]) -> Iterator[Nginx]:
    """nginx and qlevents of the test's own, for a test that stops qlevents."""
    with running_nginx(tmp_path, serve(*UPSTREAM_OPTIONS)) as running:
        yield running


@pytest.fixture
def account(nginx: Nginx, request: pytest.FixtureRequest) -> str:
    """The client key of a new account behind the module's nginx, for this test alone."""
    return nginx.upstream.create_account(request.node.name[:200])


@pytest.fixture
def sdk_trusts_the_test_ca(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK trusts a private CA as httpx does, through SSL_CERT_FILE (docs/sdk.md);
    proxies are kept out of the way."""
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx.certificates.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sdk_trusts_certifi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SSL_CERT_FILE or SSL_CERT_DIR (which some machines set), the SDK trusts
    certifi's bundle alone."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def contract_error(answer: httpx.Response, status: int) -> dict[str, object]:
    """The one whole-request error of an answer in the events contract's shape."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["processed"] == [] and body["failed"] == []
    [error] = body["errors"]
    assert error["index"] is None
    return dict(error)


class TestTheSDKOverHTTPS:
    @pytest.mark.usefixtures("sdk_trusts_the_test_ca")
    def test_events_sent_through_nginx_are_stored(self, nginx: Nginx, account: str) -> None:
        """Client(endpoint=https://...) queues, flushes and sends through nginx; every event
        is stored."""
        key = account
        with Client(key, endpoint=f"{nginx.url}/events") as client:
            for i in range(20):
                client.view(f"sku-{i}", 10.5, f"https://shop.example/sku-{i}")
            assert client.flush(timeout=30)
            result = client.send([view(key, product_id="sent-now")])
            assert len(result.processed) == 1
        stored = {event["product_id"] for event in nginx.upstream.stored(key)}
        assert stored == {f"sku-{i}" for i in range(20)} | {"sent-now"}

    @pytest.mark.usefixtures("sdk_trusts_certifi")
    def test_a_certificate_the_sdk_cannot_verify_is_refused(
        self, nginx: Nginx, account: str
    ) -> None:
        """With its own trust store (certifi), the SDK refuses the test CA's certificate:
        nothing is sent."""
        key = account
        client = Client(key, endpoint=f"{nginx.url}/events", send_retry_budget=0.5)
        with client, pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            client.send([view(key)])
        assert nginx.upstream.stored(key) == []


class TestTheProxy:
    def test_the_access_log_shows_the_client_not_nginx(self, nginx: Nginx, account: str) -> None:
        """qlevents logs the address nginx forwarded for (a client on 127.0.0.5), not nginx's,
        and not what the client claimed in its own X-Forwarded-For."""
        mark = nginx.upstream.log_mark()
        transport = httpx.HTTPTransport(local_address="127.0.0.5", verify=nginx.tls())
        with httpx.Client(transport=transport) as client:
            answer = client.post(
                f"{nginx.url}/events",
                json=[view(account)],
                headers={"x-forwarded-for": "203.0.113.9"},
            )
        assert answer.status_code == 200 and len(answer.json()["processed"]) == 1
        [line] = nginx.upstream.wait_for_log('"POST /events" 200', since=mark)
        assert " 127.0.0.5:" in line and "203.0.113.9" not in line

    def test_a_6_mib_body_from_urllib_gets_the_413(self, nginx: Nginx) -> None:
        """A 6 MiB body (over qlevents' 5 MiB, under nginx's 8 MiB) sent by urllib reaches
        qlevents, whose 413 comes back through nginx."""
        request = urllib.request.Request(
            f"{nginx.url}/events",
            data=b"[" + b" " * (6 * MIB) + b"]",
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30, context=nginx.tls())
        with refused.value as answered:
            assert answered.code == 413
            error = json.loads(answered.read())["errors"][0]
        assert error["code"] == "body_too_large" and "5242880 bytes" in error["message"]

    def test_a_body_over_the_proxy_limit_is_refused_by_nginx_in_the_api_shape(
        self, nginx: Nginx
    ) -> None:
        """Over nginx's 8 MiB, nginx answers 413 itself, in the events contract's shape."""
        with httpx.Client(verify=nginx.tls()) as client:
            answer = client.post(f"{nginx.url}/events", content=b" " * (9 * MIB))
        assert contract_error(answer, 413)["code"] == "body_too_large"

    def test_private_paths_are_not_proxied(self, nginx: Nginx) -> None:
        """/metrics and /admin are not reachable through the public server: 404."""
        with httpx.Client(verify=nginx.tls()) as client:
            for path in ("/metrics", "/admin/accounts"):
                assert contract_error(client.get(f"{nginx.url}{path}"), 404)["code"] == "not_found"
            assert client.get(f"{nginx.url}/healthz").json() == {"status": "ok"}

    def test_the_dashboard_knows_it_is_served_over_https(self, nginx: Nginx) -> None:
        """/ leads to the dashboard, whose cookies are Secure: qlevents believed nginx's
        X-Forwarded-Proto."""
        with httpx.Client(verify=nginx.tls(), follow_redirects=True) as client:
            signin = client.get(f"{nginx.url}/")
        assert signin.status_code == 200 and signin.url.path == "/ui/signin"
        assert "; secure" in signin.headers["set-cookie"].lower()

    def test_qlevents_down_is_a_503_with_retry_after(self, own_nginx: Nginx) -> None:
        """With qlevents stopped, nginx answers 503 with Retry-After, in the API's shape."""
        own_nginx.upstream.stop()
        with httpx.Client(verify=own_nginx.tls()) as client:
            answer = client.post(f"{own_nginx.url}/events", json=[])
        assert contract_error(answer, 503)["code"] == "unavailable"
        assert answer.headers["retry-after"] == "5"
