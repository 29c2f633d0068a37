"""http/fast.py's reading of a plain KV PUT from its bytes (`plain_put`): what it takes, and that
it leaves anything it does not fully understand (or that is not exactly one whole request) to
aiohttp's parser."""

from __future__ import annotations

import pytest
from proconsul.http.fast import plain_put

HOST = b"Host: 127.0.0.1:8500\r\n"


def put(target: bytes = b"/v1/kv/a", body: bytes = b"v", extra: bytes = b"", length: bytes | None = None) -> bytes:
    cl = b"Content-Length: " + (length if length is not None else str(len(body)).encode()) + b"\r\n"
    return b"PUT " + target + b" HTTP/1.1\r\n" + HOST + extra + cl + b"\r\n" + body


def test_a_plain_put_gives_its_target_and_whole_body() -> None:
    assert plain_put(put()) == ("/v1/kv/a", b"v")
    assert plain_put(put(b"/v1/kv/a/b?flags=3&cas=0", b"x" * 100)) == ("/v1/kv/a/b?flags=3&cas=0", b"x" * 100)
    # wrk's, curl's and Go's heads; any case of the field names; no body without a length
    assert plain_put(put(extra=b"User-Agent: curl/8\r\nAccept: */*\r\ncontent-type: text/plain\r\n")) == ("/v1/kv/a", b"v")
    assert plain_put(put(extra=b"Accept-Encoding: gzip\r\n", length=b" 1 ")) == ("/v1/kv/a", b"v")
    assert plain_put(b"PUT /v1/kv/a HTTP/1.1\r\n" + HOST + b"\r\n") == ("/v1/kv/a", b"")
    assert plain_put(put(body=b"")) == ("/v1/kv/a", b"")


@pytest.mark.parametrize("data", [
    put(body=b"vv", length=b"1"),  # more than one request, or a pipelined one behind it
    put(body=b"v", length=b"2"),  # the body still arriving
    put()[:-3],  # the head still arriving
    put().replace(HOST, b""),  # no Host: aiohttp answers 400
    put(extra=HOST),  # two Hosts
    put(extra=b"Content-Length: 1\r\n"),  # two lengths
    put() + put(),  # pipelined
    put(length=b"-1"), put(length=b"0x1"), put(length=b"1" * 12),
    put(extra=b"X-Consul-Token: t\r\n"), put(extra=b"Expect: 100-continue\r\n"),
    put(extra=b"Connection: close\r\n"), put(extra=b"Transfer-Encoding: chunked\r\n"),
    put(extra=b"Content-Encoding: gzip\r\n"), put(extra=b"Upgrade: websocket\r\n"),
    put(extra=b"Host : x\r\n"),  # a space before the colon
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET /v1/kv/a HTTP/1.1\r\n" + HOST + b"\r\n",
    put(extra=b"Accept: a\x01b\r\n"), put(extra=b"Accept: \xc3\xa9\r\n"),  # a control byte, non-ASCII
    put().replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n"),  # a bare LF
    put().replace(HOST, b"Host: a\rb\r\n"),  # a bare CR
    put().replace(b"HTTP/1.1", b"HTTP/1.0"),
    put().replace(b"PUT ", b"POST "), put().replace(b"PUT ", b"PUT  "),
    put(b"/v1/kv/a%20b"), put(b"/v1/kv/a#f"), put(b"v1/kv/a"), put(b"/v1/kv/\xc3\xa9"), put(b"/v1/kv/a\"b"),
    b"\r\n" + put(),  # an empty line before the request line
    put(body=b"x" * 20000),  # a body aiohttp's stream may pause on
    put(extra=b"Accept: " + b"a" * 5000 + b"\r\n"),  # a long head
])
def test_anything_else_is_left_to_aiohttps_parser(data: bytes) -> None:
    assert plain_put(data) is None


def test_fields_read_before_still_need_their_request_line_and_whole_body() -> None:
    # A head's fields are read once and remembered (`_plain_heads`); the request line and the
    # body's length are checked on every request all the same.
    assert plain_put(put(body=b"ab")) == ("/v1/kv/a", b"ab")
    assert plain_put(put(b"/v1/kv/other", b"cd")) == ("/v1/kv/other", b"cd")  # the same fields
    assert plain_put(put(body=b"ab")[:-1]) is None  # the body still arriving
    assert plain_put(put(body=b"ab") + b"x") is None  # more than the one request
    assert plain_put(put(body=b"ab").replace(b"PUT ", b"POST ")) is None
    assert plain_put(put(b"/v1/kv/a b", b"ab")) is None
    assert plain_put(put(body=b"ab").replace(b"HTTP/1.1", b"HTTP/1.0")) is None


def test_any_number_of_distinct_heads_is_read_correctly() -> None:
    # More distinct heads than are remembered: each is still read whole, before and after.
    for i in range(600):
        extra = b"User-Agent: client-%d\r\n" % i
        assert plain_put(put(extra=extra, body=b"v" * (i % 7))) == ("/v1/kv/a", b"v" * (i % 7))
        assert plain_put(put(extra=extra + b"X-Consul-Token: t\r\n")) is None


@pytest.mark.parametrize("data", [
    put(body=b"vv", length=b"1"), put(extra=HOST), put(extra=b"Content-Length: 1\r\n"), put(length=b"0x1"),
    put(extra=b"Accept: a\x01b\r\n"), put().replace(HOST, b"Host: a\rb\r\n"), put(body=b"x" * 20000),
])
def test_what_is_refused_stays_refused_when_asked_again(data: bytes) -> None:
    assert plain_put(data) is None
    assert plain_put(data) is None
