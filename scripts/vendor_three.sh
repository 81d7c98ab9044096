#!/usr/bin/env bash
# Vendor the few three.js files the web page's 3D view needs into src/retinaserve/serve/static/vendor/three/,
# so that the page fetches nothing from a CDN at run time. Run it again after changing VERSION; commit the result.
#
#   scripts/vendor_three.sh            # needs npm, openssl, sha256sum and network access to the npm registry
#
# The tarball comes from `npm pack`, its sha512 is checked against the integrity the registry reports, and only the
# listed files are copied. build/ is flattened into the vendor folder's root (the repository's .gitignore ignores
# every folder named build/); three.module.js imports ./three.core.js, which stays beside it. The addons keep their
# examples/jsm/ layout so that their relative imports (../utils/...) resolve; they import the bare name "three",
# which the page's import map points at three.module.js.
set -euo pipefail

PACKAGE=three
VERSION=0.187.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/src/retinaserve/serve/static/vendor/three"
# package path -> vendored path (relative to DEST)
FILES=(
  "LICENSE:LICENSE"
  "build/three.module.js:three.module.js"
  "build/three.core.js:three.core.js"
  "examples/jsm/controls/OrbitControls.js:examples/jsm/controls/OrbitControls.js"
  "examples/jsm/loaders/GLTFLoader.js:examples/jsm/loaders/GLTFLoader.js"
  "examples/jsm/utils/BufferGeometryUtils.js:examples/jsm/utils/BufferGeometryUtils.js"
  "examples/jsm/utils/SkeletonUtils.js:examples/jsm/utils/SkeletonUtils.js"
)

# shellcheck source=scripts/vendor_npm.sh
source "$ROOT/scripts/vendor_npm.sh"
vendor_npm "$PACKAGE" "$VERSION" "$DEST" "${FILES[@]}"
tarball="$VENDOR_NPM_TARBALL"
expected="$VENDOR_NPM_INTEGRITY"

# Every relative import of a vendored module must be vendored too; the only bare import allowed is "three".
status=0
while IFS= read -r module; do
  while IFS= read -r spec; do
    case "$spec" in
      three) ;;
      ./*|../*) [ -f "$(dirname "$module")/$spec" ] || { echo "vendor_three.sh: ${module#"$DEST"/} imports $spec, not vendored" >&2; status=1; } ;;
      *) echo "vendor_three.sh: ${module#"$DEST"/} imports '$spec', which the import map does not provide" >&2; status=1 ;;
    esac
  done < <(grep -oE "^(import|export)[^;]*from ['\"][^'\"]+['\"]|^\} from ['\"][^'\"]+['\"]" "$module" \
             | sed -E "s/.*from ['\"]([^'\"]+)['\"]/\1/" | sort -u)
done < <(find "$DEST" -name '*.js' | sort)
[ "$status" -eq 0 ] || exit 1

{
  echo "# three.js, vendored"
  echo
  echo "Package \`$PACKAGE@$VERSION\` from the npm registry ($tarball), MIT licence (LICENSE), written by"
  echo "\`scripts/vendor_three.sh\`; do not edit these files by hand, run the script."
  echo
  echo "- integrity (checked against \`npm view $PACKAGE@$VERSION dist.integrity\`): \`$expected\`"
  echo "- \`build/\` is flattened into this folder (the repository ignores folders named build/); the addons keep"
  echo "  their \`examples/jsm/\` paths. The page's import map maps \`three\` to \`three.module.js\` and"
  echo "  \`three/addons/\` to \`examples/jsm/\`."
  echo
  echo "| vendored file | from the package | sha256 |"
  echo "|---|---|---|"
  for entry in "${FILES[@]}"; do
    source="${entry%%:*}"
    target="${entry#*:}"
    echo "| \`$target\` | \`$source\` | \`$(sha256sum "$DEST/$target" | cut -d' ' -f1)\` |"
  done
} > "$DEST/README.md"

echo "vendored $PACKAGE@$VERSION into ${DEST#"$ROOT"/} (${#FILES[@]} files)"
