#!/usr/bin/env bash
# Installs fuselite for the generic-x86_64 profile (Any x86_64 Linux PC or server (Debian/Ubuntu)).
#
# What it does: a venv in $PREFIX with the base package only (no TensorFlow) and
# the profile's interpreter (ai-edge-litert 2.x), a system user, the example settings
# $CONFIG_DIR/fuselite.env (kept if present) and the systemd unit.  It does not start
# the service, which runs as the unprivileged user fuselite: edit fuselite.env, not the unit.
#
# Usage:  sudo ./install.sh [PACKAGE]
#   PACKAGE  a fuselite wheel built on the host (pip wheel --no-deps -w dist .),
#            or any pip requirement for it; default: fuselite
set -euo pipefail

PROFILE=generic-x86_64
PACKAGE="${1:-fuselite}"
PREFIX="${FUSELITE_PREFIX:-/opt/fuselite}"
CONFIG_DIR="${FUSELITE_CONFIG_DIR:-/etc/fuselite}"
RUNTIME_REQUIREMENTS=("ai-edge-litert>=2.3,<3")
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "install.sh ($PROFILE): $*" >&2; exit 2; }

[[ $EUID -eq 0 ]] || die "run as root: sudo $0 $*"
[[ "$(uname -m)" == x86_64 ]] || die "this machine is $(uname -m), the $PROFILE profile is for x86_64"
python3 -c 'import sys; sys.exit(not (sys.version_info >= (3, 10)))' \
  || die "needs Python 3.10 or newer; found $(python3 -V 2>&1)"
python3 -m venv --help >/dev/null 2>&1 || apt-get install -y --no-install-recommends python3-venv

id -u fuselite >/dev/null 2>&1 \
  || useradd --system --home-dir /var/lib/fuselite --shell /usr/sbin/nologin --groups video fuselite

python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --upgrade pip
"$PREFIX/venv/bin/pip" install "$PACKAGE" "${RUNTIME_REQUIREMENTS[@]}"
"$PREFIX/venv/bin/fuselite" --version

install -d -m 755 "$CONFIG_DIR"
[[ -e "$CONFIG_DIR/fuselite.env" ]] || install -m 644 "$HERE/fuselite.env" "$CONFIG_DIR/fuselite.env"
# The unit names the default paths; point it at $PREFIX and $CONFIG_DIR if they moved.
sed -e "s#/opt/fuselite#$PREFIX#g" -e "s#/etc/fuselite#$CONFIG_DIR#g" "$HERE/fuselite.service" \
  > /etc/systemd/system/fuselite.service
systemctl daemon-reload

echo "installed. Next: copy your bundle to $CONFIG_DIR/model.tflite, check $CONFIG_DIR/fuselite.env,"
echo "then: sudo systemctl enable --now fuselite && journalctl -u fuselite -f"
