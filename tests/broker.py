"""A real mosquitto broker for tests: Debian's /usr/sbin/mosquitto on free loopback ports.

Never a mock: the MQTT layer's guarantees (retained status, last will, QoS 1 order, ACLs, TLS) are the
broker's behaviour as much as ours. :class:`MosquittoBroker` writes a config with four listeners:

- ``port``      open (anonymous) listener,
- ``auth_port`` password + pattern ACL listener (docs/mosquitto/acl.conf, the same patterns),
- ``tls_port``  TLS (server certificate from a CA made at test time) + password + ACL,
- ``mtls_port`` TLS that requires a client certificate signed by the same CA.

Start-up takes tens of milliseconds; :meth:`restart` brings it back on the same ports.
"""
from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

#: Test users: two boxes, the clinic console, and Home Assistant.
USERS = {"box-a": "pw-a", "box-b": "pw-b", "fleet": "pw-fleet", "homeassistant": "pw-ha"}

# The same rules as docs/mosquitto/acl.conf (test_mqtt_security checks they stay the same).
ACL = """\
# clinic console: reads every box, writes config and commands, reads replies
user fleet
topic read bedtime/v1/#
topic write bedtime/v1/+/config
topic write bedtime/v1/+/cmd/#

# Home Assistant: reads every box and discovery
user homeassistant
topic read bedtime/v1/#
topic read homeassistant/#

# every box (user name = box id): its own subtree only, plus its own discovery configs
pattern readwrite bedtime/v1/%u/#
pattern write homeassistant/+/%u/#
"""


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self._write_files(extra_conf)

    def _write_files(self, extra_conf: str) -> None:
        self.passwd_file.write_text("")
        for user, pw in self.users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.passwd_file), user, pw], check=True,
                           capture_output=True)
        self.acl_file.write_text(ACL)
        auth = f"password_file {self.passwd_file}\nacl_file {self.acl_file}\nallow_anonymous false\n"
        tls = f"cafile {self.pki.ca_file}\ncertfile {self.pki.server_cert}\nkeyfile {self.pki.server_key}\n"
        self.conf_file.write_text(
            f"# generated by tests/broker.py\n"
            f"per_listener_settings true\n"
            f"persistence false\n"
            f"log_dest file {self.log_file}\n"
            f"log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"user {getpass.getuser()}\n"
            f"{extra_conf}\n"
            f"listener {self.port} {self.host}\nallow_anonymous true\n\n"
            f"listener {self.auth_port} {self.host}\n{auth}\n"
            f"listener {self.tls_port} {self.host}\n{tls}{auth}\n"
            f"listener {self.mtls_port} {self.host}\n{tls}require_certificate true\n"
            f"use_identity_as_username true\nacl_file {self.acl_file}\nallow_anonymous false\n"
        )

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 5.0) -> "MosquittoBroker":
        if self._proc is not None:
            raise RuntimeError("broker already running")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_file)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start: {err}\n{self.log()}")
            if all(self._port_open(p) for p in (self.port, self.auth_port, self.tls_port, self.mtls_port)):
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
