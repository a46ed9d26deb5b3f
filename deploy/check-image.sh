#!/usr/bin/env bash
# Build the container image and check it: `synatra-bot --version`, `synatra-bot db upgrade`
# (SQLite in a throw-away volume), and that it runs as a user other than root. Uses docker, or
# podman when docker cannot run containers here; where neither can, says why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=""
reasons=()
if command -v docker >/dev/null; then
    if out=$(docker info 2>&1); then engine=docker; else reasons+=("docker: $(tail -n1 <<<"$out")"); fi
else
    reasons+=("docker: not installed")
fi
if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then
        # podman installs without a daemon; whether it can start a container is the question.
        if out=$(podman run --rm --network=none --rootfs / /bin/true 2>&1); then
            engine=podman
        else
            reasons+=("podman: $(tail -n1 <<<"$out")")
        fi
    else
        reasons+=("podman: not installed")
    fi
fi
if [ -z "$engine" ]; then
    echo "container image check skipped: no container engine can run here"
    printf '  %s\n' "${reasons[@]}"
    exit 0
fi

tag="synatra-bot:check"
"$engine" build --quiet -t "$tag" .
version=$("$engine" run --rm "$tag" --version)
echo "$version"
[[ "$version" == synatra-bot\ * ]]
"$engine" run --rm --network=none "$tag" db upgrade
user=$("$engine" run --rm --entrypoint id "$tag" -u)
if [ "$user" = 0 ]; then
    echo "the image runs as root" >&2
    exit 1
fi
echo "container image check passed with $engine (runs as uid $user)"
