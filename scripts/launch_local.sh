#!/usr/bin/env bash
# Starts one TCP-transport job of S servers and W workers on this host, one process each.
#
#   scripts/launch_local.sh [-s S] [-w W] [-p PORT] [-k KEYFILE] [-o LOGDIR] [-g GRACE] [--] BIN train ARGS...
#
#   -s S        servers (default 1)             -w W       workers (default 2)
#   -p PORT     coordinator port on 127.0.0.1, where server 0 listens (default: a free port)
#   -k KEYFILE  shared secret (default: a fresh one from `BIN keygen` in a private temporary
#               directory, removed at exit; none when ARGS contain --insecure)
#   -o LOGDIR   per-process logs and the other workers' output directories (default: a new
#               directory under ${TMPDIR:-/tmp}, kept and named on stderr)
#   -g GRACE    seconds the others get to report a failure before they are stopped (default 3)
#   -B          leave the processes' placement on CPUs to the kernel (default: when S + W is at
#               most the CPUs this script may use, each process is bound to one of them, servers
#               first: two busy processes left to the kernel often share a core while another
#               idles, which made TCP rounds up to 2x slower; see docs/benchmarks.md)
#
# BIN is the shardps binary (e.g. build/bin/shardps). Each process runs
#   BIN train ARGS... --transport tcp --coordinator 127.0.0.1:PORT --role server|worker --rank R
#       --num-servers S --num-workers W --secret-file KEYFILE
# so ARGS must not contain those flags. With `train`, worker 0 keeps ARGS' --out-dir (it alone
# writes the summary, metrics and model) and worker k > 0 gets --out-dir LOGDIR/worker-k instead
# (other subcommands, e.g. `bench`, get none). Worker 0 prints to this terminal; the output of
# worker k > 0 and of every server goes to LOGDIR/worker-k.log and LOGDIR/server-i.log.
#
# Exit status: 0 when every process succeeded. When one fails, the others get GRACE seconds to
# print their own error (they notice a lost peer by themselves), then SIGTERM, then SIGKILL 5 s
# later; the status is the first failure's (128+N for a process ended by signal N). SIGINT,
# SIGTERM and SIGHUP are passed on to every process as SIGTERM; the status is then 128+signal.
# Every process runs in its own process group, and no process is left behind at exit.
#
#   scripts/launch_local.sh -s 2 -w 2 -- build/bin/shardps train \
#       --config examples/configs/fashion_mlp.prototxt --out-dir run1 --checkpoint-dir ck
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}
die() {
  echo "launch_local: $*" >&2
  exit 2
}

servers=1 workers=2 port='' key='' logdir='' grace=3 bind=1
while getopts ':s:w:p:k:o:g:Bh' opt; do
  case $opt in
    s) servers=$OPTARG ;;
    w) workers=$OPTARG ;;
    p) port=$OPTARG ;;
    k) key=$OPTARG ;;
    o) logdir=$OPTARG ;;
    g) grace=$OPTARG ;;
    B) bind=0 ;;
    h) usage ;;
    :) die "-$OPTARG needs a value" ;;
    *) die "unknown option -$OPTARG (-h for help)" ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 2 ]] || usage
for n in "$servers" "$workers" "$grace" ${port:+"$port"}; do
  [[ $n =~ ^[0-9]+$ ]] || die "'$n' is not a number"
done
((servers >= 1 && workers >= 1)) || die "need at least one server and one worker"

bin=$1
shift
cmd=("$@")  # the subcommand and its flags
others=()  # cmd without --out-dir, for the workers k > 0
insecure=0
skip=0
for a in "${cmd[@]}"; do
  if ((skip)); then
    skip=0
    continue
  fi
  case $a in
    --transport | --transport=* | --coordinator | --coordinator=* | --role | --role=* | --rank | --rank=* | \
      --num-servers | --num-servers=* | --num-workers | --num-workers=* | --secret-file | --secret-file=*)
      die "${a%%=*} is set by this script; leave it out" ;;
    --out-dir) skip=1 ;;
    --out-dir=*) ;;
    --insecure) insecure=1; others+=("$a") ;;
    *) others+=("$a") ;;
  esac
done
((skip == 0)) || die "--out-dir needs a value"

if [[ -z $port ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null) || port=$((20000 + RANDOM % 30000))
fi

tmp=''
declare -A name_of=()  # pid -> "server 0", "worker 1", ...
live=()                # pids not yet reaped

kill_groups() {  # kill_groups SIGNAL PID...: the process groups of the running processes we started
  local sig=$1 pid
  shift
  for pid in "$@"; do
    kill -s "$sig" -- "-$pid" 2>/dev/null || kill -s "$sig" "$pid" 2>/dev/null || true
  done
}
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local rc=$? pid
  trap - INT TERM HUP
  if ((${#live[@]})); then
    kill_groups KILL "${live[@]}"
  fi
  for pid in "${!name_of[@]}"; do  # what is left in the groups of those that ended (e.g. a wrapper's children)
    kill -s KILL -- "-$pid" 2>/dev/null || true
  done
  [[ -z $tmp ]] || rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

stopping=''     # set once a process failed or we got a signal
first_rc=0 first_name=''
term_at=0 kill_at=0 termed=0

now_ms() {
  local t=${EPOCHREALTIME//[!0-9]/}
  echo $((10#$t / 1000))
}
# shellcheck disable=SC2317  # run by the signal traps
on_signal() {  # on_signal NUMBER
  if [[ -z $first_name ]]; then
    first_rc=$((128 + $1)) first_name="this script (signal $1)"
  fi
  stopping=signal
  term_at=$(now_ms) kill_at=$((term_at + 5000))
}
trap 'on_signal 2' INT
trap 'on_signal 15' TERM
trap 'on_signal 1' HUP

if ((insecure)); then
  secret=()
else
  if [[ -z $key ]]; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/shardps-key.XXXXXX")
    key=$tmp/secret
    "$bin" keygen --out "$key" >/dev/null
  fi
  [[ -r $key ]] || die "cannot read the secret file $key"
  secret=(--secret-file "$key")
fi
if [[ -z $logdir ]]; then
  logdir=$(mktemp -d "${TMPDIR:-/tmp}/shardps-launch.XXXXXX")
fi
mkdir -p "$logdir"
cpus=()  # cpus[j]: the CPU of the j-th process started (servers, then workers); empty: not bound
if ((bind)) && command -v taskset >/dev/null; then
  read -r -a allowed < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))' 2>/dev/null) || allowed=()
  if ((${#allowed[@]} >= servers + workers)); then
    cpus=("${allowed[@]:0:servers + workers}")
  fi
fi
placement="placement left to the kernel"
((${#cpus[@]} == 0)) || placement="bound to CPUs ${cpus[*]}"
echo "launch_local: $servers server(s) + $workers worker(s) at 127.0.0.1:$port ($placement); logs in $logdir" >&2

start() {  # start NAME LOG CPU_INDEX ARGS...
  local name=$1 log=$2 j=$3
  shift 3
  ((${#cpus[@]} == 0)) || set -- taskset -c "${cpus[j]}" "$@"
  if [[ -n $log ]]; then
    setsid "$@" </dev/null >"$log" 2>&1 &
  else
    setsid "$@" </dev/null &
  fi
  name_of[$!]=$name
  live+=("$!")
}
[[ -z $stopping ]] || exit "$first_rc"  # a signal came before anything started
flags=(--transport tcp --coordinator "127.0.0.1:$port" --num-servers "$servers" --num-workers "$workers"
  "${secret[@]}")
for ((i = 0; i < servers; i++)); do
  start "server $i" "$logdir/server-$i.log" "$i" "$bin" "${cmd[@]}" "${flags[@]}" --role server --rank "$i"
done
# Only `train` writes outputs (--out-dir); `bench` and the other subcommands take no such flag.
own_out=()
[[ ${cmd[0]} != train ]] || own_out=(--out-dir)
for ((k = 1; k < workers; k++)); do
  start "worker $k" "$logdir/worker-$k.log" $((servers + k)) "$bin" "${others[@]}" \
    ${own_out[@]+"${own_out[@]}" "$logdir/worker-$k"} "${flags[@]}" --role worker --rank "$k"
done
start "worker 0" '' "$servers" "$bin" "${cmd[@]}" "${flags[@]}" --role worker --rank 0

reap() {  # reap PID STATUS: a process ended
  local pid=$1 rc=$2 name=${name_of[$1]} log p
  local keep=()
  for p in "${live[@]}"; do
    [[ $p == "$pid" ]] || keep+=("$p")
  done
  live=("${keep[@]}")
  ((rc != 0)) || return 0
  if ((termed)); then
    echo "launch_local: $name (pid $pid) stopped, status $rc" >&2
    return 0
  fi
  log=''
  [[ $name == worker\ 0 || ! -s $logdir/${name/ /-}.log ]] || log=$logdir/${name/ /-}.log
  echo "launch_local: $name (pid $pid) exited with status $rc${log:+; the end of $log:}" >&2
  [[ -z $log ]] || tail -n 3 "$log" | sed "s/^/  [$name] /" >&2
  if [[ -z $first_name ]]; then
    first_rc=$rc first_name=$name
  fi
  if [[ -z $stopping ]]; then
    stopping=failure
    term_at=$(($(now_ms) + grace * 1000)) kill_at=$((term_at + 5000))
    if ((${#live[@]})); then
      echo "launch_local: stopping the other processes in ${grace} s" >&2
    fi
  fi
}

while ((${#live[@]})); do
  if [[ -z $stopping ]]; then
    pid='' rc=0
    wait -n -p pid "${live[@]}" || rc=$?
    [[ -z ${pid:-} ]] || reap "$pid" "$rc"  # no pid: a signal interrupted the wait
    continue
  fi
  for pid in "${live[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then  # ended (this shell has reaped it); fetch its status
      rc=0
      wait "$pid" || rc=$?
      reap "$pid" "$rc"
    fi
  done
  ((${#live[@]})) || break
  t=$(now_ms)
  if ((t >= kill_at)); then
    echo "launch_local: killing ${#live[@]} process(es) still running" >&2
    kill_groups KILL "${live[@]}"
    for pid in "${live[@]}"; do
      wait "$pid" 2>/dev/null || true
    done
    live=()
  elif ((t >= term_at && !termed)); then
    termed=1
    kill_groups TERM "${live[@]}"
  fi
  sleep 0.1
done
if [[ -n $first_name ]]; then
  echo "launch_local: failed: $first_name first, status $first_rc" >&2
fi
exit "$first_rc"
