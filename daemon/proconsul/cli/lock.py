"""`proconsul lock`: run a child process while holding a Consul lock or semaphore slot.

Owns the command (flags, messages, exit codes and child handling of `consul lock`) and the two
client-side recipes it uses, laid out in KV exactly as Consul's Go `api` Lock and Semaphore lay
them out so that proconsul and Consul clients can contend for the same prefix:

- lock (`-n 1`): the key `<prefix>/.lock`, flags `0x2ddccbc058a50c18`, acquired with `?acquire=`
  by a session (TTL 15s, renewed every TTL/2, behaviour `release`); waiting is a blocking read of
  the key (15s at a time); a refused acquire while the key is free means a lock-delay is running,
  so the next try comes after 5s.
- semaphore (`-n N`): a contender key `<prefix>/<session>` acquired by the contender's session
  (behaviour `delete`) with flags `0xe0f69a2baa414de0`, and `<prefix>/.lock` (same flags) holding
  `{"Limit":N,"Holders":{"<session>":true,...}}`, updated with check-and-set; holders whose
  contender key is gone are pruned.

While the child runs, a monitor does consistent blocking reads; when the lock is lost the child
gets SIGTERM and, 5s later, SIGKILL. The child sees `CONSUL_LOCK_HELD=true`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from proconsul.api_client import APIError, Client
from proconsul.cli.base import COMMAND_SECTION, HTTP_SERVER, Command, Context, FlagSpec
from proconsul.cli.output import go_path_join
from proconsul.durations import parse_duration

# Consul's api/lock.go and api/semaphore.go constants.
LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0
LOCK_KEY = ".lock"  # api.DefaultSemaphoreKey; the lock command uses it too
DEFAULT_LOCK_SESSION_NAME = "Consul API Lock"
DEFAULT_SEMAPHORE_SESSION_NAME = "Consul API Semaphore"
SESSION_TTL = "15s"
WAIT_TIME_S = 15.0  # one blocking read while waiting to acquire
RETRY_TIME_S = 5.0  # after a refused acquire (lock-delay)
# command/lock: the child's grace period between SIGTERM and SIGKILL, and monitor retries.
KILL_GRACE_S = 5.0
DEFAULT_MONITOR_RETRY = 3
MONITOR_RETRY_TIME_S = 1.0
# The monitor's blocking reads (Consul sends no wait and gets the server's 5m default).
MONITOR_WAIT = "60s"


class LockError(Exception):
    """Acquisition failed for a reason other than timeout or shutdown."""


class InUse(Exception):
    """Cleanup skipped: somebody else holds or waits for the lock."""


def _retryable(exc: APIError) -> bool:
    # The Go api's IsRetryableError: transport errors and 500s.
    return exc.status is None or exc.status == 500


def _fmt_wait(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


class _Session:
    """A TTL session renewed every TTL/2 on a thread; destroyed by `close()`."""

    def __init__(self, client: Client, name: str, behavior: str) -> None:
        self.client = client
        body = json.dumps({"Name": name, "TTL": SESSION_TTL, "Behavior": behavior}).encode()
        self.id: str = client.put("/v1/session/create", body=body).json()["ID"]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lock-session-renew", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        ttl_s = parse_duration(SESSION_TTL)
        while not self._done.wait(ttl_s / 2):
            try:
                resp = self.client.request("PUT", f"/v1/session/renew/{self.id}", body=b"", allow_404=True)
            except APIError:
                return
            entries = resp.json() if resp.status == 200 else None
            if not entries:
                return  # the session is gone; the monitor notices the lost lock
            try:
                ttl_s = parse_duration(entries[0].get("TTL") or SESSION_TTL)
            except ValueError:
                pass

    def close(self) -> None:
        self._done.set()
        try:
            self.client.request("PUT", f"/v1/session/destroy/{self.id}", body=b"", allow_404=True)
        except APIError:
            pass


class _Base(ABC):
    """What the lock and the semaphore share: session, try-once timing and the monitor thread."""

    session_name_default = ""
    behavior = "release"

    def __init__(self, client: Client, name: str, try_once: bool, wait_s: float, monitor_retries: int) -> None:
        self.client = client
        self.name = name or self.session_name_default
        self.try_once = try_once
        self.wait_s = wait_s if try_once else WAIT_TIME_S
        self.monitor_retries = monitor_retries
        self.session: _Session | None = None
        self.held = False
        self.lost = threading.Event()

    def _read(self, path: str, params: list[tuple[str, str]], index: int, wait_s: float) -> tuple[Any, int]:
        query = list(params)
        if index:
            query += [("index", str(index)), ("wait", _fmt_wait(wait_s))]
        resp = self.client.request("GET", path, query, allow_404=True)
        data = resp.json() if resp.status == 200 else None
        return data, int(resp.headers.get("x-consul-index", "0") or 0)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until held (True), or until `stop` or the -timeout (False); LockError on failure."""
        try:
            self.session = _Session(self.client, self.name, self.behavior)
        except APIError as exc:
            raise LockError(f"failed to create session: {exc}") from None
        try:
            self.held = self._acquire(stop, self.session.id)
        finally:
            if not self.held:
                self.session.close()
                self.session = None
        if self.held:
            threading.Thread(target=self._monitor, name="lock-monitor", daemon=True).start()
        return self.held

    def _wait_budget(self, start: float, attempts: int) -> float | None:
        """The wait for the next blocking read; None when a -timeout attempt has run out."""
        if not self.try_once or attempts == 0:
            return self.wait_s
        left = self.wait_s - (time.monotonic() - start)
        return left if left > 0 else None

    def _monitor(self) -> None:
        assert self.session is not None
        sid = self.session.id
        index = 0
        retries = self.monitor_retries
        try:
            while True:
                try:
                    still, index = self._still_held(sid, index)
                except APIError as exc:
                    if retries > 0 and _retryable(exc):
                        time.sleep(MONITOR_RETRY_TIME_S)
                        retries -= 1
                        index = 0
                        continue
                    return
                if not still:
                    return
                retries = self.monitor_retries
        finally:
            self.lost.set()

    @abstractmethod
    def _acquire(self, stop: threading.Event, sid: str) -> bool:
        """Implemented by Lock and Semaphore."""

    @abstractmethod
    def _still_held(self, sid: str, index: int) -> tuple[bool, int]:
        """Implemented by Lock and Semaphore."""

    @abstractmethod
    def release(self) -> None:
        """Implemented by Lock and Semaphore."""

    @abstractmethod
    def destroy(self) -> None:
        """Implemented by Lock and Semaphore."""


class Lock(_Base):
    session_name_default = DEFAULT_LOCK_SESSION_NAME

    def __init__(self, client: Client, prefix: str, name: str, try_once: bool, wait_s: float, retries: int) -> None:
        super().__init__(client, name, try_once, wait_s, retries)
        self.key = go_path_join(prefix, LOCK_KEY)

    def _acquire(self, stop: threading.Event, sid: str) -> bool:
        index = 0
        start = time.monotonic()
        attempts = 0
        while not stop.is_set():
            wait_s = self._wait_budget(start, attempts)
            if wait_s is None:
                return False
            attempts += 1
            try:
                data, meta_index = self._read("/v1/kv/" + self.key, [], index, wait_s)
            except APIError as exc:
                raise LockError(f"failed to read lock: {exc}") from None
            pair = data[0] if data else None
            if pair is not None and pair.get("Flags") != LOCK_FLAG_VALUE:
                raise LockError("Existing key does not match lock use")
            if pair is not None and pair.get("Session") == sid:
                return True
            if pair is not None and pair.get("Session"):
                index = meta_index
                continue
            try:
                params = [("acquire", sid), ("flags", str(LOCK_FLAG_VALUE))]
                locked = self.client.put("/v1/kv/" + self.key, params, b"").json()
            except APIError as exc:
                raise LockError(f"failed to acquire lock: {exc}") from None
            if locked:
                return True
            # Refused: held by someone who just won (block on it), or a lock-delay (retry later).
            try:
                data, meta_index = self._read("/v1/kv/" + self.key, [], 0, 0)
            except APIError as exc:
                raise LockError(f"failed to read lock: {exc}") from None
            pair = data[0] if data else None
            if pair is not None and pair.get("Session"):
                index = meta_index
                continue
            index = 0
            if stop.wait(RETRY_TIME_S):
                return False
        return False

    def _still_held(self, sid: str, index: int) -> tuple[bool, int]:
        data, new_index = self._read("/v1/kv/" + self.key, [("consistent", "")], index, parse_duration(MONITOR_WAIT))
        pair = data[0] if data else None
        return (pair is not None and pair.get("Session") == sid), new_index

    def release(self) -> None:
        if not self.held or self.session is None:
            return
        self.held = False
        session, self.session = self.session, None
        try:
            params = [("release", session.id), ("flags", str(LOCK_FLAG_VALUE))]
            self.client.put("/v1/kv/" + self.key, params, b"")
        except APIError as exc:
            raise LockError(f"failed to release lock: {exc}") from None
        finally:
            session.close()

    def destroy(self) -> None:
        data, _ = self._read("/v1/kv/" + self.key, [], 0, 0)
        pair = data[0] if data else None
        if pair is None:
            return
        if pair.get("Flags") != LOCK_FLAG_VALUE:
            raise LockError("Existing key does not match lock use")
        if pair.get("Session"):
            raise InUse("Lock in use")
        removed = self.client.request(
            "DELETE", "/v1/kv/" + self.key, [("cas", str(pair.get("ModifyIndex", 0)))]
        ).json()
        if not removed:
            raise InUse("Lock in use")


class Semaphore(_Base):
    session_name_default = DEFAULT_SEMAPHORE_SESSION_NAME
    behavior = "delete"

    def __init__(
        self, client: Client, prefix: str, limit: int, name: str, try_once: bool, wait_s: float, retries: int
    ) -> None:
        super().__init__(client, name, try_once, wait_s, retries)
        self.prefix = prefix
        self.limit = limit
        self.lock_key = go_path_join(prefix, LOCK_KEY)

    def _list(self, index: int, wait_s: float, consistent: bool = False) -> tuple[list[dict[str, Any]], int]:
        params = [("recurse", "")] + ([("consistent", "")] if consistent else [])
        data, new_index = self._read("/v1/kv/" + self.prefix, params, index, wait_s)
        return list(data or []), new_index

    def _find_lock(self, pairs: list[dict[str, Any]]) -> dict[str, Any]:
        for pair in pairs:
            if pair.get("Key") == self.lock_key:
                return pair
        return {"Flags": SEMAPHORE_FLAG_VALUE, "ModifyIndex": 0, "Value": None}

    def _decode(self, pair: dict[str, Any]) -> dict[str, Any]:
        raw = pair.get("Value")
        if not raw:
            return {"Limit": self.limit, "Holders": {}}
        try:
            lock = json.loads(base64.b64decode(raw))
            holders = lock.get("Holders") or {}
            return {"Limit": int(lock.get("Limit", 0)), "Holders": dict(holders)}
        except (ValueError, TypeError, AttributeError) as exc:
            raise LockError(f"lock decoding failed: {exc}") from None

    @staticmethod
    def _prune(lock: dict[str, Any], pairs: list[dict[str, Any]]) -> None:
        alive = {p["Session"] for p in pairs if p.get("Session")}
        lock["Holders"] = {h: v for h, v in lock["Holders"].items() if h in alive}

    def _encode(self, lock: dict[str, Any]) -> bytes:
        # Go's json.Marshal of semaphoreLock: fields in order, map keys sorted, no spaces.
        body = {"Limit": lock["Limit"], "Holders": {k: lock["Holders"][k] for k in sorted(lock["Holders"])}}
        return json.dumps(body, separators=(",", ":")).encode()

    def _acquire(self, stop: threading.Event, sid: str) -> bool:
        contender = go_path_join(self.prefix, sid)
        try:
            params = [("acquire", sid), ("flags", str(SEMAPHORE_FLAG_VALUE))]
            made = self.client.put("/v1/kv/" + contender, params, b"").json()
        except APIError as exc:
            raise LockError(f"failed to make contender entry: {exc}") from None
        if not made:
            raise LockError("failed to make contender entry: <nil>")
        index = 0
        start = time.monotonic()
        attempts = 0
        while not stop.is_set():
            wait_s = self._wait_budget(start, attempts)
            if wait_s is None:
                return False
            attempts += 1
            try:
                pairs, meta_index = self._list(index, wait_s)
            except APIError as exc:
                raise LockError(f"failed to read prefix: {exc}") from None
            lock_pair = self._find_lock(pairs)
            if lock_pair.get("Flags") != SEMAPHORE_FLAG_VALUE:
                raise LockError("Existing key does not match semaphore use")
            lock = self._decode(lock_pair)
            if lock["Limit"] != self.limit:
                raise LockError(f"semaphore limit conflict (lock: {lock['Limit']}, local: {self.limit})")
            self._prune(lock, pairs)
            if len(lock["Holders"]) >= lock["Limit"]:
                index = meta_index
                continue
            lock["Holders"][sid] = True
            try:
                params = [("cas", str(lock_pair.get("ModifyIndex", 0))), ("flags", str(SEMAPHORE_FLAG_VALUE))]
                did_set = self.client.put("/v1/kv/" + self.lock_key, params, self._encode(lock)).json()
            except APIError as exc:
                raise LockError(f"failed to update lock: {exc}") from None
            if did_set:
                return True
            index = 0  # lost a race with another contender: read again at once
        return False

    def _still_held(self, sid: str, index: int) -> tuple[bool, int]:
        pairs, new_index = self._list(index, parse_duration(MONITOR_WAIT), consistent=True)
        lock = self._decode(self._find_lock(pairs))
        self._prune(lock, pairs)
        return sid in lock["Holders"], new_index

    def release(self) -> None:
        if not self.held or self.session is None:
            return
        self.held = False
        session, self.session = self.session, None
        sid = session.id
        try:
            while True:
                data, _ = self._read("/v1/kv/" + self.lock_key, [], 0, 0)
                pair = data[0] if data else {"ModifyIndex": 0, "Value": None}
                lock = self._decode(pair)
                if sid not in lock["Holders"]:
                    break
                del lock["Holders"][sid]
                params = [("cas", str(pair.get("ModifyIndex", 0))), ("flags", str(SEMAPHORE_FLAG_VALUE))]
                if self.client.put("/v1/kv/" + self.lock_key, params, self._encode(lock)).json():
                    break
            self.client.request("DELETE", "/v1/kv/" + go_path_join(self.prefix, sid))
        except APIError as exc:
            raise LockError(f"failed to update lock: {exc}") from None
        finally:
            session.close()

    def destroy(self) -> None:
        pairs, _ = self._list(0, 0)
        lock_pair = self._find_lock(pairs)
        if not lock_pair.get("ModifyIndex"):
            return
        if lock_pair.get("Flags") != SEMAPHORE_FLAG_VALUE:
            raise LockError("Existing key does not match semaphore use")
        lock = self._decode(lock_pair)
        self._prune(lock, pairs)
        if lock["Holders"]:
            raise InUse("Semaphore in use")
        removed = self.client.request(
            "DELETE", "/v1/kv/" + self.lock_key, [("cas", str(lock_pair["ModifyIndex"]))]
        ).json()
        if not removed:
            raise InUse("Semaphore in use")


def _parse_go_duration(text: str) -> float:
    value = parse_duration(text)
    return value


class LockCommand(Command):
    name = "lock"
    synopsis = "Execute a command holding a lock"
    http = HTTP_SERVER
    usage = """
Usage: proconsul lock [options] prefix child...

  Acquires a lock or semaphore at a given path, and invokes a child process
  when successful. The child process can assume the lock is held while it
  executes. If the lock is lost or communication is disrupted the child
  process will be sent a SIGTERM signal and given time to gracefully exit.
  After the grace period expires the process will be hard terminated.

  When -n=1, only a single lock holder or leader exists providing mutual
  exclusion. Setting a higher value switches to a semaphore allowing multiple
  holders to coordinate.

  The prefix provided must have write privileges.
"""

    def define(self, spec: FlagSpec) -> None:
        spec.bool(
            "child-exit-code",
            "Exit 2 if the child process exited with an error if this is true, otherwise this "
            "doesn't propagate an error from the child. The default value is false.",
        )
        spec.int(
            "n",
            "Optional limit on the number of concurrent lock holders. The underlying implementation "
            "switches from a lock to a semaphore when the value is greater than 1. The default value is 1.",
            default=1,
        )
        spec.int(
            "monitor-retry",
            "Number of times to retry if Consul returns a 500 error while monitoring the lock. The "
            "default value is 3, with a 1s wait between retries. Set this value to 0 to disable retires.",
            default=DEFAULT_MONITOR_RETRY,
        )
        spec.string(
            "name",
            "Optional name to associate with the lock session. It not provided, one is generated "
            "based on the provided child command.",
            default="",
        )
        spec.bool("pass-stdin", "Pass stdin to the child process.")
        spec.bool(
            "shell",
            "Use a shell to run the command (can set a custom shell via the SHELL environment variable).",
            default=True,
        )
        for flag, help_text in (
            ("timeout", "Maximum amount of time to wait to acquire the lock, specified as a duration "
                        'like "1s" or "3h". The default value is 0.'),
            ("try", "DEPRECATED. Use -timeout instead."),
        ):
            spec.flagset.custom(flag, _parse_go_duration, None, help_text)
            spec.doc(flag, help_text, "duration", COMMAND_SECTION)
        spec.bool("verbose", "Enable verbose (debugging) output.")

    def run(self, ctx: Context) -> int:
        o = ctx.opts
        ui = ctx.ui
        verbose = bool(o["verbose"])
        if o["n"] <= 0:
            ui.error("Lock holder limit must be positive")
            return 1
        if len(ctx.args) < 2:
            ui.error("Key prefix and child command must be specified")
            return 1
        prefix = ctx.args[0].removeprefix("/")
        child_args = list(ctx.args[1:])
        timeout = o["timeout"] if o["timeout"] is not None else (o["try"] or 0.0)
        if timeout < 0:
            ui.error("Timeout must be positive")
            return 1
        name = o["name"] or f"Consul lock for '{' '.join(child_args)}' at '{prefix}'"
        if o["monitor-retry"] < 0:
            ui.error("Number for 'monitor-retry' must be >= 0")
            return 1
        client = ctx.connect()
        if client is None:
            return 1
        try:
            client.get_json("/v1/agent/self")
        except APIError as exc:
            ui.error(f"Error querying Consul agent: {exc}")
            return 1
        oneshot = timeout > 0
        lu: _Base
        if o["n"] == 1:
            if verbose:
                ui.output(f"Setting up lock at path: {go_path_join(prefix, LOCK_KEY)}")
            lu = Lock(client, prefix, name, oneshot, timeout, o["monitor-retry"])
        else:
            if verbose:
                ui.output(f"Setting up semaphore (limit {o['n']}) at prefix: {prefix}")
            lu = Semaphore(client, prefix, o["n"], name, oneshot, timeout, o["monitor-retry"])
        return _Runner(ui, lu, child_args, bool(o["shell"]), bool(o["pass-stdin"]), verbose).run(
            bool(o["child-exit-code"])
        )


class _Runner:
    """Acquire, run the child, watch for shutdown / lock loss / child exit, release, clean up."""

    def __init__(self, ui: Any, lu: _Base, args: list[str], shell: bool, pass_stdin: bool, verbose: bool) -> None:
        self.ui = ui
        self.lu = lu
        self.args = args
        self.shell = shell
        self.pass_stdin = pass_stdin
        self.verbose = verbose
        self.shutdown = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def info(self, message: str) -> None:
        if self.verbose:
            self.ui.output(message)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.shutdown.set()
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)  # Consul forwards interrupts to the child
            except OSError:
                pass

    def _acquire(self) -> tuple[bool, str | None]:
        result: dict[str, Any] = {}

        def worker() -> None:
            try:
                result["held"] = self.lu.acquire(self.shutdown)
            except (LockError, APIError) as exc:
                result["error"] = str(exc)

        thread = threading.Thread(target=worker, name="lock-acquire", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if self.shutdown.is_set() and thread.is_alive():
                thread.join(1.0)  # give a just-won acquisition a moment to finish
                if thread.is_alive():
                    return False, None
        return bool(result.get("held")), result.get("error")

    def _start_child(self) -> subprocess.Popen[bytes] | None:
        self.info("Starting handler")
        if self.shell:
            argv = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(self.args)]
        else:
            argv = list(self.args)
        env = dict(os.environ, CONSUL_LOCK_HELD="true")
        if self.pass_stdin:
            self.info("Stdin passed to handler process")
        try:
            return subprocess.Popen(argv, env=env, stdin=None if self.pass_stdin else subprocess.DEVNULL)
        except OSError as exc:
            self.ui.error(f"Error starting handler: {exc}")
            return None

    def _kill_child(self) -> None:
        child = self.child
        if child is None:
            self.info("No child process to kill")
            return
        self.info(f"Terminating child pid {child.pid}")
        try:
            child.send_signal(signal.SIGTERM)
        except OSError as exc:
            self.ui.error(f"Failed to terminate {child.pid}: {exc}")
            return
        try:
            child.wait(KILL_GRACE_S)
            self.info("Child terminated")
            return
        except subprocess.TimeoutExpired:
            self.info(f"Child did not exit after grace period of {KILL_GRACE_S:g}s")
        self.info(f"Killing child pid {child.pid}")
        try:
            child.kill()
            child.wait()
        except OSError as exc:
            self.ui.error(f"Failed to kill {child.pid}: {exc}")

    def run(self, propagate_child_code: bool) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run(propagate_child_code)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _run(self, propagate_child_code: bool) -> int:
        self.info("Attempting lock acquisition")
        held, error = self._acquire()
        if not held:
            if error is None:
                self.ui.error("Shutdown triggered or timeout during lock acquisition")
            else:
                self.ui.error(f"Lock acquisition failed: {error}")
            return 1
        child_code = 0
        if self.shutdown.is_set():
            self.ui.error("Shutdown triggered during lock acquisition")
        else:
            self.child = self._start_child()
            while True:
                if self.child is None:
                    child_code = 2
                    self.info("Child terminated, releasing lock")
                    break
                code = self.child.poll()
                if code is not None:
                    if code != 0:
                        self.ui.error(f"Error running handler: exit status {code}" if code > 0
                                      else f"Error running handler: signal: {signal.Signals(-code).name}")
                        child_code = 2
                    self.info("Child terminated, releasing lock")
                    break
                if self.shutdown.is_set():
                    self.info("Shutdown triggered, killing child")
                    self._kill_child()
                    break
                if self.lu.lost.is_set():
                    self.info("Lock lost, killing child")
                    self._kill_child()
                    break
                time.sleep(0.05)
        try:
            self.lu.release()
        except (LockError, APIError) as exc:
            self.ui.error(f"Lock release failed: {exc}")
            return 1
        try:
            self.lu.destroy()
            self.info("Cleanup succeeded")
        except InUse:
            self.info("Cleanup aborted, lock in use")
        except (LockError, APIError) as exc:
            self.ui.error(f"Lock cleanup failed: {exc}")
            return 1
        return child_code if propagate_child_code else 0


COMMANDS: list[type[Command]] = [LockCommand]
