#!/bin/sh
# nginx's HTTPS listener needs a certificate to start. When none is mounted, this makes a
# self-signed one (ECDSA P-256, a year, for localhost and 127.0.0.1; browsers warn about it).
# docker-compose.yml runs it from the nginx image's /docker-entrypoint.d before nginx starts;
# it changes nothing when tls.crt and tls.key are already there.
#
#   HERALD_CERT_DIR   where tls.crt and tls.key go (default /etc/nginx/certs)
#   HERALD_CERT_NAME  the host name in the certificate (default localhost)
set -eu
dir="${HERALD_CERT_DIR:-/etc/nginx/certs}"
name="${HERALD_CERT_NAME:-localhost}"
if [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
    exit 0
fi
if ! command -v openssl >/dev/null 2>&1; then
    echo "selfsigned-cert: no openssl here; mount a certificate at $dir (tls.crt, tls.key)" >&2
    exit 1
fi
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=$name" -addext "subjectAltName=DNS:$name,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
chmod 600 "$dir/tls.key"
echo "selfsigned-cert: made a self-signed certificate for $name in $dir (mount your own there to replace it)"
