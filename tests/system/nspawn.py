"""A Debian root filesystem booted under a real systemd with ``systemd-nspawn -b``, for the system tests.

The cached root filesystem (``tests/system/build_rootfs.sh``, ``build/rootfs/<arch>``) stays pristine: each boot
runs on an overlayfs whose upper layer lives in the test's temporary folder (a full copy where overlayfs is not
available). The container shares the host's network (a broker on the host's loopback is reachable) and trusts the
host's certificate authorities (bound read-only; ``PIP_CERT`` points pip at them).

Commands run inside with ``nsenter`` into the namespaces of the container's PID 1: ``--register=no`` (needed where
the host's init is not systemd) leaves machinectl nothing to talk to. Every wait is bounded; the container is
powered off from inside (``systemctl poweroff``), and killed only when that does not finish in time.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ROOTFS_CACHE = REPO / "build" / "rootfs"
BUILD_ROOTFS = Path(__file__).resolve().parent / "build_rootfs.sh"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINER_CA = "/etc/ssl/host-ca.crt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools() -> list[str]:
    """Host commands the system tests need and do not have (they skip when any is missing, or when not root)."""
    need = ["debootstrap", "systemd-nspawn", "nsenter", "mount"]
    return [t for t in need if shutil.which(t) is None]


def build_rootfs(arch: str, *, timeout_s: float = 3600) -> Path:
    """Build (or reuse the cached) bookworm root filesystem for ``arch``; return its path."""
    subprocess.run([str(BUILD_ROOTFS), arch], check=True, timeout=timeout_s)
    return ROOTFS_CACHE / arch


class CommandFailed(AssertionError):
    """A command inside the container exited non-zero."""


class Container:
    """One boot of a root filesystem under ``systemd-nspawn -b``.

    Parameters
    ----------
    rootfs : Path
        The cached root filesystem (left unchanged: the boot writes to an overlay in ``workdir``).
    workdir : Path
        The test's temporary folder (overlay layers, console log).
    env : dict
        Environment for every command run inside (``PIP_CERT`` and ``PATH`` are added), e.g. ``QEMU_CPU``.
    """

    def __init__(self, rootfs: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.rootfs = Path(rootfs)
        self.workdir = Path(workdir)
        self.env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": CONTAINER_CA,
                    "REQUESTS_CA_BUNDLE": CONTAINER_CA, "SSL_CERT_FILE": CONTAINER_CA,
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "120", **(env or {})}
        self.root = self.workdir / "merged"
        self._overlay = False
        self.proc: subprocess.Popen | None = None
        self.console_log = self.workdir / "console.log"
        self.leader: int | None = None

    # ---- life cycle ----------------------------------------------------------------------------------------
    def _mount_root(self) -> None:
        upper, work = self.workdir / "upper", self.workdir / "work"
        for d in (upper, work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.rootfs},upperdir={upper},workdir={work}", str(self.root)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            self._overlay = True
            return
        logger.warning("overlayfs not available (%s): copying the root filesystem", r.stderr.strip())
        subprocess.run(["cp", "-a", "--reflink=auto", f"{self.rootfs}/.", str(self.root)], check=True, timeout=1200)

    def boot(self, *, timeout_s: float = 300.0, files: dict[str, str] | None = None) -> "Container":
        """Boot to ``multi-user.target`` (or raise after ``timeout_s``); ``files`` are written first (path: text)."""
        self._mount_root()
        for inside, text in (files or {}).items():
            p = self.path(inside)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        # the machine id a freshly flashed card gets on its first boot: stable for this container's life
        (self.root / "etc" / "machine-id").write_text(os.urandom(16).hex() + "\n")
        cmd = ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit", "-b",
               "--console=read-only", f"--bind-ro={HOST_CA}:{CONTAINER_CA}",
               *[f"--setenv={k}={v}" for k, v in self.env.items() if k.startswith("QEMU_")]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.console_log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console()}")
            self.leader = self.leader or self._find_leader()
            if self.leader is not None:
                r = self.run("systemctl is-system-running --wait", check=False, timeout=max(5.0, deadline - time.monotonic()))
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    if state == "degraded":
                        logger.warning("container degraded: %s", self.run("systemctl --failed --no-legend",
                                                                         check=False).stdout)
                    return self
            time.sleep(0.5)
        raise TimeoutError(f"container did not reach multi-user.target in {timeout_s} s:\n{self.console()}")

    def _find_leader(self) -> int | None:
        """PID (host view) of the container's init: the descendant of nspawn whose PID inside is 1."""
        assert self.proc is not None
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
            if pid != self.proc.pid and len(nspid) > 1 and nspid[-1] == "1":
                return pid
            todo.extend(int(c) for c in children)
        return None

    def poweroff(self, *, timeout_s: float = 120.0) -> None:
        """Power off from inside; kill nspawn if that does not finish in ``timeout_s``; unmount the overlay."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.leader is not None:
                    self.run("systemctl --no-block poweroff", check=False, timeout=30)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("container did not power off in %s s: killing systemd-nspawn", timeout_s)
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            if self._overlay:
                subprocess.run(["umount", "-l", str(self.root)], check=False, timeout=60)
                self._overlay = False

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")[-4000:] if self.console_log.exists() else ""

    # ---- commands ------------------------------------------------------------------------------------------
    def run(self, cmd: str, *, check: bool = True, timeout: float = 120.0, user: str | None = None,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell command inside the container (as root, or as ``user``); bounded by ``timeout``."""
        assert self.leader is not None, "container not booted"
        e = {**self.env, **(env or {})}
        inner = ["env", "-i", *[f"{k}={v}" for k, v in e.items()], "sh", "-c", cmd]
        if user is not None:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *inner]
        argv = ["nsenter", "-t", str(self.leader), "-a", "--", *inner]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as ex:
            raise TimeoutError(f"inside the container, {cmd!r} took longer than {timeout} s:\n"
                               f"{(ex.stdout or b'')[-3000:]!r}\n{(ex.stderr or b'')[-3000:]!r}") from None
        if check and r.returncode != 0:
            raise CommandFailed(f"inside the container, {cmd!r} exited {r.returncode}:\n"
                                f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
        return r

    def wait_for(self, cmd: str, pred, *, timeout_s: float, step_s: float = 0.5, what: str = "") -> str:
        """Run ``cmd`` until ``pred(stdout)`` holds; return that stdout, or raise after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        out = ""
        while time.monotonic() < deadline:
            out = self.run(cmd, check=False, timeout=max(5.0, deadline - time.monotonic())).stdout
            if pred(out):
                return out
            time.sleep(step_s)
        raise TimeoutError(f"{what or cmd}: not reached in {timeout_s} s; last output:\n{out[-3000:]}")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit as a dict."""
        out = self.run(f"systemctl show {shlex.quote(unit)} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)

    def copy_in(self, src: Path, dest: str) -> None:
        """Copy a host folder or file into the container's file system (through the overlay)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)

    def path(self, inside: str) -> Path:
        """The host path of a file inside the container (reads see what the container sees)."""
        return self.root / inside.lstrip("/")


def tracked_copy(dest: Path) -> Path:
    """A git clone of this checkout's tracked files as they are now (what a Pi owner gets from ``git clone``).

    Built from ``git ls-files`` so uncommitted edits under test are included; then ``git init`` + one commit,
    so install-pi.sh sees a real clone.
    """
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                           timeout=60).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        src = REPO / os.fsdecode(f)
        if not src.exists():
            continue
        t = dest / os.fsdecode(f)
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, t, follow_symlinks=False)
    env = {**os.environ, "GIT_AUTHOR_NAME": "pi", "GIT_AUTHOR_EMAIL": "pi@localhost",
           "GIT_COMMITTER_NAME": "pi", "GIT_COMMITTER_EMAIL": "pi@localhost"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bedtime under test"]):
        subprocess.run(["git", "-C", str(dest), *cmd], check=True, timeout=120, env=env, capture_output=True)
    return dest
