#!/bin/sh
# Make certificates for trying spectrum out and for its tests: a local CA,
# server certificates for given names, and client certificates (mTLS).
#
#   certs/mkcerts.sh [-d DIR] [-c CA] server NAME [NAME...]
#   certs/mkcerts.sh [-d DIR] [-c CA] client NAME
#   certs/mkcerts.sh [-d DIR] [-c CA] ca
#
# DIR defaults to this script's directory. CA (default "ca") names the
# authority: DIR/CA.crt and DIR/CA.key, made on first use, so a second CA
# ("-c other") gives certificates that the first one does not vouch for.
# A server certificate is DIR/BASE.crt and DIR/BASE.key, where BASE is the
# first NAME ("*" becomes "_"); it is valid for every NAME given (DNS
# names, *.wildcards, IP addresses). A client certificate is DIR/NAME.crt
# and DIR/NAME.key with subject CN=NAME. Keys are EC P-256, unencrypted.
#
# Example: certs/mkcerts.sh server localhost 127.0.0.1 a.example '*.b.example'
# then in the config:
#   certificates: [{certificate: certs/localhost.crt, private_key: certs/localhost.key}]
set -eu

dir=$(cd "$(dirname "$0")" && pwd)
ca=ca
while getopts d:c: opt; do
    case $opt in
        d) dir=$OPTARG ;;
        c) ca=$OPTARG ;;
        *) echo "usage: $0 [-d DIR] [-c CA] server NAME... | client NAME | ca" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-d DIR] [-c CA] server NAME... | client NAME | ca" >&2; exit 2; }
kind=$1
shift
mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make_ca() {
    [ -f "$dir/$ca.crt" ] && [ -f "$dir/$ca.key" ] && return 0
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$dir/$ca.key" -out "$dir/$ca.crt" -days 3650 \
        -subj "/CN=spectrum local CA ($ca)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 644 "$dir/$ca.crt"
    echo "made $dir/$ca.crt"
}

sign() { # base subject extfile
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$dir/$1.key" -out "$tmp/$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$tmp/$1.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
        -set_serial "0x$(openssl rand -hex 12)" -days 825 -sha256 \
        -extfile "$3" -out "$dir/$1.crt" 2>/dev/null
    chmod 644 "$dir/$1.crt"
    echo "made $dir/$1.crt (signed by $ca)"
}

case $kind in
    ca)
        make_ca
        ;;
    server)
        [ $# -ge 1 ] || { echo "server needs at least one NAME" >&2; exit 2; }
        make_ca
        base=$(printf '%s' "$1" | tr '*' '_')
        san=""
        for name in "$@"; do
            case $name in
                *[!0-9.]*) case $name in *:*) entry="IP:$name" ;; *) entry="DNS:$name" ;; esac ;;
                *) entry="IP:$name" ;;
            esac
            san="${san:+$san,}$entry"
        done
        cat > "$tmp/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
        sign "$base" "/CN=$1" "$tmp/ext"
        ;;
    client)
        [ $# -eq 1 ] || { echo "client needs one NAME" >&2; exit 2; }
        make_ca
        cat > "$tmp/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
        sign "$1" "/CN=$1" "$tmp/ext"
        ;;
    *)
        echo "unknown kind $kind: use server, client or ca" >&2
        exit 2
        ;;
esac
