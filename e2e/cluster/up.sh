#!/bin/bash
# Real single-node Kubernetes on this VM (the release build.sh builds from Go modules), no registry, no docker:
#   etcd + kube-apiserver + kube-controller-manager + kube-scheduler (127.0.0.1 only)
#   + containerd 2 (CRI plugin) + runc + CNI bridge "kr0" 10.88.0.0/16 + kubelet (+ kube-proxy, iptables mode)
# Usage: up.sh [RUNDIR]       (stop with down.sh RUNDIR)
#   -> RUNDIR/kubeconfig (admin), RUNDIR/*.pid, RUNDIR/*.log
# Env: B=binaries (default $KUBE_BIN), KUBECTL, NO_PROXY_COMPONENT=1 (skip kube-proxy),
#      API_PORT, ETCD_PORT, IMAGES="tar files to import" (default: pause + busybox from images.sh)
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
. "$SELF/env.sh"
R=${1:-${FERRY_KUBE_RUN:-/tmp/ferry-kube}}
B=${B:-$KUBE_BIN}
KUBECTL=${KUBECTL:-$KUBE_TOOLS/kubectl}
IMG=${IMG:-$KUBE_IMAGES}; IMAGES=${IMAGES:-"$IMG/pause.oci.tar $IMG/busybox.oci.tar"}
PAUSE_REF=${PAUSE_REF:-localhost/ferry/pause:3.10.2}
ETCD_PORT=${ETCD_PORT:-22379}; API_PORT=${API_PORT:-26443}
NODE=${NODE:-kr-node}; BR=${BR:-kr0}; GW=${GW:-10.88.0.1}; POD_CIDR=${POD_CIDR:-10.88.0.0/16}; SVC_CIDR=${SVC_CIDR:-10.0.0.0/16}
P=$R/pki; C=$R/containerd; CSOCK=$C/containerd.sock; HS=$R/host-state
mkdir -p $P $C $R/cni/net.d $R/cni/ipam $R/kubelet $HS
now() { date +%s.%N; }; el() { printf "%.2f" $(echo "$(now)-$1" | bc); }
T0=$(now)

# ---------- 0. remember host state so down.sh can restore it exactly ----------
if [ ! -f $HS/sysctl.saved ]; then
  for s in kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys \
           kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables \
           net.bridge.bridge-nf-call-ip6tables; do echo "$s=$(sysctl -n $s)"; done > $HS/sysctl.saved
  for d in /run/containerd /var/lib/cni /var/run/netns /var/log/pods /var/log/containers; do
    [ -e $d ] || echo $d; done > $HS/created-dirs
  iptables-nft-save > $HS/iptables.save 2>/dev/null || true; ip6tables-nft-save > $HS/ip6tables.save 2>/dev/null || true
fi
restore_kernel_sysctls() {  # kubelet forces panic/panic_on_oops/overcommit at start-up; put the VM's values back
  grep -E '^(kernel.panic|kernel.panic_on_oops|vm.overcommit_memory|vm.panic_on_oom|kernel.keys)' $HS/sysctl.saved | \
    while IFS== read k v; do sysctl -qw "$k=$v"; done
}

# ---------- 1. PKI (EC P-256: fast) ----------
cd $P
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -out ca.crt -days 7 -subj "/CN=ferry-kube-ca" 2>/dev/null
printf "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n" > cli.ext
mkcert() { # name subject extfile
  openssl ecparam -name prime256v1 -genkey -noout -out $1.key
  openssl req -new -key $1.key -out $1.csr -subj "$2" 2>/dev/null
  openssl x509 -req -in $1.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $1.crt -days 7 -extfile $3 2>/dev/null
}
printf "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$GW,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n" > srv.ext
mkcert apiserver "/CN=kube-apiserver" srv.ext
mkcert admin "/O=system:masters/CN=ferry-kube-admin" cli.ext
mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" cli.ext
mkcert node "/O=system:nodes/CN=system:node:$NODE" cli.ext
mkcert kube-proxy "/CN=system:kube-proxy" cli.ext
printf "subjectAltName=IP:$GW,DNS:$NODE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n" > kubelet.ext
mkcert kubelet-serving "/CN=$NODE" kubelet.ext
openssl ecparam -name prime256v1 -genkey -noout -out sa.key; openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
mkkc() { # out user
  cat > $1 <<EOK
apiVersion: v1
kind: Config
clusters: [{name: ferry-local, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority-data: $(base64 -w0 ca.crt)}}]
users: [{name: $2, user: {client-certificate-data: $(base64 -w0 $2.crt), client-key-data: $(base64 -w0 $2.key)}}]
contexts: [{name: ferry-local, context: {cluster: ferry-local, user: $2, namespace: default}}]
current-context: ferry-local
EOK
}
mkkc $R/kubeconfig admin; mkkc $R/kubelet.kubeconfig node; mkkc $R/kube-proxy.kubeconfig kube-proxy
export KUBECONFIG=$R/kubeconfig
# ---------- 1b. pod bridge, created up front: its address $GW is the node IP, the kubelet's address, and the
#     address the apiserver advertises (in-cluster clients: Service kubernetes 10.0.0.1:443 -> $GW:$API_PORT)
ip link show $BR >/dev/null 2>&1 || ip link add $BR type bridge
ip addr replace $GW/${POD_CIDR#*/} dev $BR; ip link set $BR up
T1=$(now)

# ---------- 2. etcd (tmpfs) + kube-apiserver ----------
ED=$(mktemp -d /dev/shm/ferry-kube-etcd.XXXXXX); echo $ED > $R/etcd.datadir
$B/etcd --name t --data-dir $ED --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
  --listen-peer-urls http://127.0.0.1:$((ETCD_PORT+1)) --initial-advertise-peer-urls http://127.0.0.1:$((ETCD_PORT+1)) \
  --initial-cluster t=http://127.0.0.1:$((ETCD_PORT+1)) --listen-metrics-urls http://127.0.0.1:$((ETCD_PORT+2)) > $R/etcd.log 2>&1 &
echo $! > $R/etcd.pid
until curl -sf http://127.0.0.1:$ETCD_PORT/health >/dev/null; do sleep 0.05; done
$B/kube-apiserver --etcd-servers=http://127.0.0.1:$ETCD_PORT --bind-address=127.0.0.1 --advertise-address=$GW \
  --secure-port=$API_PORT --tls-cert-file=$P/apiserver.crt --tls-private-key-file=$P/apiserver.key \
  --client-ca-file=$P/ca.crt --service-account-issuer=https://kubernetes.default.svc --service-account-key-file=$P/sa.pub \
  --service-account-signing-key-file=$P/sa.key --service-cluster-ip-range=$SVC_CIDR \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
  --kubelet-client-certificate=$P/apiserver-kubelet-client.crt --kubelet-client-key=$P/apiserver-kubelet-client.key \
  --kubelet-certificate-authority=$P/ca.crt --kubelet-preferred-address-types=InternalIP \
  --cert-dir=$R/apiserver-certs > $R/apiserver.log 2>&1 &
echo $! > $R/apiserver.pid
until curl -sf --cacert $P/ca.crt https://127.0.0.1:$API_PORT/readyz >/dev/null 2>&1; do sleep 0.1; kill -0 $(cat $R/apiserver.pid) || { tail $R/apiserver.log; exit 1; }; done
# apiserver stays bound to 127.0.0.1; a TCP forwarder on the bridge address lets pods reach it (the Endpoints of
# Service "kubernetes" may not be a loopback address: "may not be in the loopback range (127.0.0.0/8)")
socat TCP-LISTEN:$API_PORT,bind=$GW,reuseaddr,fork TCP:127.0.0.1:$API_PORT > $R/api-forward.log 2>&1 &
echo $! > $R/api-forward.pid
T2=$(now)

# ---------- 3. controller-manager + scheduler ----------
$B/kube-controller-manager --kubeconfig=$R/kubeconfig --leader-elect=false --secure-port=0 --bind-address=127.0.0.1 \
  --service-account-private-key-file=$P/sa.key --root-ca-file=$P/ca.crt --use-service-account-credentials=false \
  --controllers='*,-node-ipam-controller,-persistentvolume-attach-detach-controller' \
  --node-monitor-period=2s --node-monitor-grace-period=20s > $R/cm.log 2>&1 &
echo $! > $R/cm.pid
$B/kube-scheduler --kubeconfig=$R/kubeconfig --authentication-kubeconfig=$R/kubeconfig --authorization-kubeconfig=$R/kubeconfig \
  --leader-elect=false --secure-port=0 --bind-address=127.0.0.1 > $R/sched.log 2>&1 &
echo $! > $R/sched.pid
T3=$(now)

# ---------- 4. CNI config for the bridge created in step 1b ----------
cat > $R/cni/net.d/10-ferry-local.conflist <<EOF
{"cniVersion": "0.4.0", "name": "ferry-local",
 "plugins": [
  {"type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$R/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GW"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
 ]}
EOF

# ---------- 5. containerd 2 (CRI plugin) with private root/state/socket ----------
cat > $C/config.toml <<EOF
version = 3
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "$CSOCK"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_REF"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # this VM's root lacks CAP_SYS_RESOURCE (CapBnd 0x1fffeffffff), so runc cannot set oom_score_adj < 0
  # (pause sandbox gets -998): "nsexec: failed to update /proc/self/oom_score_adj: Permission denied".
  # restrict_oom_score_adj clamps it to containerd's own value (0).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$R/cni/net.d"
    max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
$B/containerd --config $C/config.toml > $R/containerd.log 2>&1 &
echo $! > $R/containerd.pid
until $B/ctr -a $CSOCK version >/dev/null 2>&1; do sleep 0.1; kill -0 $(cat $R/containerd.pid) || { tail $R/containerd.log; exit 1; }; done
for t in $IMAGES; do $B/ctr -a $CSOCK -n k8s.io images import $t >/dev/null 2> >(grep -v "support for cgroup v1 is deprecated" >&2); done
T4=$(now)

# ---------- 6. kubelet ----------
cat > $R/kubelet-config.yaml <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $GW
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# This VM mounts cgroup v1 (hybrid); kubelets from 1.35 refuse it unless told to accept it.
failCgroupV1: false
containerRuntimeEndpoint: unix://$CSOCK
failSwapOn: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
enableControllerAttachDetach: false
serializeImagePulls: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
runtimeRequestTimeout: 5m
EOF
$B/kubelet --config=$R/kubelet-config.yaml --kubeconfig=$R/kubelet.kubeconfig \
  --root-dir=$R/kubelet --cert-dir=$R/kubelet/pki --hostname-override=$NODE --node-ip=$GW --v=${KUBELET_V:-1} > $R/kubelet.log 2>&1 &
echo $! > $R/kubelet.pid

# ---------- 7. kube-proxy (iptables mode) ----------
if [ -z "${NO_PROXY_COMPONENT:-}" ]; then
  $B/kube-proxy --kubeconfig=$R/kube-proxy.kubeconfig --hostname-override=$NODE --bind-address=$GW \
    --cluster-cidr=$POD_CIDR --proxy-mode=iptables --nodeport-addresses=$GW/32 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 > $R/kube-proxy.log 2>&1 &
  echo $! > $R/kube-proxy.pid
fi

until [ "$($KUBECTL get node $NODE -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
  sleep 0.2; kill -0 $(cat $R/kubelet.pid) || { tail -30 $R/kubelet.log; exit 1; }; done
restore_kernel_sysctls
until $KUBECTL get sa default -n default >/dev/null 2>&1; do sleep 0.1; done
# wait until the not-ready taint is gone (node-lifecycle controller), so pods schedule immediately
until [ -z "$($KUBECTL get node $NODE -o jsonpath='{.spec.taints}' 2>/dev/null)" ]; do sleep 0.2; done
T5=$(now)
echo "pki $(echo "$T1-$T0"|bc|xargs printf %.2f)s, etcd+apiserver $(echo "$T2-$T1"|bc|xargs printf %.2f)s, cm+sched start $(echo "$T3-$T2"|bc|xargs printf %.2f)s," \
     "containerd+images $(echo "$T4-$T3"|bc|xargs printf %.2f)s, kubelet->node Ready+untainted $(echo "$T5-$T4"|bc|xargs printf %.2f)s; total $(el $T0)s"
