#!/bin/bash
# Tear down what up.sh started, leaving the VM as it was:
# pods -> kube-proxy/kubelet -> leftover containers -> containerd (+ its shims) -> control plane -> mounts,
# links, iptables, sysctls, dirs. Every process is stopped by its recorded PID (or, for shims, by PIDs found
# as children of our containerd / carrying our containerd socket address) - never by name.
. "$(dirname "$(readlink -f "$0")")/env.sh"
R=${1:-${FERRY_KUBE_RUN:-/tmp/ferry-kube}}
KUBECTL=${KUBECTL:-$KUBE_TOOLS/kubectl}
ctr() { "$KUBE_BIN/ctr" "$@"; }
BR=${BR:-kr0}; C=$R/containerd; CSOCK=$C/containerd.sock; HS=$R/host-state
export KUBECONFIG=$R/kubeconfig
stop() { # name
  [ -f $R/$1.pid ] || return 0; local p; p=$(cat $R/$1.pid)
  kill $p 2>/dev/null
  for i in $(seq 1 150); do kill -0 $p 2>/dev/null || break; [ "$(ps -o stat= -p $p)" = "Z" ] && break; sleep 0.1; done
  kill -0 $p 2>/dev/null && [ "$(ps -o stat= -p $p)" != "Z" ] && kill -9 $p
  rm -f $R/$1.pid
}
# 0. the Ferry operator and router the main job runs on the host (demo.sh), if any
stop ferry-router
stop ferry-operator
# 1. no new pods: stop scheduler + controllers, then let kubelet kill every pod (runs CNI DEL, unmounts volumes)
stop sched; stop cm
if [ -f $R/kubelet.pid ] && kill -0 $(cat $R/kubelet.pid) 2>/dev/null; then
  timeout 90 $KUBECTL delete pods --all -A --grace-period=0 --force >/dev/null 2>&1
  # wait for kubelet to stop all sandboxes (pause tasks gone)
  for i in $(seq 1 100); do
    [ -z "$(ctr -a $CSOCK -n k8s.io tasks ls -q 2>/dev/null)" ] && break; sleep 0.3; done
fi
stop kube-proxy; stop kubelet
# 2. whatever is left in containerd: kill + delete tasks, delete containers (shims exit with their tasks)
if [ -S $CSOCK ]; then
  for t in $(ctr -a $CSOCK -n k8s.io tasks ls -q 2>/dev/null); do ctr -a $CSOCK -n k8s.io tasks kill -s SIGKILL $t 2>/dev/null; done
  sleep 1
  for t in $(ctr -a $CSOCK -n k8s.io tasks ls -q 2>/dev/null); do ctr -a $CSOCK -n k8s.io tasks rm -f $t >/dev/null 2>&1; done
  for c in $(ctr -a $CSOCK -n k8s.io containers ls -q 2>/dev/null); do ctr -a $CSOCK -n k8s.io containers rm $c >/dev/null 2>&1; done
fi
CPID=$(cat $R/containerd.pid 2>/dev/null)
stop containerd
# shims are re-parented away from containerd; find any still carrying our socket address and stop them by PID
for p in $(ps -eo pid=,args= | awk -v s="$CSOCK" 'index($0, "-address " s) {print $1}'); do kill $p 2>/dev/null; done
sleep 0.5
for p in $(ps -eo pid=,args= | awk -v s="$CSOCK" 'index($0, "-address " s) {print $1}'); do kill -9 $p 2>/dev/null; done
# 3. control plane
# socat forks one child per connection: stop those children (by PID, via --ppid) before the parent
[ -f $R/api-forward.pid ] && for c in $(ps -o pid= --ppid $(cat $R/api-forward.pid) 2>/dev/null); do kill $c 2>/dev/null; done
stop api-forward; stop apiserver; stop etcd
[ -f $R/etcd.datadir ] && rm -rf "$(cat $R/etcd.datadir)" $R/etcd.datadir
# 4. mounts (deepest first): kubelet root-dir bind + volumes, containerd rootfs/shm/netns, /run/containerd
for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($R/|/run/containerd/|/var/run/netns/|/run/netns/)" | sort -r); do
  umount $m 2>/dev/null || umount -l $m
done
mountpoint -q $R/kubelet && umount $R/kubelet
# 4b. cgroups the kubelet created (/kubepods/... in every v1 hierarchy); rmdir depth-first, only empty ones
for h in /sys/fs/cgroup/*/kubepods; do
  [ -d $h ] && find $h -depth -type d -exec rmdir {} \; 2>/dev/null; done
# 5. network: veths on our bridge, the bridge, iptables (restore the saved, pre-cluster rules)
for v in $(ip -o link show master $BR 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del $v 2>/dev/null; done
ip link del $BR 2>/dev/null
if [ -f $HS/iptables.save ]; then
  for T in filter nat mangle raw security; do iptables-nft -t $T -F 2>/dev/null; iptables-nft -t $T -X 2>/dev/null
                                             ip6tables-nft -t $T -F 2>/dev/null; ip6tables-nft -t $T -X 2>/dev/null; done
  [ -s $HS/iptables.save ] && iptables-nft-restore < $HS/iptables.save
  [ -s $HS/ip6tables.save ] && ip6tables-nft-restore < $HS/ip6tables.save
  # drop the (now empty) nft tables the cluster created, if the nft CLI is there
  if command -v nft >/dev/null && [ ! -s $HS/iptables.save ] && [ ! -s $HS/ip6tables.save ]; then
    for fam in ip ip6; do for T in filter nat mangle raw security; do nft delete table $fam $T 2>/dev/null; done; done
  fi
fi
conntrack -F >/dev/null 2>&1
# 6. sysctls + directories that did not exist before
[ -f $HS/sysctl.saved ] && while IFS== read k v; do sysctl -qw "$k=$v"; done < $HS/sysctl.saved
[ -f $HS/created-dirs ] && while read d; do rm -rf "$d"; done < $HS/created-dirs
rm -rf $C/root $C/state $R/kubelet $R/cni/ipam
rm -rf $HS
echo "down: done (logs kept in $R)"
