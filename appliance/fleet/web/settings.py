"""Settings of one clinic console instance (``bedtime-fleet serve``)."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from appliance.fleet.db import default_database_url
from appliance.protocol.userfiles import MAX_KEY_FILE_BYTES
from appliance.protocol.updates import MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES
from appliance.protocol.userfiles import UserFileError, read_user_file, read_user_text


@dataclass
class ConsoleSettings:
    """Everything :func:`appliance.fleet.web.create_app` needs.

    Attributes
    ----------
    database_url : str
        SQLAlchemy URL. ``sqlite:///<path>`` for one console; ``postgresql+psycopg://...`` when several
        console instances share one database.
    secret_key : str or None
        Key that signs session cookies. Every instance behind one address must share it. When None, it is
        read from ``secret_key_file`` (created with a random key, mode 0600, if missing).
    secret_key_file : Path or None
        Where the session key lives when ``secret_key`` is None.
    https_only : bool
        Mark the session cookie ``Secure`` (default True; turn off only for plain-HTTP loopback tests).
    session_max_age_s : float
        A login lasts this long, seconds.
    login_max_failures, login_window_s : int, float
        Login rate limit: this many failures per user name, and per client address, in the window.
    mqtt_host, mqtt_port, mqtt_username, mqtt_password, mqtt_tls_ca : ...
        The broker the console's :class:`~appliance.fleet.ingest.FleetIngest` connects to (``mqtt_host``
        None: no ingest, e.g. a read-only replica or tests that inject their own).
    share_group : str
        MQTT v5 shared-subscription group; console instances in one group split the ingest.
    signing_key_file : Path or None
        The clinic's Ed25519 private key (``bedtime-fleet keys``); the console signs configs pushed from the
        config editor with it. Without it, config pushes and server-side signing are disabled.
    public_key_file : Path or None
        The matching public key; uploads whose manifest does not verify against it are refused early.
    command_timeout_s : float
        How long to wait for a box's reply to a command (config push, update), seconds.
    rollout_health_timeout_s : float
        How long a rollout waits for one box's answer, which includes its health check (the daemon watches
        the stager produce epochs after a model update), seconds.
    rollout_batch_size : int
        After the canaries, boxes are updated in batches of this size; a failure stops the rollout.
    trusted_proxies : tuple of str
        Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``) of reverse proxies whose
        ``X-Forwarded-For`` is believed. Default none: the client address is the TCP peer, because a
        header anyone can send would let anyone pose as (and lock out) any address.
    max_request_bytes : int
        Largest rollout upload request accepted, bytes: the largest payload and manifest a box accepts,
        plus 1 MiB for the form; larger is a 413 (every other request: 1 MiB).
    login_attempts_keep_s : float
        Login attempts older than this are deleted (the rate limit needs only its window), seconds.
    """

    database_url: str = field(default_factory=default_database_url)
    secret_key: str | None = None
    secret_key_file: Path | None = None
    https_only: bool = True
    session_max_age_s: float = 8 * 3600.0
    login_max_failures: int = 5
    login_window_s: float = 300.0
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls_ca: str | None = None
    share_group: str = "bedtime-console"
    signing_key_file: Path | None = None
    public_key_file: Path | None = None
    command_timeout_s: float = 30.0
    rollout_health_timeout_s: float = 180.0
    rollout_batch_size: int = 10
    trusted_proxies: tuple[str, ...] = ()
    max_request_bytes: int = MAX_PAYLOAD_BYTES + MAX_MANIFEST_CHARS + 1024 * 1024
    login_attempts_keep_s: float = 86400.0
    extra: dict = field(default_factory=dict)

    def resolved_secret_key(self) -> str:
        """The session-signing key (see ``secret_key``)."""
        if self.secret_key:
            return self.secret_key
        if self.secret_key_file is None:
            # A per-process key: sessions die with the process and are not shared between instances.
            self.secret_key = secrets.token_urlsafe(48)
            return self.secret_key
        path = Path(self.secret_key_file)
        try:
            if not path.exists() and not path.is_symlink():  # a dangling link is refused below, not written through
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
            # a regular file of bounded size only: a FIFO or /dev/zero is refused, not waited on or read
            key = read_user_text(path, max_bytes=MAX_KEY_FILE_BYTES, what="text").strip()
        except OSError as e:
            raise UserFileError(f"session key file {path}: cannot write: {e.strerror or e}") from None
        except UserFileError as e:
            raise UserFileError(f"session key file {path}: {e}") from None
        if not key:  # an empty key would sign every session cookie with ""
            raise UserFileError(f"session key file {path}: empty (delete it to have a new key made)")
        self.secret_key = key
        return self.secret_key

    def read_key_files(self) -> None:
        """Read every key file these settings name now (session key, signing key, public key), so a bad one is
        one line before anything starts.

        Raises
        ------
        UserFileError, SignatureError
            (both :class:`ValueError`) naming the file and what is wrong with it.
        """
        from appliance.protocol.signing import load_private_key

        self.resolved_secret_key()
        if self.signing_key_file:
            load_private_key(self.signing_key_file)
        if self.public_key_file:
            read_public_key(self.public_key_file)


def read_public_key(path: str | Path) -> bytes:
    """The clinic's public key PEM at ``path`` (``--public-key``): a regular file of at most
    :data:`~appliance.protocol.userfiles.MAX_KEY_FILE_BYTES` holding an Ed25519 public key.

    Raises
    ------
    SignatureError
        Naming the file: it cannot be read, is not a regular file, is too large or is not an Ed25519 PEM key.
    """
    from appliance.protocol.signing import SignatureError, load_public_key

    try:
        pem = read_user_file(path, max_bytes=MAX_KEY_FILE_BYTES)
        load_public_key(pem)
    except (UserFileError, SignatureError) as e:
        raise SignatureError(f"public key {path}: {e}") from None
    return pem
