#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster from Debian packages (slurmctld, slurmd, slurm-client, munge), following
# ../shared/reference/slurm-local.md. Needs root, no systemd: daemons are started by hand and their PIDs recorded in
# $SLURM_CI_STATE so that slurm_local_down.sh stops exactly these processes.
#   FAKE_GPUS=8 FAKE_CPUS=80  advertise /dev/null-clone "GPUs" and more CPUs, so 8-GPU sbatch scripts submit unchanged
# Exit status 3 = the packages cannot be installed (the caller skips).
set -euo pipefail

STATE=${SLURM_CI_STATE:-/run/slurm-ci}
FAKE_GPUS=${FAKE_GPUS:-0}
FAKE_CPUS=${FAKE_CPUS:-}
FAKE_MEM_MB=${FAKE_MEM_MB:-}
PARTITIONS=${PARTITIONS:-debug}
mkdir -p "$STATE"

pkgs="slurmctld slurmd slurm-client munge"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null || ! { apt-get update -q && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs; }; then
    echo "slurm_local_up: cannot install $pkgs" >&2
    exit 3
  fi
fi

# munge: no systemd here, so create its runtime dir and start it by hand
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge | grep -q 'STATUS: *Success'

H=$(hostname -s)
CPUS=${FAKE_CPUS:-$(nproc)}
MEM=${FAKE_MEM_MB:-$(( $(free -m | awk '/^Mem:/{print $2}') - 1024 ))}
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
GRES_TYPES="" NODE_GRES=""
if [ "$FAKE_GPUS" -gt 0 ]; then  # gres/gpu needs File= entries that are device nodes: /dev/null clones
  mkdir -p "$STATE/fakegpu"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -c "$STATE/fakegpu/gpu$i" ] || mknod "$STATE/fakegpu/gpu$i" c 1 3
  done
  printf '# written by slurm_local_up.sh\nAutoDetect=off\nNodeName=%s Name=gpu File=%s/fakegpu/gpu[0-%d]\n' \
    "$H" "$STATE" $((FAKE_GPUS - 1)) > /etc/slurm/gres.conf
  GRES_TYPES="GresTypes=gpu" NODE_GRES="Gres=gpu:$FAKE_GPUS"
elif [ -f /etc/slurm/gres.conf ] && grep -q 'slurm_local_up.sh' /etc/slurm/gres.conf; then
  rm -f /etc/slurm/gres.conf
fi

cat > /etc/slurm/slurm.conf <<CONF
# written by slurm_local_up.sh: single-node test cluster
ClusterName=ci
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=3600
KillWait=5
Waittime=0
${GRES_TYPES}
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${MEM} ${NODE_GRES} State=UNKNOWN
CONF
def=YES
for p in ${PARTITIONS//,/ }; do
  echo "PartitionName=$p Nodes=${H} Default=$def MaxTime=INFINITE State=UP" >> /etc/slurm/slurm.conf
  def=NO
done

# -c: clean state (no jobs or DRAIN flags from an earlier run)
setsid /usr/sbin/slurmctld -D -c >/var/log/slurm/slurmctld.out 2>&1 </dev/null &
echo $! > "$STATE/slurmctld.pid"
setsid /usr/sbin/slurmd -D >/var/log/slurm/slurmd.out 2>&1 </dev/null &
echo $! > "$STATE/slurmd.pid"
for _ in $(seq 150); do
  [ "$(sinfo -h -n "$H" -o '%T' 2>/dev/null)" = idle ] && break
  sleep 0.2
done
if [ "$(sinfo -h -n "$H" -o '%T' 2>/dev/null)" != idle ]; then
  echo "slurm_local_up: node $H is not idle:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
sinfo -o '%P %a %D %T %N cpus=%c mem=%m gres=%G'
