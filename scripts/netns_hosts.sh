#!/bin/bash
# Two simulated hosts for the multi-host tests (the recipe of ../shared/cluster, checked on this
# kind of machine): network namespaces h1 = 10.200.0.1 and h2 = 10.200.0.2 on a bridge brmpi
# (10.200.0.254 in the root namespace). scripts/netns_rsh enters them as mpirun's rsh agent,
# each with its own hostname.
#   scripts/netns_hosts.sh up | down | kill HOST   (kill: every process of HOST, then HOST itself)
set -euo pipefail
case ${1:-} in
up)
  [ "$(id -u)" -eq 0 ] || { echo "netns_hosts: needs root" >&2; exit 3; }
  command -v ip >/dev/null || { echo "netns_hosts: iproute2 is not installed" >&2; exit 3; }
  "$0" down
  ip link add brmpi type bridge || { echo "netns_hosts: cannot create a bridge here" >&2; exit 3; }
  ip addr add 10.200.0.254/24 dev brmpi
  ip link set brmpi up
  for i in 1 2; do
    ip netns add h$i
    ip link add veth-h$i type veth peer name eth0 netns h$i
    ip link set veth-h$i master brmpi up
    ip -n h$i addr add 10.200.0.$i/24 dev eth0
    ip -n h$i link set eth0 up
    ip -n h$i link set lo up
  done
  ;;
down)
  for i in 1 2; do
    for p in $(ip netns pids h$i 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip link del veth-h$i 2>/dev/null || true
    ip netns del h$i 2>/dev/null || true
  done
  ip link del brmpi 2>/dev/null || true
  # Links go away asynchronously; the next `up` needs their names free.
  for t in $(seq 100); do
    ip link show veth-h1 &>/dev/null || ip link show veth-h2 &>/dev/null || ip link show brmpi &>/dev/null || break
    sleep 0.1
  done
  ;;
kill)
  # A host dying: its processes end at once, its network and the host itself go away.
  for p in $(ip netns pids "$2" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip link del "veth-$2" 2>/dev/null || true
  ip netns del "$2" 2>/dev/null || true
  ;;
*) echo "usage: $0 up|down|kill HOST" >&2; exit 2 ;;
esac
