#!/usr/bin/env bash
# A local Debian 12 base image for machines without a container registry:
# debootstrap (minbase) from the Debian mirror apt already uses, trimmed the
# way debian:12-slim is (no docs, man pages, locales or apt lists), and
# without time zone data (tzdata: nothing in meshroute's images reads a time
# zone; they run in UTC, which glibc needs no file for) nor debconf's backup
# copies; imported into podman as $1 (default localhost/debian:bookworm-slim).
# Does nothing when the image exists (build.sh names it after this file's
# hash, so a changed recipe makes a new one). Needs root, debootstrap, podman.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/debian-mirrors.sh
image=${1:-localhost/debian:bookworm-slim}
if podman image exists "$image"; then
  exit 0
fi
mirror=$(debian_mirror)
security=$(debian_security_mirror)
root=$(mktemp -d /var/tmp/meshroute-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --exclude=tzdata bookworm "$root" "$mirror" >/dev/null
# what debian:12-slim leaves out, and where apt should look inside the image
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
  "$mirror" "$mirror" "$security" > "$root/etc/apt/sources.list"
tar -C "$root" -c . | podman import -q - "$image" >/dev/null
echo "made $image"
