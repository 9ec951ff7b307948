#!/bin/sh
# Put a bedtime box together on Raspberry Pi OS (64-bit, Bookworm) or Debian 12. Run as root, from any folder:
#     sudo /path/to/bedtime/systemd/install-pi.sh
# Idempotent: running it again (also as /opt/bedtime/src/systemd/install-pi.sh) upgrades the code and keeps
# /etc/bedtime/bedtime.toml, the box id and the recorded nights. Only tracked files are installed (git ls-files
# of a clone; a tree without .git, such as an unpacked release or /opt/bedtime/src itself, is taken as it is,
# minus build output and virtualenvs). Checked by tests/system (make system-test, make pi-test).
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/bedtime
CONF=/etc/bedtime/bedtime.toml
EXAMPLE_ID=box-0001

say() { echo "install-pi.sh: $*"; }
die() { echo "install-pi.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/bedtime.service" ] || die "$SRC is not a bedtime source tree"

# ---- preflight: decide everything that can fail before anything installed is touched -----------------------
ARCH=$(uname -m)
PYV=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "python3 not found (apt-get install python3)"
PYMINOR=${PYV#3.}
# The TFLite runtime. ai-edge-litert is pinned to 1.4.0 on aarch64 (pyproject.toml: the release make pi-test
# proves on a Cortex-A72; a 2.3.0 crash on the Zero 2 W / Pi 3 / Pi 4 cores was reported, docs/pi.md), and 1.4.0
# has aarch64 wheels for Python 3.9-3.12 only. tflite-runtime 2.14 (numpy<2) covers 3.9-3.11.
RUNTIME=""
case "$ARCH" in
    aarch64)
        if [ "$PYMINOR" -ge 9 ] && [ "$PYMINOR" -le 12 ]; then RUNTIME=ai-edge-litert; fi ;;
    x86_64)
        if [ "$PYMINOR" -ge 9 ]; then RUNTIME=ai-edge-litert; fi ;;
    armv7l)
        if [ "$PYMINOR" -ge 9 ] && [ "$PYMINOR" -le 11 ]; then RUNTIME=tflite-runtime; fi ;;
esac
if [ -z "$RUNTIME" ]; then
    die "no TFLite runtime known to work for Python $PYV on $ARCH: ai-edge-litert 1.4.0 (aarch64) has wheels for \
Python 3.9-3.12, tflite-runtime for 3.9-3.11. Use 64-bit Raspberry Pi OS Bookworm (Python 3.11). Nothing was changed."
fi
[ "$PYMINOR" -ge 11 ] || die "Python $PYV is too old: bedtime needs 3.11 or later (Raspberry Pi OS Bookworm). Nothing was changed."
if [ -d "$SRC/.git" ] || [ -f "$SRC/.git" ]; then
    command -v git >/dev/null 2>&1 || die "$SRC is a git clone but git is not installed (apt-get install git). Nothing was changed."
fi
say "Python $PYV on $ARCH, TFLite runtime: $RUNTIME"

# ---- apt packages -------------------------------------------------------------------------------------------
echo "== apt packages"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    python3 python3-venv python3-dev build-essential libffi-dev ca-certificates mosquitto-clients
# lgpio (gpiozero's pin factory on Bookworm) is packaged only in the Raspberry Pi archive; elsewhere it comes from
# PyPI below (wheels for aarch64 and x86_64).
LGPIO_FROM_APT=no
if apt-cache show python3-lgpio >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-lgpio && LGPIO_FROM_APT=yes
fi

echo "== SPI on (dtparam=spi=on), takes effect after a reboot"
if command -v raspi-config >/dev/null 2>&1; then
    raspi-config nonint do_spi 0
else
    for cfg in /boot/firmware/config.txt /boot/config.txt; do
        if [ -f "$cfg" ]; then
            grep -q '^dtparam=spi=on' "$cfg" || echo 'dtparam=spi=on' >> "$cfg"
            break
        fi
    done
fi

echo "== user and groups"
getent group spi >/dev/null || groupadd --system spi
getent group gpio >/dev/null || groupadd --system gpio
id bedtime >/dev/null 2>&1 || useradd --system --home-dir /var/lib/bedtime --shell /usr/sbin/nologin \
    --user-group bedtime
usermod -a -G spi,gpio bedtime

echo "== source in $PREFIX/src (tracked files only)"
mkdir -p "$PREFIX"
STAGE=$(mktemp -d "$PREFIX/src.new.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
if [ -e "$SRC/.git" ]; then
    # what the clone tracks, as it is in the working tree (no .git, build output, .venv or untracked files)
    # (safe.directory: the clone belongs to the Pi's user, not to root who runs this)
    git -c safe.directory="$SRC" -C "$SRC" ls-files -z \
        | (cd "$SRC" && xargs -0 tar -cf - --no-recursion --ignore-failed-read --) \
        | tar -xf - --no-same-owner -C "$STAGE"
else
    tar -C "$SRC" -cf - --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude='*.so' --exclude=./.git . | tar -xf - --no-same-owner -C "$STAGE"
fi
chmod 0755 "$STAGE"
# swap in the new tree last, so a re-run from $PREFIX/src never deletes the tree it is reading from
if [ -d "$PREFIX/src" ]; then
    rm -rf "$PREFIX/src.old"
    mv "$PREFIX/src" "$PREFIX/src.old"
fi
mv "$STAGE" "$PREFIX/src"
trap - EXIT
rm -rf "$PREFIX/src.old"
SRC="$PREFIX/src"

echo "== venv in $PREFIX/venv (compiles the C ring buffer with cffi)"
test -x "$PREFIX/venv/bin/python" || python3 -m venv --system-site-packages "$PREFIX/venv"
PIP="$PREFIX/venv/bin/pip"
"$PIP" install -q --upgrade pip setuptools wheel
# A regular install: the wheel carries the sha256-checked models and their cards (models/, beside appliance/).
"$PIP" install -q "$SRC"
if [ "$RUNTIME" = tflite-runtime ]; then
    "$PIP" install -q "tflite-runtime==2.14.0" "numpy<2"
fi
if [ "$LGPIO_FROM_APT" = no ]; then
    "$PIP" install -q "lgpio>=0.2.2"
fi
"$PREFIX/venv/bin/python" -c "from appliance.tflite import _interpreter_class as c; print('   TFLite runtime:', c()[1])"

echo "== configuration"
mkdir -p /etc/bedtime
if [ ! -f "$CONF" ]; then
    # every box its own id (its MQTT topics): derived from the machine id, stable across re-runs
    MID=$(cat /etc/machine-id 2>/dev/null || true)
    [ -n "$MID" ] || die "/etc/machine-id is empty: run systemd-machine-id-setup, then this script again"
    BOXID="box-$(printf %s "$MID" | sha256sum | cut -c1-12)"
    TMPCONF=$(mktemp /etc/bedtime/.bedtime.toml.XXXXXX)
    sed "s/^id = \"$EXAMPLE_ID\"/id = \"$BOXID\"/" "$SRC/docs/bedtime.example.toml" > "$TMPCONF"
    chown root:bedtime "$TMPCONF"
    chmod 0640 "$TMPCONF"
    mv "$TMPCONF" "$CONF"
    say "wrote $CONF from the documented example with box id $BOXID: set [mqtt] before the first night"
fi
"$PREFIX/venv/bin/bedtime" config check "$CONF"

echo "== systemd unit"
install -m 0644 "$SRC/systemd/bedtime.service" /etc/systemd/system/bedtime.service
systemctl daemon-reload
systemctl enable bedtime.service
echo "Done. Reboot once so SPI is enabled; then: systemctl status bedtime; journalctl -u bedtime -f"
echo "Check the hardware with: sudo -u bedtime $PREFIX/venv/bin/bedtime selftest --config $CONF"
