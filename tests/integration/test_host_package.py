"""The host package on a real systemd: build the .deb/.rpm, boot Debian 12 in systemd-nspawn.

A minimal Debian 12 root (debootstrap, from the same mirror as this machine's apt sources) is
cached in CACHE and copied for each run; `systemd-nspawn --boot --private-network` boots it, and
commands run inside through `nsenter` (this machine's PID 1 is not systemd, so there is no
machined and no `machinectl`). The deb is installed with no network in the container, which
shows it installs offline from the file alone.

The two-node check boots two copies, each in a network namespace this test creates, joined only
by a veth pair (addresses exist only inside those namespaces): one a `bootstrap_expect = 1`
server, the other a client joining it, both configured by drop-ins and started by systemd.

Needs root, systemd-nspawn (systemd-container), debootstrap, rpm, nsenter and ip; scripts/setup-env
test installs them. Where they cannot be had (not root) the test skips, except under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, wait_for

CACHE = Path(os.environ.get("PROCONSUL_TEST_CACHE", "/var/cache/proconsul-tests"))
BASE_PACKAGES = "systemd,systemd-sysv,dbus,rsyslog,logrotate,curl,procps"
BASE = CACHE / f"debian12-{BASE_PACKAGES.replace(',', '_')}"
INSIDE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap)"
    for tool in ("systemd-nspawn", "debootstrap", "rpm", "nsenter", "dpkg-deb", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/setup-env test"
    return ""


pytestmark = [
    pytest.mark.skipif(bool(_missing()) and not os.environ.get("CI"), reason=_missing() or "ok"),
    # The first test also pays for the package build (PyInstaller, minutes on a loaded 2-core box)
    # and, on a fresh machine, the debootstrap.
    pytest.mark.timeout(900),
]


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap must use the same one)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        text = path.read_text()
        for block in text.split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm\b(?!-)", block, re.M) and "debian-security" not in block:
                m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if m:
                    return m.group(1)
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
                if m:
                    return m.group(1)
    raise AssertionError("no Debian bookworm mirror in /etc/apt/sources.list*")


def ensure_base() -> Path:
    if (BASE / "usr/lib/systemd/systemd").exists():
        return BASE
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(tmp), apt_mirror()],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )
    tmp.chmod(0o755)  # mkdtemp made it 0700; it becomes the containers' `/`
    tmp.rename(BASE)
    return BASE


def copy_base(base: Path, root: Path) -> None:
    """A fresh container root from the cached base.

    The root directory must be 0755: the base is a renamed mkdtemp (0700), and with a 0700 `/`
    no unprivileged user inside can reach anything (dbus-daemon never gets ready, logind waits
    on it and the boot never ends; the proconsul service fails with status 200/CHDIR).
    """
    subprocess.run(["cp", "-a", str(base), str(root)], check=True)
    root.chmod(0o755)


@pytest.fixture(scope="module")
def packages() -> Iterator[dict[str, Path]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="proconsul-build-") as tmp:
        env = dict(os.environ, PROCONSUL_BUILD_VENV=str(CACHE / "pkgvenv"),
                   PROCONSUL_BUILD_DIR=f"{tmp}/build", PROCONSUL_DIST_DIR=f"{tmp}/dist")
        out = subprocess.run(
            ["bash", str(REPO / "packaging/build.sh")], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stdout + out.stderr[-5000:]
        found = {}
        for line in out.stdout.split():
            if line.endswith(".deb"):
                found["deb"] = Path(line)
            elif line.endswith(".rpm"):
                found["rpm"] = Path(line)
        assert set(found) == {"deb", "rpm"}, out.stdout
        yield found


class Container:
    """A booted Debian 12 container; `run` executes a shell command inside through nsenter."""

    def __init__(self, root: Path, name: str, network: tuple[str, ...] = ("--private-network",)) -> None:
        self.root = root
        self.name = name
        self.network = network  # nspawn's networking options
        self.log_path = root.parent / f"{name}.console"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def start(self) -> Container:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                 *self.network, f"--machine={self.name}", f"--hostname={self.name}", "--console=read-only"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

        def leader() -> int:
            # nspawn's first child is a short-lived helper that forks the container's init and
            # exits; only a child already running systemd is the init to enter (taking the
            # helper left every later nsenter failing against a dead PID).
            assert self.proc is not None and self.proc.poll() is None, self.console()
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for child in children:
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
                except OSError:
                    continue  # exited meanwhile
            return 0

        self.leader = wait_for(leader, timeout=30, what="the container's init")
        # Generous: on a loaded 2-core CI machine a boot job can take minutes. On failure the
        # message shows the jobs still queued, which name what held the boot up.
        wait_for(
            lambda: self.run("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"),
            timeout=300,
            what=lambda: f"the container to boot\n{self.console()}\n"
                         f"{self._jobs()}",
        )
        return self

    def _jobs(self) -> str:
        out = self.run("systemctl list-jobs --no-pager", check=False)
        return f"{out.stdout}{out.stderr}(exit {out.returncode})"

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def run(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "sh", "-c", command],
            capture_output=True, text=True, env=INSIDE_ENV, timeout=timeout,
        )
        if check:
            assert out.returncode == 0, f"{command!r} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader > 0:
            self.run("systemctl poweroff --no-block", check=False)
        try:
            self.proc.wait(60 if self.leader > 0 else 1)
        except subprocess.TimeoutExpired:
            # Killing the container's init ends its PID namespace; nspawn then exits. (Never
            # kill(0): that would be this test's own process group.)
            if self.leader > 0:
                try:
                    os.kill(self.leader, 9)
                except ProcessLookupError:
                    pass
            else:
                self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def container(packages: dict[str, Path]) -> Iterator[Container]:
    base = ensure_base()
    with tempfile.TemporaryDirectory(prefix="proconsul-nspawn-", dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        copy_base(base, root)
        shutil.copy(packages["deb"], root / "root/proconsul.deb")
        box = Container(root, "pctest").start()
        try:
            yield box
        finally:
            box.stop()


def test_rpm_contents_and_scripts(packages: dict[str, Path]) -> None:
    files = subprocess.run(["rpm", "-qlp", str(packages["rpm"])], capture_output=True, text=True, check=True).stdout
    for path in ("/usr/bin/proconsul", "/opt/proconsul/proconsul", "/usr/lib/systemd/system/proconsul.service",
                 "/etc/proconsul.d/proconsul.hcl", "/etc/rsyslog.d/30-proconsul.conf", "/etc/logrotate.d/proconsul",
                 "/etc/sysconfig/proconsul"):
        assert path in files.split("\n"), path
    # The unit's environment file where RHEL expects it; /etc/default is Debian's (the .deb's).
    assert "/etc/default/proconsul" not in files.split("\n")
    config = subprocess.run(["rpm", "-qp", "--configfiles", str(packages["rpm"])],
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(config) == ["/etc/logrotate.d/proconsul", "/etc/proconsul.d/proconsul.hcl",
                              "/etc/rsyslog.d/30-proconsul.conf", "/etc/sysconfig/proconsul"]
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(packages["rpm"])],
                             capture_output=True, text=True, check=True).stdout
    for part in ("preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet",
                 "useradd --system", "systemctl daemon-reload", "systemctl stop proconsul.service"):
        assert part in scripts, part


def test_deb_contents(packages: dict[str, Path]) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(packages["deb"])], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/proconsul -> /opt/proconsul/proconsul" in listing
    assert "./etc/sysconfig/" not in listing  # the rpm's place for the environment file
    control = subprocess.run(["dpkg-deb", "-I", str(packages["deb"])], capture_output=True, text=True, check=True).stdout
    for name in ("preinst", "postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"\b{name}\b", control), name
    conffiles = subprocess.run(["dpkg-deb", "--info", str(packages["deb"]), "conffiles"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert sorted(conffiles) == ["/etc/default/proconsul", "/etc/logrotate.d/proconsul",
                                 "/etc/proconsul.d/proconsul.hcl", "/etc/rsyslog.d/30-proconsul.conf"]


def _reloads_logged(box: Container) -> int:
    text = box.run("cat /var/log/proconsul/proconsul.log /var/log/proconsul/proconsul.log.1 2>/dev/null",
                   check=False).stdout
    return text.count("agent: reloaded configuration")


# Ubuntu's rsyslog, on the Debian container: it drops to the user `syslog` (group adm), and the
# files it creates are syslog:adm. Debian's rsyslog runs as root (the two-container test keeps it).
UBUNTU_LIKE_RSYSLOG = """$PrivDropToUser syslog
$PrivDropToGroup syslog
$FileOwner syslog
$FileGroup adm
"""


def test_deb_on_real_systemd(container: Container) -> None:
    box = container
    box.run("useradd --system --user-group --no-create-home --shell /usr/sbin/nologin syslog && "
            "usermod -a -G adm syslog && "
            f"cat > /etc/rsyslog.d/00-ubuntu-like.conf <<'EOF'\n{UBUNTU_LIKE_RSYSLOG}EOF\n"
            "systemctl restart rsyslog")
    wait_for(lambda: box.run("ps -o user= -C rsyslogd", check=False).stdout.strip() == "syslog", timeout=30,
             what=lambda: "rsyslogd running as syslog: " + box.run("ps -o user=,args= -C rsyslogd", check=False).stdout)
    # RHEL's environment file: the unit reads it when present (on any distribution).
    box.run("mkdir -p /etc/sysconfig && echo PROCONSUL_TEST_SYSCONFIG=read > /etc/sysconfig/proconsul")
    # Offline install from the file alone: the container has no network.
    box.run("apt-get install -y -q /root/proconsul.deb", timeout=300)
    # Written by the syslog daemon's user: syslog here (Ubuntu), root on Debian and RHEL.
    assert box.run("stat -c '%a %U:%G' /var/log/proconsul").stdout.strip() == "750 syslog:adm"
    assert box.run("getent passwd proconsul").stdout.startswith("proconsul:")
    assert box.run("stat -c %U /var/lib/proconsul").stdout.strip() == "proconsul"
    # Where TLS certificates go (docs/TLS.md): readable by the agent's group only.
    assert box.run("stat -c '%a %U:%G' /etc/proconsul.d/tls").stdout.strip() == "750 root:proconsul"
    assert box.run("systemctl is-enabled proconsul", check=False).stdout.strip() == "disabled"
    assert box.run("systemctl is-active proconsul", check=False).stdout.strip() == "inactive"
    verify = box.run("systemd-analyze verify /usr/lib/systemd/system/proconsul.service", check=False)
    assert verify.returncode == 0 and "proconsul.service" not in verify.stderr, verify.stderr

    # The web UI and the Prometheus format, turned on by drop-ins (the shipped config leaves both
    # off, as Consul's does).
    box.run("printf 'ui_config {\\n  enabled = true\\n}\\n' > /etc/proconsul.d/ui.hcl && "
            "printf 'telemetry {\\n  prometheus_retention_time = \"60s\"\\n  disable_hostname = true\\n}\\n' "
            "> /etc/proconsul.d/telemetry.hcl && "
            "chgrp proconsul /etc/proconsul.d/*.hcl && chmod 0640 /etc/proconsul.d/*.hcl")

    # Type=notify: `systemctl start` returns once READY=1 arrived.
    box.run("systemctl start proconsul", timeout=120)
    assert box.run("systemctl is-active proconsul").stdout.strip() == "active"
    status = box.run("systemctl show -p StatusText --value proconsul").stdout
    assert status.startswith("serving"), status
    assert box.run("curl -sf http://127.0.0.1:8500/v1/agent/self").stdout.startswith("{")
    wait_for(lambda: box.run("curl -sf http://127.0.0.1:8500/v1/status/leader").stdout.strip() not in ('""', ""),
             timeout=60, what="a leader")
    # The UI's assets travel in the frozen tree: the page, a deep link and a module.
    assert "301" in box.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8500/").stdout
    assert '<base href="/ui/">' in box.run("curl -sf http://127.0.0.1:8500/ui/dc1/nodes").stdout
    assert "X-Consul-Token" in box.run("curl -sf http://127.0.0.1:8500/ui/assets/js/api.js").stdout
    # Metrics from the installed service, read as Prometheus reads them.
    scrape = box.run("curl -sf 'http://127.0.0.1:8500/v1/agent/metrics?format=prometheus'").stdout
    samples = {s.name: s.value for f in text_string_to_metric_families(scrape) for s in f.samples if not s.labels}
    assert samples["consul_raft_state_leader"] >= 1 and samples["consul_runtime_alloc_bytes"] > 0, scrape[-2000:]
    assert "consul_raft_commitTime_count" in samples and "consul_autopilot_failure_tolerance" in samples
    pid = box.run("systemctl show -p MainPID --value proconsul").stdout.strip()
    assert box.run("cat /run/proconsul/proconsul.pid").stdout.strip() == pid
    assert "PROCONSUL_TEST_SYSCONFIG=read" in box.run(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout

    # A drop-in service appears after `systemctl reload`.
    box.run("printf 'service {\\n  name = \"web\"\\n  port = 80\\n}\\n' > /etc/proconsul.d/web.hcl && "
            "chgrp proconsul /etc/proconsul.d/web.hcl && chmod 0640 /etc/proconsul.d/web.hcl")
    box.run("systemctl reload proconsul")
    wait_for(lambda: '"web"' in box.run("curl -sf http://127.0.0.1:8500/v1/catalog/services").stdout,
             timeout=60, what="service web in the catalog")
    assert box.run("systemctl is-active proconsul").stdout.strip() == "active"

    # Log lines reach /var/log/proconsul/proconsul.log through rsyslog (facility LOCAL0).
    wait_for(lambda: "agent: started" in box.run("cat /var/log/proconsul/proconsul.log", check=False).stdout,
             timeout=90, what=lambda: _syslog_chain(box))

    assert box.run("stat -c %U:%G /var/log/proconsul/proconsul.log").stdout.strip() == "syslog:adm"

    # logrotate -f between reloads loses no line, without Debian's rsyslog-rotate helper (RHEL
    # has none): the new file is written only if rsyslog reopened its files.
    box.run("rm -f /usr/lib/rsyslog/rsyslog-rotate")
    reloads = 1
    for i in range(6):
        if i == 3:
            box.run("logrotate -f /etc/logrotate.d/proconsul")
        box.run("systemctl reload proconsul")
        reloads += 1
    wait_for(lambda: _reloads_logged(box) == reloads, timeout=30,
             what=lambda: f"{reloads} reload lines across the rotated files, got {_reloads_logged(box)}")
    assert box.run("test -s /var/log/proconsul/proconsul.log.1 && test -s /var/log/proconsul/proconsul.log",
                   check=False).returncode == 0
    assert box.run("stat -c '%a %U:%G' /var/log/proconsul/proconsul.log").stdout.strip() == "640 syslog:adm"

    # systemctl stop: graceful, exit 0, pid file removed.
    box.run("systemctl stop proconsul", timeout=60)
    show = box.run("systemctl show -p Result -p ExecMainStatus proconsul").stdout
    assert "Result=success" in show and "ExecMainStatus=0" in show, show
    assert box.run("test -e /run/proconsul/proconsul.pid", check=False).returncode != 0
    journal = box.run("journalctl -u proconsul --no-pager -o cat").stdout
    assert "agent: stopped" in journal and "Logging error" not in journal, journal[-3000:]
    assert "Traceback" not in journal, journal[-3000:]  # a clean SIGTERM (issue 20)
    # Structured journal fields from python-systemd (bundled in the package).
    assert "agent: started" in box.run("journalctl --no-pager -o cat PROCONSUL_MODULE=agent").stdout

    # remove keeps config, data and user; purge removes them.
    box.run("systemctl start proconsul", timeout=120)
    box.run("apt-get remove -y -q proconsul", timeout=120)
    assert box.run("systemctl is-active proconsul", check=False).stdout.strip() != "active"
    assert box.run("test -e /usr/bin/proconsul", check=False).returncode != 0
    box.run("test -f /etc/proconsul.d/proconsul.hcl && test -d /var/lib/proconsul && getent passwd proconsul")
    box.run("apt-get purge -y -q proconsul", timeout=120)
    assert box.run("getent passwd proconsul", check=False).returncode != 0
    assert box.run("test -e /var/lib/proconsul || test -e /etc/proconsul.d", check=False).returncode != 0


# --------------------------------------------------------------------------- two-node cluster


class PrivateLink:
    """Two network namespaces of this test joined by a veth pair: the only network two
    containers share. Addresses exist only inside these namespaces; deleting them deletes the
    pair."""

    def __init__(self) -> None:
        tag = f"pc{os.getpid() % 100000}"
        self.namespaces = [f"{tag}-a", f"{tag}-b"]
        self.subnet = f"10.213.{os.getpid() % 250 + 1}"
        self.addresses = [f"{self.subnet}.1", f"{self.subnet}.2"]
        self.created: list[str] = []

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def create(self) -> PrivateLink:
        for ns in self.namespaces:
            self._ip("netns", "add", ns)
            self.created.append(ns)
        a, b = self.namespaces
        self._ip("-n", a, "link", "add", "pcl0", "type", "veth", "peer", "name", "pcl1", "netns", b)
        for ns, dev, addr in zip(self.namespaces, ("pcl0", "pcl1"), self.addresses, strict=True):
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
        return self

    def nspawn_args(self, i: int) -> tuple[str, ...]:
        return (f"--network-namespace-path=/run/netns/{self.namespaces[i]}",)

    def delete(self) -> None:
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()


def _syslog_chain(box: Container) -> str:
    """What the syslog path inside `box` shows, for a failure message: the file's tail, the
    daemons' state, and journald's own word on messages it could not forward."""
    return f"the agent's lines in rsyslog's file on {box.name}\n" + box.run(
        "tail -n 20 /var/log/proconsul/proconsul.log; systemctl is-active rsyslog syslog.socket; "
        "journalctl -b --no-pager -o cat -u systemd-journald -u rsyslog | tail -n 20; "
        "journalctl -b --no-pager -o cat -t proconsul | grep -c .", check=False).stdout[-4000:]


def _members_table(box: Container) -> dict[str, str]:
    """`proconsul members` inside a container as {node: status}."""
    out = box.run("proconsul members", check=False)
    if out.returncode != 0:
        return {}
    rows = [line.split() for line in out.stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[2] for row in rows}


# The shipped proconsul.hcl is a bootstrapping server on loopback; these drop-ins turn one host
# into a `bootstrap_expect = 1` server and the other into a client joining it. They override
# settings proconsul.hcl sets, so their names sort after it (files are merged in lexical order).
SERVER_DROP_IN = """bootstrap        = false
bootstrap_expect = 1
bind_addr        = "{addr}"
"""
CLIENT_DROP_IN = """server         = false
bootstrap      = false
bind_addr      = "{addr}"
retry_join     = ["{server}"]
retry_interval = "2s"
service {{
  name = "web"
  port = 80
}}
"""


@pytest.mark.timeout(900)  # two boots and two installs on a small shared machine
def test_two_containers_form_a_cluster(packages: dict[str, Path]) -> None:
    base = ensure_base()
    link = PrivateLink()
    boxes: list[Container] = []
    with tempfile.TemporaryDirectory(prefix="proconsul-nspawn2-", dir=CACHE) as tmp:
        try:
            link.create()
            for i, name in enumerate(("pc2srv", "pc2cli")):
                root = Path(tmp) / name
                copy_base(base, root)
                shutil.copy(packages["deb"], root / "root/proconsul.deb")
                (root / "etc/hostname").write_text(f"{name}\n")  # the node name: one per host
                boxes.append(Container(root, name, network=link.nspawn_args(i)))
            with ThreadPoolExecutor(len(boxes)) as pool:  # both boot and install side by side
                list(pool.map(Container.start, boxes))
                list(pool.map(lambda box: box.run("apt-get install -y -q /root/proconsul.deb", timeout=300), boxes))
            server, client = boxes
            server_addr, client_addr = link.addresses
            for box, text in ((server, SERVER_DROP_IN.format(addr=server_addr)),
                              (client, CLIENT_DROP_IN.format(addr=client_addr, server=server_addr))):
                box.run(f"cat > /etc/proconsul.d/role.hcl <<'EOF'\n{text}EOF\n"
                        "chgrp proconsul /etc/proconsul.d/role.hcl && chmod 0640 /etc/proconsul.d/role.hcl")

            # Debian's rsyslog runs as root: the log directory is root's, readable by adm.
            assert server.run("stat -c '%a %U:%G' /var/log/proconsul").stdout.strip() == "750 root:adm"
            server.run("systemctl start proconsul", timeout=120)
            wait_for(lambda: server.run("curl -sf http://127.0.0.1:8500/v1/status/leader").stdout.strip()
                     == f'"{server_addr}:8300"', timeout=90,
                     what=lambda: "the server to lead\n" + server.run("journalctl -u proconsul --no-pager -o cat",
                                                                      check=False).stdout[-3000:])
            client.run("systemctl start proconsul", timeout=120)
            assert client.run("systemctl is-active proconsul").stdout.strip() == "active"
            wait_for(lambda: "agent: started" in server.run("cat /var/log/proconsul/proconsul.log",
                                                            check=False).stdout,
                     timeout=90, what=lambda: _syslog_chain(server))

            both = {"pc2srv": "alive", "pc2cli": "alive"}
            for box in boxes:
                wait_for(lambda box=box: _members_table(box) == both, timeout=90,
                         what=lambda box=box: f"both members alive on {box.name}: {_members_table(box)}\n"
                         + box.run("journalctl -u proconsul --no-pager -o cat", check=False).stdout[-3000:])
            # The client's service reached the server's catalog (anti-entropy through the server).
            wait_for(lambda: '"pc2cli"' in server.run("curl -sf http://127.0.0.1:8500/v1/catalog/service/web",
                                                      check=False).stdout,
                     timeout=90, what="the client's web service in the server's catalog")
            status = client.run("systemctl show -p StatusText --value proconsul").stdout
            assert status.startswith("serving as a client"), status

            # systemctl stop on the client: it leaves (leave_on_terminate is true on clients),
            # exits 0, and the server lists it as left and drops it from the catalog.
            client.run("systemctl stop proconsul", timeout=60)
            show = client.run("systemctl show -p Result -p ExecMainStatus proconsul").stdout
            assert "Result=success" in show and "ExecMainStatus=0" in show, show
            wait_for(lambda: _members_table(server).get("pc2cli") == "left", timeout=60,
                     what=lambda: f"the client left: {_members_table(server)}")
            wait_for(lambda: server.run("curl -sf http://127.0.0.1:8500/v1/catalog/service/web").stdout.strip()
                     == "[]", timeout=60, what="the client's service deregistered")
        finally:
            for box in boxes:
                box.stop()
            link.delete()
