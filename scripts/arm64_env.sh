#!/usr/bin/env bash
# An emulated aarch64 (ARM64) Python for this project, built from Debian's and PyPI's packages
# only, all of it under .arm64/ (git-ignored).  Idempotent: each step is skipped when its stamp
# matches, so a second run takes a second.  Needs root for `dpkg --add-architecture arm64` and
# `apt-get update` (only if the arm64 package lists are missing) on a Debian 12 (bookworm) host.
#
#   scripts/arm64_env.sh            set up (if needed); prints the path of .arm64/python
#   .arm64/python -m pytest ...     then runs any command under aarch64
#
# Layout:
#   .arm64/qemu-aarch64-static  the user-mode emulator, extracted from Debian's qemu-user-static
#   .arm64/sysroot/             python3.11 + its shared libraries (arm64 .debs, `dpkg -x`)
#   .arm64/site/                aarch64 wheels from PyPI (installed by the host's pip: --target)
#   .arm64/python               wrapper: qemu -L sysroot sysroot/usr/bin/python3.11, with
#                               PYTHONPATH=site:<repo>
# binfmt_misc is not used: the emulator is invoked explicitly, so a container without it works.
# (A consequence: a subprocess started from the emulated Python with sys.executable cannot run.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ARM64_DIR:-$ROOT/.arm64}
HOST_PY=${HOST_PY:-$ROOT/.venv/bin/python}
command -v "$HOST_PY" >/dev/null 2>&1 || HOST_PY=python3

# Pinned so the emulated run is reproducible; the same versions as a fresh x86 `make test` venv
# at the time of writing.  Changing a pin reinstalls .arm64/site.
WHEELS="numpy==2.4.6 numba==0.68.1 tokenizers==0.23.3 tqdm pytest==9.2.0 hypothesis==6.170.17"
# python3.11's shared libraries.  (python3.11-minimal:arm64 itself conflicts with the host's
# amd64 python3.11-minimal, so nothing here is installed: every .deb is only unpacked.)
DEBS_ROOTS="python3.11-minimal:arm64 libpython3.11-stdlib:arm64 libstdc++6:arm64"

log() { echo "arm64_env: $*" >&2; }
mkdir -p "$DIR"

have_arm64_lists() {
    dpkg --print-foreign-architectures | grep -qx arm64 \
        && apt-cache show libc6:arm64 >/dev/null 2>&1
}

ensure_apt() {
    command -v apt-get >/dev/null || { log "needs a Debian/Ubuntu host (apt-get)"; exit 1; }
    if ! have_arm64_lists; then
        log "adding the arm64 architecture to dpkg and updating the package lists"
        dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
        apt-get update -qq
    fi
}

# 1. the emulator
if ! "$DIR/qemu-aarch64-static" --version >/dev/null 2>&1; then
    ensure_apt
    tmp=$(mktemp -d "$DIR/tmp.XXXXXX")
    log "downloading qemu-user-static"
    (cd "$tmp" && apt-get download -qq qemu-user-static)
    dpkg -x "$tmp"/qemu-user-static_*.deb "$tmp/x"
    install -m 755 "$tmp/x/usr/bin/qemu-aarch64-static" "$DIR/qemu-aarch64-static"
    rm -rf "$tmp"
fi

# 2. the sysroot: the dependency closure of python3.11 for arm64, unpacked
if [ "$(cat "$DIR/sysroot/.stamp" 2>/dev/null)" != "$DEBS_ROOTS" ]; then
    ensure_apt
    log "downloading python3.11 and its libraries for arm64"
    # the closure, minus packaging tools that Depends drags in (dpkg, install-info, tar)
    # shellcheck disable=SC2086
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
               --no-breaks --no-replaces --no-enhances $DEBS_ROOTS \
           | grep -E '^[a-z0-9][^ <>]*:arm64$' | grep -vE '^(dpkg|install-info|tar):' | sort -u)
    rm -rf "$DIR/debs" "$DIR/sysroot"
    mkdir -p "$DIR/debs" "$DIR/sysroot"
    # shellcheck disable=SC2086
    (cd "$DIR/debs" && apt-get download -qq $pkgs)
    for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DIR/sysroot"; done
    rm -rf "$DIR/debs"
    echo "$DEBS_ROOTS" > "$DIR/sysroot/.stamp"
fi

# 3. the wrapper.  PYTHONNOUSERSITE: the host's ~/.local holds x86 packages.
cat > "$DIR/python.new" <<EOF
#!/bin/sh
# aarch64 python3.11 under qemu user-mode emulation (written by scripts/arm64_env.sh)
PYTHONPATH="$DIR/site:$ROOT\${PYTHONPATH:+:\$PYTHONPATH}" PYTHONNOUSERSITE=1 \\
exec "$DIR/qemu-aarch64-static" -L "$DIR/sysroot" "$DIR/sysroot/usr/bin/python3.11" "\$@"
EOF
chmod 755 "$DIR/python.new"
mv "$DIR/python.new" "$DIR/python"

# 4. the wheels: aarch64 manylinux builds for CPython 3.11, dependencies resolved by pip
if [ "$(cat "$DIR/site/.stamp" 2>/dev/null)" != "$WHEELS" ]; then
    log "installing aarch64 wheels: $WHEELS"
    rm -rf "$DIR/site"
    # pip does not widen a --platform to older glibcs: name each one up to bookworm's 2.36
    plats="--platform manylinux2014_aarch64"
    for v in $(seq 17 36); do plats="$plats --platform manylinux_2_${v}_aarch64"; done
    # shellcheck disable=SC2086
    "$HOST_PY" -m pip install -q --disable-pip-version-check --target "$DIR/site" $plats \
        --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: $WHEELS \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$WHEELS" > "$DIR/site/.stamp"
fi

# 5. smoke test: the emulated interpreter imports numba and is aarch64
if ! "$DIR/python" -c 'import platform, numba; assert platform.machine() == "aarch64"'; then
    log "the emulated python does not start; rm -rf $DIR and run again"
    exit 1
fi
echo "$DIR/python"
