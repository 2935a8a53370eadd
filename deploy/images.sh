#!/usr/bin/env bash
# Build roomcast's images from the Dockerfile: roomcast-gateway, roomcast-ingest and roomcast (the
# CLI: bench, dev tools). With docker when its engine answers, else with podman (docs/deploy.md).
#
#   IMAGE_TAG     tag of all three (default: the chart's appVersion, so the chart's defaults find them)
#   IMAGE_PREFIX  prepended to the names, e.g. registry.example.com/team/ (default: none)
#   IMAGE_BASE    the Dockerfile's BASE_IMAGE; IMAGE_UV its UV_IMAGE. Default with docker: the
#                 Dockerfile's (public images). Default with podman: images made on this machine,
#                 once, from Debian packages (mmdebstrap) and from the uv binary given as UV
#   ENGINE        docker or podman, to choose
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/roomcast/Chart.yaml)}
prefix=${IMAGE_PREFIX:-}
uv_version=$(sed -n 's/^UV_VERSION := //p' Makefile)

if [[ -z ${ENGINE:-} ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else
        echo "images: neither a docker engine nor podman here; on Debian: make podman" >&2
        exit 1
    fi
fi

args=()
if [[ $ENGINE == podman ]]; then
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
    if [[ -z ${IMAGE_BASE:-} ]]; then
        IMAGE_BASE=localhost/roomcast-base:bookworm
        if ! podman image exists "$IMAGE_BASE"; then
            command -v mmdebstrap >/dev/null || { echo "images: mmdebstrap missing: make podman" >&2; exit 1; }
            echo "images: building $IMAGE_BASE from Debian packages (once)"
            mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
                --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
                --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
                bookworm - \
              | podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                  - "$IMAGE_BASE" >/dev/null
        fi
    fi
    if [[ -z ${IMAGE_UV:-} ]]; then
        IMAGE_UV=localhost/roomcast-uv:$uv_version
        if ! podman image exists "$IMAGE_UV"; then
            uv=${UV:?images: UV must name a uv binary (make image sets it)}
            [[ $("$uv" --version) == "uv $uv_version "* ]] || { echo "images: $uv is not uv $uv_version" >&2; exit 1; }
            dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
            cp "$(readlink -f "$uv")" "$dir/uv"
            tar -C "$dir" -c uv | podman import - "$IMAGE_UV" >/dev/null
        fi
    fi
    args+=(--network host)
    # The package index may be reached through a CA only this host trusts: lend uv the bundle.
    if [[ -n ${SSL_CERT_FILE:-} ]]; then
        args+=(-v "$SSL_CERT_FILE:$SSL_CERT_FILE:ro" --build-arg "SSL_CERT_FILE=$SSL_CERT_FILE")
    fi
fi
[[ -n ${IMAGE_BASE:-} ]] && args+=(--build-arg "BASE_IMAGE=$IMAGE_BASE")
[[ -n ${IMAGE_UV:-} ]] && args+=(--build-arg "UV_IMAGE=$IMAGE_UV")

for target in gateway ingest cli; do
    name=roomcast-$target
    [[ $target == cli ]] && name=roomcast
    echo "images: $ENGINE build --target $target -t $prefix$name:$tag"
    "$ENGINE" build "${args[@]}" --target "$target" -t "$prefix$name:$tag" .
done
