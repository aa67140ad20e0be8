#!/usr/bin/env bash
# The main demo: two users' jobs run at the same time, each in its own private namespace
# made by jobns with the built-in default config (base_path /var/lib/jobns, dirs
# /tmp,/dev/shm), no scheduler needed. Their views of /tmp and /dev/shm are shown side by
# side, then the host's view after both jobs ended.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
jobns=$(pwd)/.venv/bin/jobns
# the built-in default: ignore any site config for the demo
export JOBNS_CONFIG= SLURM_CONF=/nonexistent/slurm.conf
users=(nobody daemon)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

job_script='
me=$(id -un)
echo "== job of $me: id $(id -u), $(readlink /proc/self/ns/mnt)"
echo "secret of $me" > /tmp/secret-$me
echo "shm of $me" > /dev/shm/shm-$me
sleep 1          # both jobs are alive now
echo "-- stat /tmp /tmp/*"
stat -c "%A %U:%G %n" /tmp /tmp/*
echo "-- ls /dev/shm"
ls /dev/shm
echo "-- cat /tmp/secret-*"
cat /tmp/secret-*
echo "-- findmnt /tmp; findmnt /dev/shm"
for m in /tmp /dev/shm; do findmnt -n -o TARGET,FSTYPE,OPTIONS "$m" | cut -c1-50; done
'
echo "host: $(readlink /proc/self/ns/mnt); starting one job for each of: ${users[*]}"
pids=()
for u in "${users[@]}"; do
    "$jobns" run --user "$u" -- sh -c "$job_script" >"$out/$u.out" 2>"$out/$u.log" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
echo
pr -m -t -e -w 120 "$out/${users[0]}.out" "$out/${users[1]}.out"
echo
echo "== jobns log"
cat "$out"/*.log
echo
echo "== host after both jobs ended"
echo "-- ls /tmp/secret-* /dev/shm/shm-* (none of the jobs' files leaked):"
ls /tmp/secret-* /dev/shm/shm-* 2>&1 | sed 's/^/   /' || true
echo "-- jobns list:"
"$jobns" list | sed 's/^/   /'
exit $rc
