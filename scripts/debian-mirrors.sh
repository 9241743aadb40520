# Sourced by scripts that fetch from Debian (docker/make-base.sh,
# scripts/fetch-quadlet): the mirrors this machine's apt already uses.
debian_sources=/etc/apt/sources.list.d/debian.sources

debian_mirror() {
  local m
  m=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' "$debian_sources" 2>/dev/null | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}

debian_security_mirror() {
  local m
  m=$(sed -n 's/^URIs: *\(http[^ ]*debian-security\)\/*$/\1/p' "$debian_sources" 2>/dev/null | head -1)
  echo "${m:-http://deb.debian.org/debian-security}"
}
