#!/usr/bin/env bash
# podman (with runc) to build and run roomcast's images, mmdebstrap to make their local base image:
# from Debian's packages, as root. Quick when all three are already there.
set -euo pipefail
missing=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "podman: $(podman --version), runc and mmdebstrap present"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "podman: ${missing[*]} missing; install them as root: apt-get install podman runc mmdebstrap" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "podman: ${missing[*]} missing and no apt-get here" >&2; exit 1; }
echo "podman: installing ${missing[*]} (apt-get)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
podman --version
