#!/usr/bin/env bash
# `make image`: both images from the repository root. BASE defaults to a local
# Debian 12 base made with debootstrap (docker/make-base.sh; no registry is
# needed); BASE=docker.io/library/debian:12-slim builds from the public one.
# pip inside the build trusts the host's CA bundle (mounted, never stored in
# an image). TAG names the images' tag (default: latest). Prints each image's
# size.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
# the local base is named after its recipe: a changed recipe makes a new one
local_base=localhost/debian:bookworm-slim-$(cat docker/make-base.sh scripts/debian-mirrors.sh | sha1sum | cut -c1-8)
base=${BASE:-$local_base}
tag=${TAG:-latest}
if [ "$base" = "$local_base" ]; then
  docker/make-base.sh "$base"
fi
pipconf=$(mktemp)
trap 'rm -f "$pipconf"' EXIT
printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' > "$pipconf"
for image in node reflector; do
  podman build -q --layers -f docker/Containerfile --target "$image" --build-arg "BASE=$base" \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro \
    -v "$pipconf:/etc/pip.conf:ro" \
    -t "localhost/meshroute-$image:$tag" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "localhost/meshroute-$image:$tag")
  echo "localhost/meshroute-$image:$tag $((size / 1000000)) MB"
done
