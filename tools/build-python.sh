#!/usr/bin/env bash
# Build a CPython that this machine's Debian release does not ship, from the
# upstream tarball inside Debian's own source package, and install it as
# /usr/local/bin/pythonX.Y (with its `test` package, which the CPython
# asyncio mixins need).  Runs once per machine: an installed build is reused.
#
#   tools/build-python.sh 3.13            # Debian trixie's python3.13
#
# Only a deb-src line is added, so apt can never install trixie's binary
# packages (they would replace bookworm's C library).
set -euo pipefail

version="${1:?usage: tools/build-python.sh X.Y}"
suite="${PROTOSHIM_PYTHON_SUITE:-trixie}"
prefix="${PROTOSHIM_PYTHON_PREFIX:-/usr/local}"
python="$prefix/bin/python$version"

if [ -x "$python" ] && "$python" -c 'import ssl, ctypes, zlib, test.test_asyncio' 2>/dev/null; then
    echo "python$version: already built at $python"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-python: must run as root to install build dependencies with apt-get" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
list=/etc/apt/sources.list.d/protoshim-$suite-src.sources
if [ ! -f "$list" ]; then
    cat >"$list" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
echo "build-python: installing build dependencies" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential dpkg-dev pkg-config xz-utils libssl-dev libffi-dev zlib1g-dev \
    libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev \
    libgdbm-dev uuid-dev libexpat1-dev >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-python: fetching the python$version source package from $suite" >&2
apt-get source --download-only -qq "python$version/$suite"
tarball="$(ls python"$version"_*.orig.tar.* | head -n 1)"
tar -xf "$tarball"
src="$(find . -maxdepth 1 -type d -name 'Python-*' -o -maxdepth 1 -type d -name "python$version-*" | head -n 1)"
cd "$src"
echo "build-python: configuring and building $(basename "$src") (about 10 minutes on 2 cores)" >&2
./configure --prefix="$prefix" --with-ensurepip=install >configure.log 2>&1 \
    || { tail -n 40 configure.log >&2; exit 1; }
make -j"$(nproc)" >make.log 2>&1 || { tail -n 60 make.log >&2; exit 1; }
make altinstall >install.log 2>&1 || { tail -n 40 install.log >&2; exit 1; }
"$python" -c 'import ssl, ctypes, zlib, test.test_asyncio'
echo "python$version: built and installed at $python"
