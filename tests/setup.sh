#!/usr/bin/env bash
# Installs what the tests need besides Rust, on a fresh machine: the Python packages of
# tests/requirements.txt, and the Debian packages of tests/debian-packages.txt whose
# command is missing (apt-get, as root or through sudo). The README's test command runs
# this first; a suite that needs another package adds a line to one of those files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

python3 -m pip install --quiet -r "$here/requirements.txt"

missing=()
while read -r package command; do
    case "$package" in '' | '#'*) continue ;; esac
    command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done <"$here/debian-packages.txt"
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "tests/setup.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
