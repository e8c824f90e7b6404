#!/usr/bin/env bash
# A private CA, a Redis server certificate and a client certificate, made with openssl.
#
#   scripts/make_tls_certs.sh OUT_DIR NAME [NAME...]
#
# NAMEs are the host names or IP addresses clients use to reach Redis; `redis` (the compose
# service), `localhost` and 127.0.0.1 are always added. Writes ca.crt, ca.key, redis.crt,
# redis.key, client.crt and client.key into OUT_DIR (keys mode 0600). An existing CA in
# OUT_DIR is kept, so re-running renews the server and client certificates only. Keep ca.key
# off the server once the certificates are made. EC P-256 keys; DAYS (default 825) sets how
# long the certificates are valid.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [NAME...]" >&2
  exit 2
fi
out=$1
shift
days=${DAYS:-825}
san="DNS:redis,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done

mkdir -p "$out"
cd "$out"
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.key ] || [ ! -f ca.crt ]; then
  key ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=soulsai private CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" -out ca.crt
fi

leaf() {  # leaf NAME EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=soulsai $1" -out "$1.csr"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$2"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [ -z "${3:-}" ] || echo "subjectAltName=$3"
  } >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf redis serverAuth "$san"
leaf client clientAuth
chmod 644 ca.crt redis.crt client.crt
echo "made $out/{ca,redis,client}.{crt,key} for $san"
