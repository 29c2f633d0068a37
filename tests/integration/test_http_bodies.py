"""Request bodies arrive in pieces: every handler must read the whole body before acting on it.

A body split across TCP segments (or HTTP chunks) is what a slow or busy client sends; the agent
must store exactly what it acknowledged, or refuse. These tests send bodies over a raw socket with
pauses between the pieces, so the server sees each piece on its own, and read back what was stored.
"""

from __future__ import annotations

import base64
import json
import socket
import time

from helpers import AgentProcess

# Long enough that the agent has read what arrived before the next piece is sent.
PAUSE_S = 0.02


def _send_in_pieces(agent: AgentProcess, method: str, path: str, pieces: list[bytes], *, chunked: bool = False,
                    pause_s: float = PAUSE_S) -> tuple[int, bytes]:
    """Send one request whose body is `pieces`, pausing between them; answer (status, body)."""
    body_len = sum(len(p) for p in pieces)
    head = f"{method} {path} HTTP/1.1\r\nHost: {agent.addr}\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {body_len}\r\n"
    host, port = agent.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall((head + "\r\n").encode())
        for piece in pieces:
            if not piece:
                continue
            time.sleep(pause_s)
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def _raw_value(agent: AgentProcess, key: str) -> bytes:
    status, _, body = agent.http("GET", f"/v1/kv/{key}?raw")
    assert status == 200, (key, status)
    return body


def test_kv_value_split_at_every_position_is_stored_whole(dev_agent: AgentProcess) -> None:
    value = bytes(range(48, 48 + 64))
    for cut in range(len(value) + 1):
        status, body = _send_in_pieces(dev_agent, "PUT", f"/v1/kv/split/{cut}", [value[:cut], value[cut:]])
        assert (status, body) == (200, b"true"), cut
        assert _raw_value(dev_agent, f"split/{cut}") == value, cut


def test_kv_value_sent_slowly_in_many_segments(dev_agent: AgentProcess) -> None:
    value = b"".join(b"%07d\n" % i for i in range(250))  # 2,000 bytes, each line distinct
    pieces = [value[i : i + 100] for i in range(0, len(value), 100)]
    status, body = _send_in_pieces(dev_agent, "PUT", "/v1/kv/slow", pieces)
    assert (status, body) == (200, b"true")
    assert _raw_value(dev_agent, "slow") == value


def test_large_kv_value_in_segments_and_chunks(dev_agent: AgentProcess) -> None:
    value = b"".join(b"%09d\n" % i for i in range(30_000))  # 300,000 bytes, under the 512 KiB limit
    pieces = [value[i : i + 40_000] for i in range(0, len(value), 40_000)]
    for chunked in (False, True):
        key = f"large/{'chunked' if chunked else 'plain'}"
        status, body = _send_in_pieces(dev_agent, "PUT", f"/v1/kv/{key}", pieces, chunked=chunked)
        assert (status, body) == (200, b"true")
        assert _raw_value(dev_agent, key) == value


def test_chunked_value_split_at_every_position(dev_agent: AgentProcess) -> None:
    value = b"abcdefghijklmnopqrstuvwxyz012345"
    for cut in range(1, len(value)):
        status, _ = _send_in_pieces(dev_agent, "PUT", f"/v1/kv/chunk/{cut}", [value[:cut], value[cut:]],
                                    chunked=True, pause_s=0.005)
        assert status == 200, cut
        assert _raw_value(dev_agent, f"chunk/{cut}") == value, cut


def test_oversized_chunked_value_is_413_and_not_stored(dev_agent: AgentProcess) -> None:
    pieces = [b"y" * 65536] * 8 + [b"y"]  # 512 KiB + 1, with no Content-Length to refuse early
    status, body = _send_in_pieces(dev_agent, "PUT", "/v1/kv/toolarge", pieces, chunked=True, pause_s=0.005)
    assert status == 413 and b"too large" in body
    assert dev_agent.http("GET", "/v1/kv/toolarge")[0] == 404


def test_txn_body_split_at_every_position(dev_agent: AgentProcess) -> None:
    payload = base64.b64encode(b"txn-value").decode()
    body = json.dumps([{"KV": {"Verb": "set", "Key": "txnsplit", "Value": payload}}]).encode()
    for cut in range(0, len(body) + 1, 3):
        dev_agent.http("DELETE", "/v1/kv/txnsplit")
        status, answer = _send_in_pieces(dev_agent, "PUT", "/v1/txn", [body[:cut], body[cut:]], pause_s=0.01)
        assert status == 200, (cut, answer)
        assert json.loads(answer)["Errors"] is None
        assert _raw_value(dev_agent, "txnsplit") == b"txn-value", cut


def test_registration_body_split_is_decoded_whole(dev_agent: AgentProcess) -> None:
    body = json.dumps({"Name": "split-svc", "Port": 8080, "Tags": ["a" * 200]}).encode()
    for cut in (1, len(body) // 2, len(body) - 1):
        status, answer = _send_in_pieces(dev_agent, "PUT", "/v1/agent/service/register", [body[:cut], body[cut:]])
        assert status == 200, (cut, answer)
    services = json.loads(dev_agent.http("GET", "/v1/agent/services")[2])
    assert services["split-svc"]["Tags"] == ["a" * 200]
