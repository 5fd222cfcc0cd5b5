#!/usr/bin/env bash
# `make test-image`: builds the committed Dockerfile with podman and runs the image the way a cluster
# would (tests/image, pytest -m image). No Docker engine and no registry needed:
#   - podman, buildah and runc from Debian (installed when missing, as root with apt-get);
#   - podman's configuration and storage of its own under $DAGCTL_IMAGE_TEST_DIR (default .image-test/,
#     ignored by git; kept between runs, so a second run reuses the base images and the layer cache);
#   - the Dockerfile's base images are pulled; when no registry is reachable they are made locally:
#     python:3.11-slim-bookworm from Debian's mirror with mmdebstrap (Debian's Python 3.11), and
#     ghcr.io/astral-sh/uv from the uv wheel on PyPI (its two binaries in an empty image);
#   - behind a TLS-intercepting proxy, RUN steps get the host's CA bundle and uv's system-certs setting
#     through build-time mounts (`podman build -v`): the Dockerfile itself is built unmodified.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
uv="${UV:-uv}"
dir="${DAGCTL_IMAGE_TEST_DIR:-$root/.image-test}"
image="${DAGCTL_TEST_IMAGE:-localhost/dagctl-dagster:test}"
uv_version="$(sed -n 's/^FROM ghcr.io\/astral-sh\/uv:\([^ ]*\) .*/\1/p' "$root/Dockerfile")"
python_image="docker.io/library/python:3.11-slim-bookworm"
uv_image="ghcr.io/astral-sh/uv:$uv_version"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
started=$(date +%s)

missing=()
for tool in podman buildah runc mmdebstrap catatonit; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah runc mmdebstrap catatonit uidmap slirp4netns netavark aardvark-dns >/dev/null
  else
    echo "error: make test-image needs ${missing[*]} (Debian: apt-get install podman buildah runc mmdebstrap)" >&2
    exit 1
  fi
fi

# podman's settings: runc (crun fails on hybrid cgroups), open-file and process limits within the host's
# hard limits (podman's default nofile is above them), storage in $dir.
mkdir -p "$dir"
nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
[ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
[ "$nofile" = unlimited ] && nofile=1048576
cat > "$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
cat > "$dir/registries.conf" <<CONF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
CONF
printf 'system-certs = true\n' > "$dir/uv.toml"
export CONTAINERS_CONF="$dir/containers.conf" CONTAINERS_STORAGE_CONF="$dir/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$dir/registries.conf"

has_image() { podman image exists "$1"; }

if ! has_image "$python_image" && ! timeout 120 podman pull -q "$python_image" >/dev/null 2>&1; then
  echo "no registry: making $python_image from Debian's mirror with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --include=python3,ca-certificates,passwd \
    --customize-hook='ln -sf /usr/bin/python3 "$1/usr/local/bin/python"; ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$dir/python-base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  podman import -q --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$dir/python-base.tar" "$python_image" >/dev/null
  rm -f "$dir/python-base.tar"
fi
if ! has_image "$uv_image" && ! timeout 120 podman pull -q "$uv_image" >/dev/null 2>&1; then
  echo "no registry: making $uv_image from the uv $uv_version wheel on PyPI"
  [ -x "$dir/pip/bin/pip" ] || python3 -m venv "$dir/pip"
  rm -rf "$dir/uv-wheel" && mkdir -p "$dir/uv-wheel"
  "$dir/pip/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
    --python-version 3.11 -d "$dir/uv-wheel" "uv==$uv_version"
  (cd "$dir/uv-wheel" && python3 -m zipfile -e uv-*.whl unpacked)
  scripts="$(ls -d "$dir"/uv-wheel/unpacked/uv-*.data/scripts)"
  chmod 755 "$scripts/uv" "$scripts/uvx"  # zip extraction drops the executable bit
  container="$(buildah from scratch)"
  buildah copy -q --chmod 755 "$container" "$scripts/uv" /uv >/dev/null
  buildah copy -q --chmod 755 "$container" "$scripts/uvx" /uvx >/dev/null
  buildah config --entrypoint '["/uv"]' "$container"
  buildah commit -q --rm "$container" "$uv_image" >/dev/null
fi

echo "building $image from the committed Dockerfile"
build_started=$(date +%s)
if ! podman build --pull=missing -t "$image" \
  -v "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro" -v "$dir/uv.toml:/etc/uv/uv.toml:ro" \
  -f "$root/Dockerfile" "$root" > "$dir/build.log" 2>&1; then
  tail -40 "$dir/build.log" >&2
  echo "error: podman build of the Dockerfile failed (whole log: $dir/build.log)" >&2
  exit 1
fi
echo "built $image in $(( $(date +%s) - build_started )) s"

export DAGCTL_TEST_IMAGE="$image" DAGCTL_IMAGE_TEST_DIR="$dir"
export DAGCTL_IMAGE_BUILD_MOUNTS="$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro $dir/uv.toml:/etc/uv/uv.toml:ro"
cd "$root"
"$uv" run --frozen pytest -q -p no:randomly -m image --timeout=900 tests/image "$@"
echo "make test-image: $(( $(date +%s) - started )) s; podman storage in $dir: $(du -sh "$dir" | cut -f1)"
