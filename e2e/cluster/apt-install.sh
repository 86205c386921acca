#!/bin/bash
# Installs the Debian packages named that are not installed yet (nothing else), refreshing the
# package lists first when they are empty or the first try fails. Used by every script that needs
# a Debian package, so a fresh machine works the same everywhere.
#   apt-install.sh PACKAGE...
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' -e '^auxfiles$')" ] || ! install 2>/dev/null; then
  apt-get update -q >/dev/null
  install
fi
