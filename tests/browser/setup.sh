#!/usr/bin/env bash
# Installs what the browser test needs, only what is missing, so it is cheap
# to run before every test:
#   - Debian's chromium at /usr/bin/chromium (apt-get; CI runs as root);
#   - playwright-core, exactly as pinned in package-lock.json (npm ci), when
#     node_modules is absent or was installed from another lock file.
# Playwright never downloads a browser here: the test drives the system one.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf 'browser setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Several test processes may call this at once; one installs, the others wait.
exec 9>".setup.lock"
command -v flock >/dev/null && flock 9

CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
    log "installing chromium with apt-get (one time, about a minute)"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "$CHROMIUM is missing and installing it needs root (or sudo)"
        SUDO=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2 \
        || die "apt-get install chromium failed"
    [ -x "$CHROMIUM" ] || die "apt-get finished but $CHROMIUM is still missing"
fi

command -v node >/dev/null || die "node is required (Node.js 20 or newer)"
command -v npm >/dev/null || die "npm is required"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || die "Node.js 20 or newer is required (found $(node --version))"

# node_modules is current when it was installed from this very lock file.
LOCK_SUM=$(sha256sum package-lock.json | cut -d' ' -f1)
MARKER=node_modules/.imagetag-lock-sha256
if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$LOCK_SUM" ] \
    || [ ! -f node_modules/playwright-core/package.json ]; then
    log "installing node packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error >&2 || die "npm ci failed"
    printf '%s\n' "$LOCK_SUM" > "$MARKER"
fi
log "ready: $("$CHROMIUM" --version 2>/dev/null || echo chromium), playwright-core $(node -p 'require("./node_modules/playwright-core/package.json").version')"
