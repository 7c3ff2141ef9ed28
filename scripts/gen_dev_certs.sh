#!/usr/bin/env bash
# Self-signed development TLS certificates and SuperNode authentication keys for Flower.
#   scripts/gen_dev_certs.sh OUT_DIR [--nodes N] [--host 127.0.0.1 --host localhost] [--days D]
# Writes ca.crt/ca.key, server.crt/server.key (SuperLink) and supernode-<i>/.pub (OpenSSH
# ECDSA P-384) into OUT_DIR; see docs/deploy.md. Never commit OUT_DIR.
set -euo pipefail
exec "${PYTHON:-python}" -m edgekd.deploy certs "$@"
