# Sourced by the vendor_*.sh scripts: `vendor_npm PACKAGE VERSION DEST ENTRY...` fetches PACKAGE@VERSION with
# `npm pack`, checks the tarball against the sha512 integrity the npm registry reports, and copies each ENTRY
# ("path in the package:path under DEST") into a fresh DEST. Needs npm, openssl, tar and network access to the
# registry; errors name the calling script.

vendor_npm() {
  local package="$1" version="$2" dest="$3"
  shift 3
  local me tool work expected tarball actual entry source target
  me="$(basename "$0")"
  for tool in npm openssl sha256sum tar; do
    command -v "$tool" >/dev/null || { echo "$me: $tool not found" >&2; return 1; }
  done
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT

  expected="$(npm view "$package@$version" dist.integrity 2>/dev/null)"
  case "$expected" in
    sha512-*) ;;
    *) echo "$me: npm reported no sha512 integrity for $package@$version (got '$expected')" >&2; return 1 ;;
  esac
  tarball="$(npm pack "$package@$version" --pack-destination "$work" --silent 2>/dev/null | tail -n 1)"
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 | tr -d '\n')"
  if [ "$actual" != "$expected" ]; then
    echo "$me: integrity mismatch for $tarball: npm reports $expected, the tarball is $actual" >&2
    return 1
  fi
  tar -xzf "$work/$tarball" -C "$work"  # into $work/package/

  rm -rf "$dest"
  mkdir -p "$dest"
  for entry in "$@"; do
    source="${entry%%:*}"
    target="${entry#*:}"
    mkdir -p "$dest/$(dirname "$target")"
    cp "$work/package/$source" "$dest/$target"
  done
  VENDOR_NPM_TARBALL="$tarball"  # for the caller's README
  VENDOR_NPM_INTEGRITY="$expected"
}
