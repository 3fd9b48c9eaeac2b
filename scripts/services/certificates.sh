#!/usr/bin/env bash
# Makes a throwaway certificate authority and a server certificate it signs
# for localhost / 127.0.0.1, so TLS is verified in tests exactly as in production,
# and one it signs for another name (elsewhere.invalid): a certificate that
# does not match the host the client connects to.
# Usage: certificates.sh DIR   → DIR/ca.pem DIR/ca.key DIR/server.pem DIR/server.key
#                                DIR/elsewhere.pem DIR/elsewhere.key
set -euo pipefail
dir=${1:?usage: certificates.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -f server.pem ] && exit 0
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=email_accounts test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca.key -out ca.pem 2>/dev/null
# server_certificate NAME SUBJECT_ALT_NAMES → NAME.pem NAME.key (PKCS#8)
server_certificate() {
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  cat > "$1.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$2
EXT
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
server_certificate elsewhere "DNS:elsewhere.invalid" elsewhere.invalid
# server.pem last: its presence says the directory is complete.
server_certificate server "DNS:localhost,IP:127.0.0.1" localhost
rm -f ca.srl
chmod 0644 ca.pem server.pem elsewhere.pem
chmod 0640 server.key ca.key elsewhere.key
