#!/bin/bash
# A private single-node Slurm cluster for the tests (the recipe of ../shared/cluster, checked
# on this kind of machine): munge, slurmctld and slurmd from Debian's packages, a private
# SLURM_CONF and state under DIR, ports away from a system Slurm's.
#   scripts/slurm_cluster.sh up DIR     prints SLURM_CONF=...; exit 3 if Slurm is not installed
#   scripts/slurm_cluster.sh up2 DIR    two nodes n1, n2: one slurmd in each of the simulated hosts
#                                       h1, h2 (scripts/netns_hosts.sh up first), slurmctld in the
#                                       root namespace on the bridge (10.200.0.254)
#   scripts/slurm_cluster.sh down DIR   stops what `up`/`up2` started, by pid
set -euo pipefail
cmd=$1 SD=$2
start_munge() {
  [ -s /etc/munge/munge.key ] || { mungekey -c -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$SD/munged.pid"   # ours to stop
  fi
  for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
}

common_conf() {  # $1 = cluster name, $2 = controller line, $3 = first port
  cat <<CONF
ClusterName=$1
SlurmctldHost=$2
SlurmctldPort=$3
SlurmdPort=$(($3 + 1))
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$SD/state
SlurmctldPidFile=$SD/slurmctld.pid
SlurmctldLogFile=$SD/log/slurmctld.log
SlurmdTimeout=30
KillWait=5
MinJobAge=600
CONF
}

wait_idle() {
  for i in $(seq 150); do [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] && break; sleep 0.2; done
  [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] || { echo "slurm_cluster: the nodes did not come up; see $SD/log" >&2; exit 4; }
}

case $cmd in
up2)
  command -v slurmctld >/dev/null && command -v munged >/dev/null || { echo "slurm_cluster: Slurm is not installed" >&2; exit 3; }
  ip netns pids h1 >/dev/null 2>&1 && [ -e /run/netns/h2 ] || { echo "slurm_cluster: no simulated hosts h1/h2 (scripts/netns_hosts.sh up)" >&2; exit 3; }
  mkdir -p "$SD/state" "$SD/spool/n1" "$SD/spool/n2" "$SD/tmp/n1" "$SD/tmp/n2" "$SD/log"
  start_munge
  { common_conf tpxtest2 "$(hostname -s)(10.200.0.254)" 7017
    cat <<CONF
TmpFS=$SD/tmp/%n
SlurmdSpoolDir=$SD/spool/%n
SlurmdPidFile=$SD/slurmd-%n.pid
SlurmdLogFile=$SD/log/slurmd-%n.log
NodeName=n1 NodeAddr=10.200.0.1 NodeHostname=n1 CPUs=2 RealMemory=1000 State=UNKNOWN
NodeName=n2 NodeAddr=10.200.0.2 NodeHostname=n2 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  } > "$SD/slurm.conf"
  export SLURM_CONF=$SD/slurm.conf
  slurmctld -i -f "$SLURM_CONF"
  for i in 1 2; do
    # nsenter, not `ip netns exec` (which remounts /sys and breaks slurmd's cgroup setup); its own
    # hostname so that Open MPI's session folders in the shared /tmp do not collide.
    nsenter --net=/run/netns/h$i unshare --uts /bin/sh -c "hostname n$i; exec slurmd -f $SLURM_CONF -N n$i"
  done
  wait_idle
  echo "SLURM_CONF=$SLURM_CONF"
  ;;
up)
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || { echo "slurm_cluster: slurmctld/slurmd/munge are not installed (scripts/install_deps.sh installs them)" >&2; exit 3; }
  [ "$(id -u)" -eq 0 ] || { echo "slurm_cluster: needs root (slurmd runs jobs as their users)" >&2; exit 3; }
  mkdir -p "$SD/state" "$SD/spool" "$SD/log" "$SD/tmp"
  start_munge
  { common_conf tpxtest "$(hostname -s)(127.0.0.1)" 6917
    cat <<CONF
TmpFS=$SD/tmp
SlurmdSpoolDir=$SD/spool
SlurmdPidFile=$SD/slurmd.pid
SlurmdLogFile=$SD/log/slurmd.log
$(slurmd -C | head -1) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  } > "$SD/slurm.conf"
  export SLURM_CONF=$SD/slurm.conf
  slurmctld -i -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  wait_idle
  echo "SLURM_CONF=$SLURM_CONF"
  ;;
down)
  for f in "$SD"/slurmd*.pid "$SD/slurmctld.pid" "$SD/munged.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  ;;
*) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
