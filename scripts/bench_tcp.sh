#!/usr/bin/env bash
# TCP against MPI on this host, in one run: the push+pull round of 10M floats (1 server + 1 worker)
# over MPI and over TCP loopback, and the cost of authentication on a 1K-float round (TCP with a
# secret against --insecure). Runs alternate; prints every run and the medians.
#   scripts/bench_tcp.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
BIN=${SHARDPS_BIN:-build/bin/shardps}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$BIN" keygen --out "$OUT/key" >/dev/null
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp_bench() {  # tcp_bench FLOATS ROUNDS AUTH_FLAGS... -> one JSON line
  local floats=$1 rounds=$2; shift 2
  local port; port=$(free_port)
  local common=(bench --transport tcp --coordinator "127.0.0.1:$port" --num-servers 1 --num-workers 1
                --floats "$floats" --rounds "$rounds" --setup-timeout 60 "$@")
  # Each process on a CPU of its own when there are two (as scripts/launch_local.sh does).
  local bs=() bw=()
  if (($(nproc) >= 2)); then
    local cpus
    read -r -a cpus < <(/usr/bin/python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
    bs=(taskset -c "${cpus[0]}") bw=(taskset -c "${cpus[1]}")
  fi
  "${bs[@]}" "$BIN" "${common[@]}" --role server --rank 0 >/dev/null &
  local server=$!
  "${bw[@]}" "$BIN" "${common[@]}" --role worker --rank 0
  wait "$server"
}
for i in $(seq "$RUNS"); do
  mpirun -np 2 --bind-to none "$BIN" bench --servers 1 --floats 10000000 --rounds 30 --no-allreduce >"$OUT/mpi10m_$i.json"
  tcp_bench 10000000 30 --secret-file "$OUT/key" >"$OUT/tcp10m_$i.json"
  tcp_bench 1000 2000 --secret-file "$OUT/key" >"$OUT/tcp1k_auth_$i.json"
  tcp_bench 1000 2000 --insecure >"$OUT/tcp1k_insecure_$i.json"
  mpirun -np 2 --bind-to none "$BIN" bench --servers 1 --floats 1000 --rounds 2000 --no-allreduce >"$OUT/mpi1k_$i.json"
done
/usr/bin/python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def col(name, key="round_ms"):
    rows = [json.load(open(f"{out}/{name}_{i}.json")) for i in range(1, runs + 1)]
    return [r[key]["median"] if isinstance(r[key], dict) else r[key] for r in rows]
lines = [("MPI 10M floats round (ms)", col("mpi10m")),
         ("TCP 10M floats round (ms)", col("tcp10m")),
         ("MPI 1K floats round (ms)", col("mpi1k")),
         ("TCP 1K round, authenticated (ms)", col("tcp1k_auth")),
         ("TCP 1K round, --insecure (ms)", col("tcp1k_insecure")),
         ("TCP rendezvous 1+1, authenticated (ms)", col("tcp1k_auth", "setup_ms")),
         ("TCP rendezvous 1+1, --insecure (ms)", col("tcp1k_insecure", "setup_ms"))]
for name, v in lines:
    print(f"{name:42s}" + "  ".join(f"{x:9.4f}" for x in v) + f"   median {statistics.median(v):9.4f}")
m = dict((n, statistics.median(v)) for n, v in lines)
print(f"TCP/MPI 10M round: {m['TCP 10M floats round (ms)'] / m['MPI 10M floats round (ms)']:.2f}x; "
      f"authentication on a 1K round: {m['TCP 1K round, authenticated (ms)'] / m['TCP 1K round, --insecure (ms)']:.2f}x")
PY
