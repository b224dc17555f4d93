#!/usr/bin/env bash
# Installs what the integration and end-to-end tests drive: a real origin registry
# (distribution 2.8.2, Debian package docker-registry), containerd (ctr) and skopeo,
# plus iproute2 for the namespace-based tests. Does nothing when they are present.
set -euo pipefail

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v ctr >/dev/null 2>&1 || need+=(containerd)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "shoal tests need: ${need[*]} — run as root (or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing test dependencies: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
