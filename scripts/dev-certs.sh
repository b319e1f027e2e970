#!/usr/bin/env bash
# Throwaway certificates for development and tests, made with openssl: never use them in
# production, never commit them (target/ is ignored by git).
#
#   scripts/dev-certs.sh [DIR]            DIR defaults to target/dev-certs
#   scripts/dev-certs.sh --force [DIR]    make new ones even if the current ones are valid
#
# Writes into DIR:
#   ca.pem / ca.key               a CA ("wsedge dev CA"): make a client trust ca.pem
#   localhost.pem / .key          ECDSA P-256 leaf for localhost, 127.0.0.1 and ::1
#   localhost-rsa.pem / .key      RSA 2048 leaf for the same names
#   a.test / b.test / w.test      ECDSA leaves for SNI tests: a.test, b.test, *.w.test
#   client.pem / .key             a client certificate ("wsedge dev client") for mutual TLS
# Leaves are valid 30 days (browsers refuse long-lived ones); they are made again when
# missing or when one expires within a day. Keys are mode 0600.
set -euo pipefail
cd "$(dirname "$0")/.."

force=0
if [ "${1:-}" = "--force" ]; then
    force=1
    shift
fi
dir=${1:-target/dev-certs}
days=30

command -v openssl >/dev/null || { echo "dev-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"

leaves=(localhost localhost-rsa a.test b.test w.test client)
fresh=1
for f in ca "${leaves[@]}"; do
    if [ ! -s "$dir/$f.pem" ] || [ ! -s "$dir/$f.key" ] \
        || ! openssl x509 -checkend 86400 -noout -in "$dir/$f.pem" >/dev/null 2>&1; then
        fresh=0
    fi
done
if [ "$fresh" = 1 ] && [ "$force" = 0 ]; then
    echo "dev-certs: $dir is up to date (--force to renew)" >&2
    exit 0
fi

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days "$days" -subj "/CN=wsedge dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# leaf NAME KEYSPEC CN SAN EKU
leaf() {
    local name=$1 keyspec=$2 cn=$3 san=$4 eku=$5
    local keyopts=(-newkey "$keyspec")
    if [ "$keyspec" = ec ]; then
        keyopts+=(-pkeyopt ec_paramgen_curve:P-256)
    fi
    openssl req -new "${keyopts[@]}" -nodes -keyout "$tmp/$name.key" -out "$tmp/$name.csr" \
        -subj "/CN=$cn" 2>/dev/null
    {
        [ -n "$san" ] && echo "subjectAltName=$san"
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
    } >"$tmp/$name.ext"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$tmp/$name.ext" \
        -out "$tmp/$name.pem" 2>/dev/null
}

local_san="DNS:localhost,IP:127.0.0.1,IP:::1"
leaf localhost ec localhost "$local_san" serverAuth
leaf localhost-rsa rsa:2048 localhost "$local_san" serverAuth
leaf a.test ec a.test "DNS:a.test" serverAuth
leaf b.test ec b.test "DNS:b.test" serverAuth
leaf w.test ec "*.w.test" "DNS:*.w.test" serverAuth
leaf client ec "wsedge dev client" "" clientAuth

for f in ca "${leaves[@]}"; do
    install -m 0644 "$tmp/$f.pem" "$dir/$f.pem"
    install -m 0600 "$tmp/$f.key" "$dir/$f.key"
done
echo "dev-certs: wrote a CA and ${#leaves[@]} leaves to $dir (trust $dir/ca.pem; valid $days days)" >&2
