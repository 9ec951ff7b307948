"""A real mosquitto broker for tests: Debian's /usr/sbin/mosquitto on free loopback ports.

Never a mock: the MQTT layer's guarantees (retained status, last will, QoS 1 order, ACLs, TLS) are the
broker's behaviour as much as ours. :class:`MosquittoBroker` writes a config with four listeners:

- ``port``      open (anonymous) listener,
- ``auth_port`` password + ACL listener: docs/mosquitto/acl.conf plus the test families' blocks
  (made by ``bedtime-fleet family-acl``'s generator), and the shipped listener options,
- ``tls_port``  TLS (server certificate from a CA made at test time) + password + ACL,
- ``mtls_port`` TLS that requires a client certificate signed by the same CA.

Start-up takes tens of milliseconds; :meth:`restart` brings it back on the same ports.
:class:`BlackholeProxy` cuts the network between a box and the broker; :class:`Recorder`,
:class:`SimClock` and :func:`make_box` are the small test clients the MQTT tests share.
"""
from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.mqtt import BoxLink

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

#: The shipped broker configuration (the tests run exactly these rules and listener options).
DOCS_MOSQUITTO = Path(__file__).resolve().parents[1] / "docs" / "mosquitto"

#: Test families (Home Assistant accounts): name -> its boxes. box-c belongs to no family.
FAMILIES = {"smith": ["box-a"], "jones": ["box-b"]}

#: Test users: three boxes, the clinic console and one account per family.
USERS = {"box-a": "pw-a", "box-b": "pw-b", "box-c": "pw-c", "fleet": "pw-fleet",
         "family-smith": "pw-smith", "family-jones": "pw-jones"}


def shipped_acl() -> str:
    """docs/mosquitto/acl.conf followed by the families' blocks, made by ``bedtime-fleet family-acl``'s
    own generator: the ACL a clinic installs."""
    from appliance.fleet.broker_acl import family_acl

    return family_acl(list(FAMILIES.items()), base=(DOCS_MOSQUITTO / "acl.conf").read_text())


def shipped_listener_options() -> list[str]:
    """The non-path options of the network listener in docs/mosquitto/mosquitto.conf (e.g.
    ``allow_anonymous false``, ``use_username_as_clientid true``, ``tls_version tlsv1.2``), as lines."""
    out, inside = [], False
    for line in (DOCS_MOSQUITTO / "mosquitto.conf").read_text().splitlines():
        line = line.strip()
        if line.startswith("listener "):
            inside = line.split()[1] == "8883"
            continue
        if inside and line and not line.startswith("#") and line.split()[0] not in _PATH_OPTIONS:
            out.append(line)
    return out


# Options whose values are host paths: the test broker supplies its own files for these.
_PATH_OPTIONS = {"cafile", "certfile", "keyfile", "password_file", "acl_file"}


ACL = shipped_acl()


_PASSWD_CACHE: dict[tuple, str] = {}


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM the broker if the test process dies (no orphans
    left listening on a shared machine after a killed test run)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    A broker restarted on the same port must find it free again; ports from the ephemeral range can
    meanwhile be taken as the local port of any outgoing connection on the machine, so pick elsewhere.
    """
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


@dataclass(frozen=True)
class TestPKI:
    """A CA made at test time, a server certificate for 127.0.0.1/localhost and one client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path  # a CA that signed nothing here: for "wrong CA" tests


def make_pki(folder: Path, *, client_cn: str = "box-a") -> TestPKI:
    """Generate the test PKI with ``cryptography`` (EC P-256: fast to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def make_ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(cn: str, ca_key, ca_cert, *, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_key, ca_cert = make_ca("bedtime test CA")
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
    s_key, s_cert = make_leaf("localhost", ca_key, ca_cert, server=True)
    (folder / "server.crt").write_bytes(s_cert.public_bytes(pem))
    write_key(s_key, folder / "server.key")
    c_key, c_cert = make_leaf(client_cn, ca_key, ca_cert, server=False)
    (folder / "client.crt").write_bytes(c_cert.public_bytes(pem))
    write_key(c_key, folder / "client.key")
    _, other = make_ca("some other CA")
    (folder / "other-ca.crt").write_bytes(other.public_bytes(pem))
    return TestPKI(folder / "ca.crt", folder / "server.crt", folder / "server.key",
                   folder / "client.crt", folder / "client.key", folder / "other-ca.crt")


class MosquittoBroker:
    """Start/stop/restart a private mosquitto on free loopback ports.

    Parameters
    ----------
    workdir : Path
        Where the config, password file, ACL and log go.
    pki : TestPKI
        Certificates for the TLS listeners.
    extra_conf : str
        Appended to the generated config (e.g. ``max_connections -1`` for the load bench).
    """

    def __init__(self, workdir: Path, pki: TestPKI, *, extra_conf: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.host = "127.0.0.1"
        self.port, self.auth_port, self.tls_port, self.mtls_port = (free_port() for _ in range(4))
        self.users = dict(USERS)
        self.passwd_file = self.workdir / "passwd"
        self.acl_file = self.workdir / "acl.conf"
        self.conf_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen | None = None
        self._ever_started = False
        self._extra_conf = extra_conf
        self._write_files(extra_conf)

    def _write_files(self, extra_conf: str) -> None:
        key = tuple(sorted(self.users.items()))
        if key not in _PASSWD_CACHE:  # mosquitto_passwd once per process, not once per test
            self.passwd_file.write_text("")
            for user, pw in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.passwd_file), user, pw], check=True,
                               capture_output=True)
            _PASSWD_CACHE[key] = self.passwd_file.read_text()
        self.passwd_file.write_text(_PASSWD_CACHE[key])
        self.acl_file.write_text(ACL)
        # The shipped network listener's options (no anonymous, client id = user name), own files.
        opts = shipped_listener_options()
        plain_opts = "".join(f"{o}\n" for o in opts if not o.startswith("tls_"))
        auth = f"password_file {self.passwd_file}\nacl_file {self.acl_file}\n{plain_opts}"
        tls = f"cafile {self.pki.ca_file}\ncertfile {self.pki.server_cert}\nkeyfile {self.pki.server_key}\n"
        self.conf_file.write_text(
            f"# generated by tests/broker.py\n"
            f"per_listener_settings true\n"
            f"persistence true\npersistence_location {self.workdir}/\nset_tcp_nodelay true\n"
            f"log_dest file {self.log_file}\n"
            f"log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"user {getpass.getuser()}\n"
            f"{extra_conf}\n"
            f"listener {self.port} {self.host}\nallow_anonymous true\n\n"
            f"listener {self.auth_port} {self.host}\n{auth}\n"
            f"listener {self.tls_port} {self.host}\n{tls}{auth}\n"
            f"listener {self.mtls_port} {self.host}\n{tls}require_certificate true\n"
            f"use_identity_as_username true\nacl_file {self.acl_file}\n{plain_opts}"
        )

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 5.0, *, retries: int = 3) -> "MosquittoBroker":
        if self._proc is not None:
            raise RuntimeError("broker already running")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_file)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                if not self._ever_started and "in use" in (err + self.log()) and retries > 0:
                    # Someone took a port between free_port() and now: new ports, once more.
                    self.port, self.auth_port, self.tls_port, self.mtls_port = (free_port() for _ in range(4))
                    self._write_files(self._extra_conf)
                    return self.start(timeout_s, retries=retries - 1)
                raise RuntimeError(f"mosquitto exited at start: {err}\n{self.log()}")
            if all(self._port_open(p) for p in (self.port, self.auth_port, self.tls_port, self.mtls_port)):
                self._ever_started = True
                return self
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"mosquitto did not open its ports in {timeout_s} s\n{self.log()}")

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the broker (all clients see their connection drop)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s``, start again on the same ports."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> "MosquittoBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DocsBroker:
    """mosquitto started from docs/mosquitto/mosquitto.conf itself, only host paths and ports swapped.

    ``plain_port`` is the shipped loopback listener (password + ACL), ``tls_port`` the shipped network
    listener (TLS + password + ACL). The ACL is :func:`shipped_acl`; passwords are :data:`USERS`.
    """

    def __init__(self, workdir: Path, pki: TestPKI) -> None:
        import re

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        helper = MosquittoBroker(self.workdir / "files", pki)  # only for its password file
        acl = self.workdir / "bedtime.acl"
        acl.write_text(shipped_acl())
        conf = (DOCS_MOSQUITTO / "mosquitto.conf").read_text()
        subs = {"/etc/mosquitto/certs/ca.crt": pki.ca_file, "/etc/mosquitto/certs/server.crt": pki.server_cert,
                "/etc/mosquitto/certs/server.key": pki.server_key, "/etc/mosquitto/passwd": helper.passwd_file,
                "/etc/mosquitto/bedtime.acl": acl}
        for k, v in subs.items():
            if k not in conf:
                raise AssertionError(f"{k} no longer in docs/mosquitto/mosquitto.conf")
            conf = conf.replace(k, str(v))
        self.plain_port, self.tls_port = free_port(), free_port()
        conf = re.sub(r"^listener 1883 .*$", f"listener {self.plain_port} 127.0.0.1", conf, flags=re.M)
        conf = re.sub(r"^listener 8883.*$", f"listener {self.tls_port} 127.0.0.1", conf, flags=re.M)
        conf = re.sub(r"^persistence_location .*$", f"persistence_location {self.workdir}/", conf, flags=re.M)
        conf = re.sub(r"^log_dest .*$", f"log_dest file {self.workdir / 'mosquitto.log'}", conf, flags=re.M)
        conf += f"\nuser {getpass.getuser()}\nlog_type information\n"
        self.conf_file = self.workdir / "docs.conf"
        self.conf_file.write_text(conf)
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> "DocsBroker":
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_file)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise RuntimeError(f"mosquitto (docs config) exited at start: {err}\n{self.log()}")
            if all(_port_open(self.host, p) for p in (self.plain_port, self.tls_port)):
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"mosquitto (docs config) did not open its ports\n{self.log()}")

    def log(self) -> str:
        f = self.workdir / "mosquitto.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def __enter__(self) -> "DocsBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class BlackholeProxy:
    """A loopback TCP proxy between a client and the broker that can silently drop all traffic.

    ``cut()`` models a network cut the way Wi-Fi or a pulled uplink does it: bytes vanish, nothing is
    refused or reset, so the client must notice by itself (MQTT keepalive). New connections during the
    cut are accepted and then hear nothing. ``heal()`` forwards again and closes the pairs one side of
    which closed during the cut (their FIN was lost with everything else).

    Written by hand (selectors, one thread) because no maintained package offers a fault-injecting
    proxy without extra services; it is test-only.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        import selectors

        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._half_closed: set[socket.socket] = set()
        self.blackholed = False
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            self.blackholed = True

    def heal(self) -> None:
        with self._lock:
            self.blackholed = False
            for s in list(self._half_closed):
                self._close_pair(s)
            self._half_closed.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in list(self._peer):
            s.close()
        self._listener.close()

    def _close_pair(self, s: socket.socket) -> None:
        other = self._peer.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self._peer.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def _run(self) -> None:
        import selectors

        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                with self._lock:
                    if key.fileobj is self._listener:
                        try:
                            c, _ = self._listener.accept()
                        except BlockingIOError:
                            continue
                        try:
                            u = socket.create_connection(self.upstream, timeout=2)
                        except OSError:
                            c.close()  # broker down: the client sees a refused/closed connection
                            continue
                        for x in (c, u):
                            x.setblocking(True)
                            self._sel.register(x, selectors.EVENT_READ, None)
                        self._peer[c], self._peer[u] = u, c
                        continue
                    s = key.fileobj
                    if s not in self._peer:
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if self.blackholed:
                        self.dropped_bytes += len(data)
                        if not data:  # EOF during the cut: the FIN is lost too
                            self._sel.unregister(s)
                            self._half_closed.add(s)
                        continue
                    if not data:
                        self._close_pair(s)
                        continue
                    try:
                        self._peer[s].sendall(data)
                    except OSError:
                        self._close_pair(s)



class Recorder:
    """A plain paho subscriber that records (topic, decoded payload, retain) in arrival order.

    ``persistent=True`` keeps its session (subscriptions and queued QoS 1 messages) at the broker
    across its own and the broker's restarts, as a clinic console does.
    """

    def __init__(self, host: str, port: int, topics: list[str], *, username: str | None = None,
                 password: str | None = None, persistent: bool = False, tls_ca: str | None = None) -> None:
        self.messages: list[tuple[str, dict | None, bool]] = []
        self.cond = threading.Condition()
        self.topics = topics
        self.granted: list = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        if username:
            self.c.username_pw_set(username, password)
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca)
        self.c.reconnect_delay_set(0.05, 0.2)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed(rcs)
        self._sub = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if persistent else 0
        self.c.connect(host, port, clean_start=not persistent, properties=props, keepalive=5)
        self.c.loop_start()
        assert self._sub.wait(5), "recorder could not subscribe"

    def _subscribed(self, rcs) -> None:
        self.granted = list(rcs)
        self._sub.set()

    def _on_connect(self, c, u, flags, rc, props) -> None:
        c.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, c, u, m) -> None:
        try:
            p = json.loads(m.payload) if m.payload else None
        except ValueError:
            p = None
        with self.cond:
            self.messages.append((m.topic, p, bool(m.retain)))
            self.cond.notify_all()

    def of(self, suffix: str) -> list[dict]:
        with self.cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix) and p is not None]

    def wait_for(self, pred, timeout_s: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout_s)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class RawRecorder:
    """A plain paho subscriber keeping every message as (topic, raw bytes, retain), in arrival order: for
    payloads that are not JSON (the plain-text alert copy) and for counting retained deliveries."""

    def __init__(self, host: str, port: int, topics: list[str], *, username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        if username:
            self.c.username_pw_set(username, password)
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        assert subscribed.wait(10), "raw recorder could not subscribe"

    def _on_message(self, c, u, m) -> None:
        with self.cond:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cond.notify_all()

    def wait_for(self, pred, timeout_s: float = 10.0) -> bool:
        """Wait until ``pred(messages)`` holds (or the timeout); return whether it does."""
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.messages), timeout_s)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class SimClock:
    """A UTC clock the test moves by hand (drives hours of 'night' in seconds)."""

    def __init__(self, start: datetime = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)) -> None:
        self.t = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += timedelta(seconds=seconds)


def make_box(tmp: Path, box_id: str, host: str, port: int, **kw) -> BoxLink:
    kw.setdefault("keepalive_s", 5)
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.5)
    return BoxLink(box_id=box_id, host=host, port=port, outbox_path=tmp / f"{box_id}-outbox.sqlite",
                   firmware_version="0.1.0", model_versions={"stager": "s1", "loops": "l1"}, **kw)


def wait_until(pred, timeout_s: float = 10.0, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())


def seqs(payloads: list[dict]) -> list[int]:
    return [p["seq"] for p in payloads]


def collapse_redeliveries(xs: list[int]) -> list[int]:
    """Drop QoS 1 re-deliveries: a seq equal to one already seen (at-least-once semantics)."""
    out, seen = [], set()
    for x in xs:
        if x not in seen:
            out.append(x)
            seen.add(x)
    return out
