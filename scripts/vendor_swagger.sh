#!/usr/bin/env bash
# Vendor the Swagger UI files that /docs needs into src/retinaserve/serve/static/vendor/swagger-ui/, so that the
# docs page fetches nothing from a CDN at run time. Run it again after changing VERSION; commit the result.
#
#   scripts/vendor_swagger.sh          # needs npm, openssl, sha256sum and network access to the npm registry
#
# The tarball comes from `npm pack`, its sha512 is checked against the integrity the registry reports, and only the
# listed files are copied: the bundle (Swagger UI with the `apis` preset that /docs' BaseLayout uses; the standalone
# preset is not needed), its stylesheet, and the licence texts (Apache-2.0 with its NOTICE; the bundle's third-party
# notices). Swagger UI's own favicons are not needed either: /docs uses the web page's favicon.svg.
set -euo pipefail

PACKAGE=swagger-ui-dist
VERSION=5.35.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/src/retinaserve/serve/static/vendor/swagger-ui"
# package path -> vendored path (relative to DEST)
FILES=(
  "LICENSE:LICENSE"
  "NOTICE:NOTICE"
  "swagger-ui-bundle.js:swagger-ui-bundle.js"
  "swagger-ui-bundle.js.LICENSE.txt:swagger-ui-bundle.js.LICENSE.txt"
  "swagger-ui.css:swagger-ui.css"
)

# shellcheck source=scripts/vendor_npm.sh
source "$ROOT/scripts/vendor_npm.sh"
vendor_npm "$PACKAGE" "$VERSION" "$DEST" "${FILES[@]}"
tarball="$VENDOR_NPM_TARBALL"
expected="$VENDOR_NPM_INTEGRITY"

# The stylesheet must load nothing from elsewhere: its url(...) values are data: URIs only.
if grep -oE 'url\([^)]*\)' "$DEST/swagger-ui.css" | grep -vqE '^url\((["'"'"']?)data:'; then
  echo "vendor_swagger.sh: swagger-ui.css loads a url() that is not a data: URI" >&2
  exit 1
fi

{
  echo "# Swagger UI, vendored"
  echo
  echo "Package \`$PACKAGE@$VERSION\` from the npm registry ($tarball), Apache-2.0 licence (LICENSE, NOTICE; the"
  echo "bundle's third-party notices in swagger-ui-bundle.js.LICENSE.txt), written by \`scripts/vendor_swagger.sh\`;"
  echo "do not edit these files by hand, run the script. \`/docs\` (\`serve/openapi.py\`) loads them from"
  echo "\`/static/vendor/swagger-ui/\`."
  echo
  echo "- integrity (checked against \`npm view $PACKAGE@$VERSION dist.integrity\`): \`$expected\`"
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
