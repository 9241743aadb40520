#!/usr/bin/env bash
# A local Debian 12 base image for machines without a container registry:
# debootstrap (minbase) from the Debian mirror apt already uses, trimmed the
# way debian:12-slim is (no docs, man pages, locales or apt lists), imported
# into podman as $1 (default localhost/debian:bookworm-slim). Does nothing
# when the image exists. Needs root, debootstrap and podman.
set -euo pipefail
image=${1:-localhost/debian:bookworm-slim}
if podman image exists "$image"; then
  exit 0
fi
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/meshroute-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# what debian:12-slim leaves out, and where apt should look inside the image
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
security=$(sed -n 's/^URIs: *\(http[^ ]*debian-security\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
security=${security:-http://deb.debian.org/debian-security}
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
  "$mirror" "$mirror" "$security" > "$root/etc/apt/sources.list"
tar -C "$root" -c . | podman import -q - "$image" >/dev/null
echo "made $image"
