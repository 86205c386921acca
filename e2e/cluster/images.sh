#!/bin/bash
# Build container images locally, with no registry and no image tool: a hand-made OCI image layout
# (tar + sha256sum + JSON) -> tarball -> `ctr -n k8s.io images import`.
#   images.sh            -> builds $IMG/pause.oci.tar and $IMG/busybox.oci.tar
#   mkimage() can be reused for any rootfs dir (e.g. a static Rust operator binary).
# Needs: gcc + libc6-dev (static libc.a), busybox-static, python3 (only for JSON sizes; could be shell).
# Import (containerd must be running): ctr -a $SOCK -n k8s.io images import FILE
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
. "$SELF/env.sh"
IMG=${IMG:-$KUBE_IMAGES}
PAUSE_REF=${PAUSE_REF:-localhost/ferry/pause:3.10.2}
BUSYBOX_REF=${BUSYBOX_REF:-localhost/ferry/busybox:1.35}
# ctr, without the cgroup v1 deprecation notice it prints on every call on this kind of host
ctr_import() {
  "$KUBE_BIN/ctr" -a "$1" -n k8s.io images import "$2" 2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
}
mkdir -p $IMG

# mkimage REF ROOTFS_DIR OUT.tar CONFIG_JSON_FRAGMENT
#   CONFIG_JSON_FRAGMENT = the "config" object of the OCI image config, e.g. '{"Entrypoint":["/pause"]}'
mkimage() {
  local ref=$1 rootfs=$2 out=$3 cfg=$4
  local d; d=$(mktemp -d $IMG/oci.XXXXXX)
  mkdir -p $d/blobs/sha256
  # reproducible, root-owned layer (uncompressed tar is a valid OCI layer)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C $rootfs -cf $d/layer.tar .
  local ld; ld=$(sha256sum $d/layer.tar | cut -d' ' -f1); local ls; ls=$(stat -c %s $d/layer.tar)
  mv $d/layer.tar $d/blobs/sha256/$ld
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"ferry e2e/cluster/images.sh"}]}' \
    "$cfg" $ld > $d/config.json
  local cd; cd=$(sha256sum $d/config.json | cut -d' ' -f1); local cs; cs=$(stat -c %s $d/config.json)
  mv $d/config.json $d/blobs/sha256/$cd
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    $cd $cs $ld $ls > $d/manifest.json
  local md; md=$(sha256sum $d/manifest.json | cut -d' ' -f1); local ms; ms=$(stat -c %s $d/manifest.json)
  mv $d/manifest.json $d/blobs/sha256/$md
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    $md $ms "$ref" "${ref##*:}" > $d/index.json
  echo '{"imageLayoutVersion":"1.0.0"}' > $d/oci-layout
  tar --owner=0 --group=0 -C $d -cf $out oci-layout index.json blobs
  rm -rf $d
  echo "built $ref -> $out (manifest sha256:$md)"
}

# --- mode "bin": image from a host binary (e.g. the operator built with cargo) + the shared libs ldd lists ---
#   images.sh bin /path/to/binary localhost/my-operator:dev [extra files...]
#   -> $IMG/<name>.oci.tar, imported into containerd (k8s.io) right away when $CSOCK exists
#   IMAGE_ROOT=DIR adds DIR's tree to the image; IMAGE_ENV='"K=V","K2=V2"' adds environment.
if [ "${1:-}" = bin ]; then
  BIN=$2; REF=$3; shift 3
  R=$(mktemp -d $IMG/rootfs.XXXXXX); mkdir -p $R/bin $R/etc/ssl/certs $R/tmp; chmod 1777 $R/tmp
  cp $BIN $R/bin/; for l in $(ldd $BIN 2>/dev/null | grep -o '/[^ ]*'); do mkdir -p $R$(dirname $l); cp -L $l $R$l; done
  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt $R/etc/ssl/certs/
  for f in "$@"; do mkdir -p $R$(dirname $f); cp -a $f $R$f; done
  [ -n "${IMAGE_ROOT:-}" ] && cp -a "$IMAGE_ROOT"/. $R/
  echo 'root:x:0:0:root:/:/bin/false' > $R/etc/passwd; echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> $R/etc/passwd
  N=$(basename ${REF%%:*}); mkimage $REF $R $IMG/$N.oci.tar "{\"Entrypoint\":[\"/bin/$(basename $BIN)\"],\"Env\":[\"PATH=/bin\",\"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\"${IMAGE_ENV:+,$IMAGE_ENV}]}"
  rm -rf $R
  CSOCK=${CSOCK:-${FERRY_KUBE_RUN:-/tmp/ferry-kube}/containerd/containerd.sock}
  [ -S $CSOCK ] && ctr_import $CSOCK $IMG/$N.oci.tar
  exit 0
fi

# --- mode "model": a model image ("modelcar"): busybox (for `cp`) + weights under /models ---
#   images.sh model /path/to/weights-dir localhost/models/tiny:1
if [ "${1:-}" = model ]; then
  DIR=$2; REF=$3
  R=$(mktemp -d $IMG/rootfs.XXXXXX); mkdir -p $R/bin $R/models
  cp /bin/busybox $R/bin/busybox; ln -s busybox $R/bin/cp; ln -s busybox $R/bin/sh; ln -s busybox $R/bin/ls
  cp -a "$DIR"/. $R/models/
  N=model-$(basename ${REF%%:*}); mkimage $REF $R $IMG/$N.oci.tar '{"Env":["PATH=/bin"],"Cmd":["/bin/ls","-l","/models"]}'
  rm -rf $R
  CSOCK=${CSOCK:-${FERRY_KUBE_RUN:-/tmp/ferry-kube}/containerd/containerd.sock}
  [ -S $CSOCK ] && ctr_import $CSOCK $IMG/$N.oci.tar
  exit 0
fi

# --- pause image: compile Kubernetes' own build/pause/linux/pause.c (from its Go module) statically ---
R=$(mktemp -d $IMG/rootfs.XXXXXX)
K=$(cd "$SELF/go/kubernetes" && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
gcc -Os -Wall -Werror -static -DVERSION=v${PAUSE_REF##*:}-ferry -o $R/pause $K/build/pause/linux/pause.c
strip $R/pause
mkimage $PAUSE_REF $R $IMG/pause.oci.tar '{"Entrypoint":["/pause"],"User":"65535:65535"}'
rm -rf $R

# --- busybox test image: Debian's busybox-static + applet symlinks + a web root ---
R=$(mktemp -d $IMG/rootfs.XXXXXX)
mkdir -p $R/bin $R/etc $R/tmp $R/www $R/proc $R/sys $R/dev $R/var/run
chmod 1777 $R/tmp
cp /bin/busybox $R/bin/busybox
for a in $(/bin/busybox --list); do [ -e $R/bin/$a ] || ln -s busybox $R/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > $R/etc/passwd; echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> $R/etc/passwd
echo 'root:x:0:' > $R/etc/group; echo 'nogroup:x:65534:' >> $R/etc/group
echo 'hello from ferry busybox' > $R/www/index.html
mkimage $BUSYBOX_REF $R $IMG/busybox.oci.tar '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]}'
rm -rf $R
ls -la $IMG/*.tar
