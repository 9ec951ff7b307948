#!/bin/sh
# Put a bedtime box together on Raspberry Pi OS (64-bit, Bookworm or later). Run as root from the checkout:
#     sudo systemd/install-pi.sh
# Idempotent: running it again upgrades the code and keeps /etc/bedtime/bedtime.toml and the recorded nights.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/bedtime
CONF=/etc/bedtime/bedtime.toml

if [ "$(id -u)" != 0 ]; then
    echo "install-pi.sh: run as root (sudo $0)" >&2
    exit 1
fi

echo "== apt packages"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    python3 python3-venv python3-dev build-essential libffi-dev \
    python3-lgpio swig liblgpio-dev \
    mosquitto-clients

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
    --groups spi,gpio bedtime

echo "== venv in $PREFIX (compiles the C ring buffer with cffi)"
mkdir -p "$PREFIX"
rm -rf "$PREFIX/src"
cp -a "$SRC" "$PREFIX/src"
rm -rf "$PREFIX/src/.venv"
test -x "$PREFIX/venv/bin/python" || python3 -m venv --system-site-packages "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip setuptools wheel
# A regular install: the wheel carries the sha256-checked models and their cards (models/, beside appliance/).
"$PREFIX/venv/bin/pip" install -q "$PREFIX/src"

echo "== configuration"
mkdir -p /etc/bedtime
if [ ! -f "$CONF" ]; then
    install -m 0640 -g bedtime "$SRC/docs/bedtime.example.toml" "$CONF"
    echo "   wrote $CONF from the documented example: set box.id and [mqtt] before the first night"
fi
"$PREFIX/venv/bin/bedtime" config check "$CONF"

echo "== systemd unit"
install -m 0644 "$SRC/systemd/bedtime.service" /etc/systemd/system/bedtime.service
systemctl daemon-reload
systemctl enable bedtime.service
echo "Done. Reboot once so SPI is enabled; then: systemctl status bedtime; journalctl -u bedtime -f"
echo "Check the hardware with: sudo -u bedtime $PREFIX/venv/bin/bedtime selftest --config $CONF"
