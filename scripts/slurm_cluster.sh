#!/bin/bash
# A private single-node Slurm cluster for the tests (the recipe of ../shared/cluster, checked
# on this kind of machine): munge, slurmctld and slurmd from Debian's packages, a private
# SLURM_CONF and state under DIR, ports away from a system Slurm's.
#   scripts/slurm_cluster.sh up DIR     prints SLURM_CONF=...; exit 3 if Slurm is not installed
#   scripts/slurm_cluster.sh down DIR   stops what `up` started, by pid
set -euo pipefail
cmd=$1 SD=$2
case $cmd in
up)
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || { echo "slurm_cluster: slurmctld/slurmd/munge are not installed (scripts/install_deps.sh installs them)" >&2; exit 3; }
  [ "$(id -u)" -eq 0 ] || { echo "slurm_cluster: needs root (slurmd runs jobs as their users)" >&2; exit 3; }
  mkdir -p "$SD/state" "$SD/spool" "$SD/log" "$SD/tmp"
  [ -s /etc/munge/munge.key ] || { mungekey -c -f; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$SD/munged.pid"   # ours to stop
  fi
  for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  H=$(hostname -s)
  cat > "$SD/slurm.conf" <<CONF
ClusterName=tpxtest
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
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
TmpFS=$SD/tmp
StateSaveLocation=$SD/state
SlurmdSpoolDir=$SD/spool
SlurmctldPidFile=$SD/slurmctld.pid
SlurmdPidFile=$SD/slurmd.pid
SlurmctldLogFile=$SD/log/slurmctld.log
SlurmdLogFile=$SD/log/slurmd.log
SlurmdTimeout=30
KillWait=5
MinJobAge=600
$(slurmd -C | head -1) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  export SLURM_CONF=$SD/slurm.conf
  slurmctld -i -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for i in $(seq 150); do [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break; sleep 0.2; done
  [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || { echo "slurm_cluster: the node did not come up; see $SD/log" >&2; exit 4; }
  echo "SLURM_CONF=$SLURM_CONF"
  ;;
down)
  for f in "$SD/slurmd.pid" "$SD/slurmctld.pid" "$SD/munged.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  ;;
*) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
