"""HTTPS on a real agent (issue 18 items 1-2): certificates made with `proconsul tls`, py-consul and
the CLI over TLS, client certificates required with verify_incoming, `ports.http = -1` leaving
only HTTPS, and `proconsul validate` naming the file and key of a TLS setting it cannot honour."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from helpers import AgentProcess, free_port, proconsul_command, wait_for


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([proconsul_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


class Certs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "consul-agent-ca.pem"
        self.server = (root / "dc1-server-consul-0.pem", root / "dc1-server-consul-0-key.pem")
        self.cli = (root / "dc1-cli-consul-0.pem", root / "dc1-cli-consul-0-key.pem")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    for args in (("tls", "ca", "create"), ("tls", "cert", "create", "-server"), ("tls", "cert", "create", "-cli")):
        done = _run(root, *args)
        assert done.returncode == 0, done.stderr
    c = Certs(root)
    for path in (c.ca, *c.server, *c.cli):
        assert path.exists(), path
    return c


def _tls_hcl(certs: Certs, https_port: int, extra: str = "") -> str:
    return (
        f"ports {{ https = {https_port}  http = -1 }}\n"
        "tls {\n"
        f'  defaults {{ ca_file = "{certs.ca}"  cert_file = "{certs.server[0]}"  key_file = "{certs.server[1]}" }}\n'
        "  https { verify_incoming = true }\n"
        "}\n" + extra
    )


def _client_context(certs: Certs, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        ctx.load_cert_chain(str(certs.cli[0]), str(certs.cli[1]))
    return ctx


def _get(port: int, path: str, ctx: ssl.SSLContext) -> bytes:
    """One HTTPS GET to 127.0.0.1:port; returns the whole raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data


@pytest.fixture(scope="module")
def https_agent(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    port = free_port()
    conf = tmp_path_factory.mktemp("https-conf") / "tls.hcl"
    conf.write_text(_tls_hcl(certs, port))
    agent = AgentProcess(f"-config-file={conf}")
    # The -http-port flag would win over the file's ports.http = -1: this agent has no plain port.
    agent.args = [a for a in agent.args if not a.startswith("-http-port=")]
    agent.wait_for_leader = False
    agent.start()
    ctx = _client_context(certs, with_cert=True)

    def leader() -> bool:
        if agent.proc is not None and agent.proc.poll() is not None:
            raise AssertionError(f"agent exited:\n{agent.log()}")
        answer = _get(port, "/v1/status/leader", ctx)
        return answer.startswith(b"HTTP/1.1 200") and not answer.endswith(b'""')

    try:
        wait_for(leader, timeout=60, what=lambda: f"leader over HTTPS\n{agent.log()}")
        yield agent, port
    finally:
        agent.stop()


def test_py_consul_reads_and_writes_kv_over_https(certs: Certs, https_agent: tuple[AgentProcess, int]) -> None:
    _, port = https_agent
    c = consul.Consul(
        host="127.0.0.1", port=port, scheme="https", verify=str(certs.ca), cert=(str(certs.cli[0]), str(certs.cli[1]))
    )
    assert c.kv.put("tls/greeting", "hello over https") is True
    _, item = c.kv.get("tls/greeting")
    assert item is not None and item["Value"] == b"hello over https"


def test_cli_kv_get_over_https(certs: Certs, https_agent: tuple[AgentProcess, int]) -> None:
    _, port = https_agent
    c = consul.Consul(
        host="127.0.0.1", port=port, scheme="https", verify=str(certs.ca), cert=(str(certs.cli[0]), str(certs.cli[1]))
    )
    assert c.kv.put("tls/cli", "from the cli") is True
    done = _run(
        certs.root,
        "kv", "get", f"-http-addr=https://127.0.0.1:{port}", f"-ca-file={certs.ca}",
        f"-client-cert={certs.cli[0]}", f"-client-key={certs.cli[1]}", "tls/cli",
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "from the cli"), done.stderr
    # Without a client certificate the same command is refused (verify_incoming).
    done = _run(certs.root, "kv", "get", f"-http-addr=https://127.0.0.1:{port}", f"-ca-file={certs.ca}", "tls/cli")
    assert done.returncode == 1 and "from the cli" not in done.stdout


def test_cli_takes_its_tls_settings_from_the_environment(certs: Certs, https_agent: tuple[AgentProcess, int]) -> None:
    """CONSUL_HTTP_ADDR without a scheme plus CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT and
    CONSUL_CLIENT_KEY: what operators export instead of passing the flags."""
    _, port = https_agent
    c = consul.Consul(
        host="127.0.0.1", port=port, scheme="https", verify=str(certs.ca), cert=(str(certs.cli[0]), str(certs.cli[1]))
    )
    assert c.kv.put("tls/env", "from the environment") is True
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env.update(CONSUL_HTTP_ADDR=f"127.0.0.1:{port}", CONSUL_HTTP_SSL="true", CONSUL_CACERT=str(certs.ca),
               CONSUL_CLIENT_CERT=str(certs.cli[0]), CONSUL_CLIENT_KEY=str(certs.cli[1]))
    done = subprocess.run([proconsul_command(), "kv", "get", "tls/env"], cwd=certs.root, capture_output=True,
                          text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "from the environment"), done.stderr
    # Without CONSUL_HTTP_SSL the address means plain HTTP, which this agent does not serve.
    env.pop("CONSUL_HTTP_SSL")
    done = subprocess.run([proconsul_command(), "kv", "get", "tls/env"], cwd=certs.root, capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode != 0 and "from the environment" not in done.stdout


def test_verify_incoming_refuses_a_client_without_a_certificate(
    certs: Certs, https_agent: tuple[AgentProcess, int]
) -> None:
    _, port = https_agent
    # TLS 1.2: the server asks for a certificate inside the handshake, so the handshake fails.
    ctx12 = _client_context(certs, with_cert=False)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with pytest.raises(ssl.SSLError):
            ctx12.wrap_socket(raw, server_hostname="localhost")
    # TLS 1.3: the server judges the (absent) certificate after the client thinks the handshake
    # is done, so the refusal shows on the first read: the connection ends with no HTTP answer.
    try:
        answer = _get(port, "/v1/agent/self", _client_context(certs, with_cert=False))
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        answer = b""
    assert answer == b"", answer[:200]
    answer = _get(port, "/v1/agent/self", _client_context(certs, with_cert=True))
    assert answer.startswith(b"HTTP/1.1 200")


def test_http_minus_one_leaves_only_https(certs: Certs, https_agent: tuple[AgentProcess, int]) -> None:
    agent, port = https_agent
    answer = _get(port, "/v1/agent/self", _client_context(certs, with_cert=True))
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert (body["DebugConfig"]["HTTPPort"], body["DebugConfig"]["HTTPSPort"]) == (-1, port)
    listening = [line for line in agent.log().splitlines() if "http: listening on" in line]
    assert listening and listening[-1].endswith(f"listening on https://127.0.0.1:{port}"), listening
    # A plaintext request to the HTTPS port gets no HTTP answer.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert not data.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    ("tls_text", "key", "reason"),
    [
        ('tls { defaults { cert_file = "#DIR#/missing.pem"  key_file = "#KEY#" } }', "tls.defaults.cert_file",
         "missing.pem"),
        ("", "ports.https", "no cert_file and key_file"),
        # Server RPC dials servers over TLS: it needs a CA to verify them with.
        ('tls { https { cert_file = "#CERT#"  key_file = "#KEY#" } }\nverify_outgoing = true', "verify_outgoing",
         "no ca_file or ca_path to verify servers with"),
        ('tls { https { cert_file = "#CERT#"  key_file = "#CLIKEY#" } }', "tls.https.key_file", "is not the key of"),
    ],
)  # fmt: skip
def test_validate_names_file_and_key(certs: Certs, tmp_path: Path, tls_text: str, key: str, reason: str) -> None:
    text = (
        tls_text.replace("#DIR#", str(tmp_path))
        .replace("#CERT#", str(certs.server[0]))
        .replace("#KEY#", str(certs.server[1]))
        .replace("#CLIKEY#", str(certs.cli[1]))
    )
    path = tmp_path / "agent.hcl"
    path.write_text(f'data_dir = "{tmp_path}"\nports {{ https = 8501 }}\n{text}\n')
    done = _run(tmp_path, "validate", str(path))
    assert done.returncode == 1, done.stdout
    assert any(
        line.find(f"{path}: {key}:") >= 0 and reason in line for line in (done.stdout + done.stderr).splitlines()
    ), done.stdout + done.stderr


def test_watches_refuse_an_https_only_agent(certs: Certs, tmp_path: Path) -> None:
    """Watches are clients of the plain HTTP API: with ports.http = -1 the agent says so and stops."""
    conf = tmp_path / "tls.hcl"
    conf.write_text(_tls_hcl(certs, free_port(), 'watches = [{ type = "key", key = "k", args = ["true"] }]\n'))
    agent = AgentProcess(f"-config-file={conf}")
    agent.args = [a for a in agent.args if not a.startswith("-http-port=")]
    agent.wait_for_leader = False
    agent.start()
    try:
        assert agent.proc is not None
        agent.proc.wait(60)
        assert agent.proc.returncode != 0
        assert "watches need the plain HTTP API: ports.http is disabled" in agent.log()
    finally:
        agent.stop()
