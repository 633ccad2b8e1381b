#!/usr/bin/env bash
# Install the Debian packages the test bed needs (network namespaces, nftables,
# etcd, SLURM, munge, numactl for --numa-binding).  Idempotent: apt-get runs only when something is missing.
# There is no init system here, so package postinst scripts must not try to
# start services: a temporary policy-rc.d returning 101 tells invoke-rc.d no.
set -euo pipefail

PACKAGES=(iproute2 nftables etcd-server etcd-client slurm-wlm slurmctld slurmd
          slurm-client munge util-linux procps numactl)
BINARIES=(ip nft etcd etcdctl slurmctld slurmd sbatch srun squeue scancel sinfo
          scontrol munged mungekey nsenter unshare ps numactl)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install.sh: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install.sh: installing ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    trap 'if [[ $created_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # A postinst that still fails to start a service leaves the package
    # half-configured; configure again, tolerating that, then check binaries.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        echo "install.sh: apt-get install reported an error; retrying configure" >&2
        dpkg --configure -a || true
    fi
fi

# Debian puts sbin tools outside a non-root PATH; search there too.
export PATH="$PATH:/usr/sbin:/sbin"
bad=()
for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || bad+=("$b")
done
if ((${#bad[@]})); then
    echo "install.sh: missing binaries after install: ${bad[*]}" >&2
    exit 1
fi
echo "install.sh: test bed packages present"
