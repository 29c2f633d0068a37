"""The command line's HTTP client for the local agent's Consul-compatible API.

Owns how a `proconsul` client command finds and talks to the agent: the address (`-http-addr`,
`CONSUL_HTTP_ADDR`, default `127.0.0.1:8500`, schemes `http://`, `https://`, `unix://`), the token
(`-token`, `-token-file`, `CONSUL_HTTP_TOKEN[_FILE]`), TLS settings, `?dc=` and `?stale`, and the
wording of transport and status errors, which follows Consul's Go `api` package because scripts
grep for it. Only the standard library is used so the CLI starts fast.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from proconsul.flags import parse_bool

DEFAULT_ADDRESS = "127.0.0.1:8500"
# Consul's client has no timeout; a stuck agent should still not hang a script forever.
REQUEST_TIMEOUT_S = 300.0


class ClientConfigError(Exception):
    """The client could not be configured (bad scheme, unreadable token file, bad TLS files)."""


class APIError(Exception):
    """A request failed; the message is worded like the Go `api` package's errors."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def go_os_error(op: str, path: str, exc: OSError) -> str:
    """Render an OSError the way Go prints a *PathError: `open /x: no such file or directory`."""
    text = exc.strerror or str(exc)
    return f"{op} {path}: {text[:1].lower()}{text[1:]}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


@dataclass
class ClientSettings:
    """What the HTTP flags and environment resolve to; `Client` is built from this."""

    address: str = DEFAULT_ADDRESS
    scheme: str = "http"
    unix_path: str | None = None
    token: str = ""
    datacenter: str = ""
    stale: bool = False
    basic_auth: str = ""
    ca_file: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    tls_verify: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)


def _env(environ: dict[str, str] | os._Environ[str], name: str) -> str:
    return environ.get(name, "") or ""


def resolve_settings(
    *,
    http_addr: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    datacenter: str | None = None,
    stale: bool = False,
    ca_file: str | None = None,
    ca_path: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    tls_server_name: str | None = None,
    environ: dict[str, str] | None = None,
) -> ClientSettings:
    """Combine flags (None = not given) with the environment the way Consul's CLI does.

    Flags override environment variables. A token file (flag or env) overrides a token, as in
    Consul's `api.NewClient`: the file is read and, if non-empty, replaces the token.
    """
    env: Any = os.environ if environ is None else environ
    s = ClientSettings()

    env_addr = _env(env, "CONSUL_HTTP_ADDR")
    if env_addr:
        s.address = env_addr
    # CONSUL_HTTP_SSL only picks the scheme when the address does not name one itself.
    ssl_env = _env(env, "CONSUL_HTTP_SSL")
    if ssl_env:
        try:
            if parse_bool(ssl_env):
                s.scheme = "https"
        except ValueError:
            pass
    if http_addr is not None:
        s.address = http_addr
    if "://" in s.address:
        scheme, rest = s.address.split("://", 1)
        if scheme in ("http", "https"):
            s.scheme, s.address = scheme, rest
        elif scheme == "unix":
            s.scheme, s.unix_path, s.address = "http", rest, "localhost"
        else:
            raise ClientConfigError(f"Unknown protocol scheme: {scheme}")
    s.address = s.address.rstrip("/")

    s.token = token if token is not None else _env(env, "CONSUL_HTTP_TOKEN")
    path = token_file if token_file is not None else _env(env, "CONSUL_HTTP_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                from_file = fh.read().strip()
        except OSError as exc:
            raise ClientConfigError(f"Error loading token file: {go_os_error('open', path, exc)}") from None
        if from_file:
            s.token = from_file

    s.datacenter = datacenter if datacenter is not None else ""
    s.stale = stale
    s.basic_auth = _env(env, "CONSUL_HTTP_AUTH")
    s.ca_file = ca_file if ca_file is not None else _env(env, "CONSUL_CACERT")
    s.ca_path = ca_path if ca_path is not None else _env(env, "CONSUL_CAPATH")
    s.client_cert = client_cert if client_cert is not None else _env(env, "CONSUL_CLIENT_CERT")
    s.client_key = client_key if client_key is not None else _env(env, "CONSUL_CLIENT_KEY")
    s.tls_server_name = (
        tls_server_name if tls_server_name is not None else _env(env, "CONSUL_TLS_SERVER_NAME")
    )
    verify_env = _env(env, "CONSUL_HTTP_SSL_VERIFY")
    if verify_env:
        try:
            s.tls_verify = parse_bool(verify_env)
        except ValueError:
            pass
    return s


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, for `unix:///path` addresses (agent `addresses.http = unix://`)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS whose SNI / verified name can differ from the dialled host (`-tls-server-name`)."""

    def __init__(self, host: str, context: ssl.SSLContext, server_name: str, timeout: float) -> None:
        super().__init__(host, timeout=timeout, context=context)
        self._ctx = context
        self._server_name = server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        assert self.sock is not None
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._server_name or self.host)


class Stream:
    """An open streaming response: iterate for its lines (bytes); `close` from any thread ends it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._sock = conn.sock
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        """The lines until the stream ends: closed by the server, broken, or `close`d."""
        try:
            yield from self.response
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # a cut connection (or a concurrent close) mid-chunk ends the stream all the same
        finally:
            self._conn.close()

    def close(self) -> None:
        """End the stream; safe from another thread (the reader closes the connection)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in another thread
            except OSError:
                pass


class Client:
    """A thin, synchronous client: one connection per request, errors worded like Consul's."""

    def __init__(self, settings: ClientSettings, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.settings = settings
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if settings.scheme == "https":
            self._ssl = self._make_ssl_context()

    def _make_ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        try:
            ctx = ssl.create_default_context(cafile=s.ca_file or None, capath=s.ca_path or None)
            if s.client_cert:
                ctx.load_cert_chain(s.client_cert, s.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ClientConfigError(str(exc)) from None
        if not s.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def url(self, path: str, params: list[tuple[str, str]]) -> str:
        query = urllib.parse.urlencode(params)
        base = f"{self.settings.scheme}://{self.settings.address}"
        return base + path + (f"?{query}" if query else "")

    def _connection(self) -> http.client.HTTPConnection:
        s = self.settings
        if s.unix_path is not None:
            return _UnixConnection(s.unix_path, self.timeout)
        if self._ssl is not None:
            return _TLSConnection(s.address, self._ssl, s.tls_server_name, self.timeout)
        return http.client.HTTPConnection(s.address, timeout=self.timeout)

    def _transport_error(self, method: str, url: str, exc: BaseException) -> APIError:
        # Go's url.Error reads `Get "http://...": dial tcp 127.0.0.1:8500: connect: ...`.
        verb = method.capitalize()
        target = self.settings.unix_path or self.settings.address
        net = "unix" if self.settings.unix_path is not None else "tcp"
        if isinstance(exc, ConnectionRefusedError):
            detail = f"dial {net} {target}: connect: connection refused"
        elif isinstance(exc, FileNotFoundError):
            detail = f"dial {net} {target}: connect: no such file or directory"
        elif isinstance(exc, socket.gaierror):
            host = self.settings.address.rsplit(":", 1)[0]
            detail = f"dial {net}: lookup {host}: no such host"
        elif isinstance(exc, (TimeoutError, socket.timeout)):
            detail = f"dial {net} {target}: i/o timeout"
        elif isinstance(exc, OSError) and exc.strerror:
            detail = f"dial {net} {target}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
        else:
            detail = str(exc) or type(exc).__name__
        return APIError(f'{verb} "{url}": {detail}')

    def request(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        read: bool = False,
        allow_404: bool = False,
    ) -> Response:
        """Send one request. `read` adds `?stale` when `-stale` was given (reads only, as Consul).

        Any status other than 200 (and 404 when `allow_404`) raises `APIError` with Consul's
        `Unexpected response code: N (body)` wording.
        """
        s = self.settings
        query = list(params or [])
        if s.datacenter:
            query.append(("dc", s.datacenter))
        if read and s.stale:
            query.append(("stale", ""))
        quoted = urllib.parse.quote(path, safe="/$&+,:;=@")
        url = self.url(quoted, query)
        target = quoted + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"User-Agent": "proconsul-cli", **s.extra_headers}
        if s.token:
            headers["X-Consul-Token"] = s.token
        if s.basic_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(s.basic_auth.encode()).decode()
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = self._connection()
        try:
            try:
                conn.request(method, target, body=body, headers=headers)
                raw = conn.getresponse()
                data = raw.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self._transport_error(method, url, exc) from None
            resp = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        finally:
            conn.close()
        if resp.status == 200 or (allow_404 and resp.status == 404):
            return resp
        text = resp.body.decode("utf-8", "replace").strip()
        raise APIError(f"Unexpected response code: {resp.status} ({text})", resp.status)

    def stream(self, path: str, params: list[tuple[str, str]] | None = None) -> Stream:
        """GET a streaming endpoint (`/v1/agent/monitor`): its lines, read by the caller with no
        read timeout; any status but 200 raises `APIError` as `request` does."""
        s = self.settings
        query = list(params or [])
        if s.datacenter:
            query.append(("dc", s.datacenter))
        quoted = urllib.parse.quote(path, safe="/$&+,:;=@")
        url = self.url(quoted, query)
        target = quoted + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"User-Agent": "proconsul-cli", **s.extra_headers}
        if s.token:
            headers["X-Consul-Token"] = s.token
        if s.basic_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(s.basic_auth.encode()).decode()
        conn = self._connection()
        try:
            conn.request("GET", target, headers=headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._transport_error("GET", url, exc) from None
        if raw.status != 200:
            text = raw.read().decode("utf-8", "replace").strip()
            conn.close()
            raise APIError(f"Unexpected response code: {raw.status} ({text})", raw.status)
        if conn.sock is not None:
            conn.sock.settimeout(None)  # a quiet agent logs nothing for a long time
        return Stream(conn, raw)

    def get_json(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        return self.request("GET", path, params, read=True).json()

    def put(
        self, path: str, params: list[tuple[str, str]] | None = None, body: bytes | None = None
    ) -> Response:
        return self.request("PUT", path, params, body if body is not None else b"")
