#!/bin/sh
# ente-lab STAND-IN for the Ente Auth web app image (the article's Dockerfile.auth:
# `serve -s . -l tcp://0.0.0.0:${PORT}` from /app). Not Ente's app: one page that shows the
# API origin, asks for a sign-up code (POST <api>/users/ott) and calls GET <api>/ping. At
# every start it copies the page into a writable /app and writes /app/ente-lab-config.js
# from ENTE_API_ORIGIN (upstream's web image) or NEXT_PUBLIC_ENTE_ENDPOINT (the article's
# build arg). `--write-config-only`: stop there.
set -eu

case "${1:-}" in
    -h|--help)
        echo "usage: auth-web-standin [--write-config-only]  (env: PORT, ENTE_API_ORIGIN, NEXT_PUBLIC_ENTE_ENDPOINT)"
        echo "ente-lab stand-in for the Ente Auth web app image; serves /app on 0.0.0.0:\$PORT"
        exit 0 ;;
    ""|--write-config-only) ;;
    *) echo "auth-web-standin: unknown argument $1" >&2; exit 1 ;;
esac

HERE=$(dirname "$(readlink -f "$0")")
SRC=${ENTE_LAB_WEB_SRC:-$HERE/app}
APP=${ENTE_LAB_WEB_DIR:-/app}
PORT=${PORT:-3322}

mkdir -p "$APP"
cp -R "$SRC"/. "$APP"/
python3 "$HERE/write_config.py" "$APP/ente-lab-config.js"
if [ -n "${ENTE_API_ORIGIN:-}" ]; then from=ENTE_API_ORIGIN
elif [ -n "${NEXT_PUBLIC_ENTE_ENDPOINT:-}" ]; then from=NEXT_PUBLIC_ENTE_ENDPOINT
else from="the default (https://api.ente.io)"
fi
echo "ente-lab stand-in for the Ente Auth web app (not Ente's app): API origin from $from" >&2

if [ "${1:-}" = --write-config-only ]; then
    exit 0
fi

cd "$APP"
if command -v serve >/dev/null 2>&1; then
    exec serve -s . -l "tcp://0.0.0.0:${PORT}"
fi
echo "auth-web-standin: WARNING: 'serve' (npm) not found; falling back to python3 -m http.server (no SPA fallback)" >&2
exec python3 -m http.server --bind 0.0.0.0 "$PORT"
