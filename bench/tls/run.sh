#!/usr/bin/env bash
# TLS companion to the shared LB harness (../shared/bench): TLS keep-alive and HTTP/2-over-TLS
# throughput per LB core, nginx vs HAProxy vs Fulcrum. See bench/tls/README.md.
#
#   bench/tls/run.sh [--lbs "nginx haproxy fulcrum"] [--scenarios "tls-small tls-4k tls-h2"]
#                    [--rounds 3] [--duration 10] [--warmup 2] [--conns 64] [--out DIR]
#
# Env: FULCRUM_BIN (default <repo>/target/release/fulcrum), BENCH_HARNESS (the harness folder,
# default ../shared/bench beside the repo), LB_CPU (0), GEN_CPU (1), KEEP_WORK=1 keeps the temp dir.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

# The harness's lib (backend, process bookkeeping, /proc accounting, wrk/h2load parsing) is
# reused as is, so both measure the same way.
if [[ -z ${BENCH_HARNESS:-} ]]; then
    for cand in "$REPO_ROOT/../shared/bench" "$REPO_ROOT/../../shared/bench" /work/shared/bench; do
        [[ -f $cand/lib/common.sh ]] && { BENCH_HARNESS=$(cd "$cand" && pwd); break; }
    done
fi
[[ -f ${BENCH_HARNESS:-}/lib/common.sh ]] || {
    echo "harness not found: set BENCH_HARNESS to the folder of the shared bench.sh" >&2
    exit 1
}
BENCH_LIB=$BENCH_HARNESS/lib
# shellcheck source=/dev/null
source "$BENCH_LIB/common.sh"

LBS="nginx haproxy fulcrum"
SCENARIOS="tls-small tls-4k tls-h2"
ROUNDS=3
DURATION=10
WARMUP=2
CONNS=64
H2_CONNS=8
H2_STREAMS=8
OUT=""
TLS_LISTEN=127.0.0.1:8443
FULCRUM_BIN=${FULCRUM_BIN:-$REPO_ROOT/target/release/fulcrum}

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case $1 in
    --lbs) LBS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
for sc in $SCENARIOS; do
    [[ $sc =~ ^tls-(small|4k|h2)$ ]] || die "unknown scenario $sc (tls-small tls-4k tls-h2)"
done
for lb in $LBS; do
    [[ $lb =~ ^(nginx|haproxy|fulcrum)$ ]] || die "unknown LB $lb (nginx haproxy fulcrum)"
done

for t in nginx wrk curl openssl taskset python3 ss; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
[[ $LBS == *haproxy* ]] && ! command -v haproxy >/dev/null && die "missing tool: haproxy"
[[ $SCENARIOS == *tls-h2* ]] && ! command -v h2load >/dev/null && die "missing tool: h2load (nghttp2-client)"
(($(nproc) >= 2)) || log "WARNING: fewer than 2 CPUs; LB and generator will share a core"

STAMP=$(date +%Y%m%d-%H%M%S)
[[ -n $OUT ]] || OUT=$REPO_ROOT/target/bench/tls-$STAMP
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d -t tlsbench.XXXXXX)
PIDFILE=$WORK/pids
: >"$PIDFILE"
BACKEND_PID=""
LB_PID=""
GEN_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n ${GEN_PID:-} ]] && stop_tree "$GEN_PID"
    [[ -n ${LB_PID:-} ]] && stop_tree "$LB_PID"
    [[ -n ${BACKEND_PID:-} ]] && stop_tree "$BACKEND_PID"
    local pid st label
    while read -r pid st label; do
        if alive "$pid" "$st"; then
            log "cleanup: stopping leftover $label pid $pid"
            kill -TERM "$pid" 2>/dev/null
        fi
    done <"$PIDFILE"
    [[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

for port in "${BACKEND_PORTS[@]}" "$BACKEND_STATUS_PORT" "${TLS_LISTEN##*:}"; do
    port_in_use "127.0.0.1:$port" && die "port $port is already in use; stop whatever listens there first"
done

# ---------- one self-signed ECDSA P-256 certificate ----------
CERT=$WORK/cert.pem
KEY=$WORK/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$KEY" -out "$CERT" >"$WORK/openssl.out" 2>&1 || die "openssl: $(cat "$WORK/openssl.out")"
cat "$CERT" "$KEY" >"$WORK/haproxy.pem"   # HAProxy wants certificate and key in one file

# ---------- backend: the harness's nginx, 3 server blocks on 9001-9003, pinned to GEN_CPU ----------
mkdir -p "$WORK/backend"
backend_conf "$WORK/backend"
SPAWN_CPU=$GEN_CPU spawn "$WORK/backend" backend nginx -c "$WORK/backend/backend.conf" -e "$WORK/backend/backend-error.log"
BACKEND_PID=$SPAWNED_PID
wait_http "http://127.0.0.1:9001/" 10 "$BACKEND_PID" || die "backend did not start: $(cat "$WORK/backend/backend.out")"
log "backend nginx pid $BACKEND_PID on CPU $GEN_CPU, ports ${BACKEND_PORTS[*]}"

# ---------- the LBs: each terminates TLS on TLS_LISTEN, 1 worker/thread, pinned to LB_CPU ----------
start_nginx() {
    local d=$1
    cat >"$d/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/nginx-error.log warn;
worker_rlimit_nofile $FD_LIMIT;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    upstream backends {
        server 127.0.0.1:9001;
        server 127.0.0.1:9002;
        server 127.0.0.1:9003;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen $TLS_LISTEN ssl http2 backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
CONF
    spawn "$d" lb nginx -c "$d/nginx.conf" -e "$d/nginx-error.log"
}

start_haproxy() {
    local d=$1
    cat >"$d/haproxy.cfg" <<CONF
global
    nbthread 1
    no strict-limits
    maxconn 12000
    pidfile $d/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 300s
    maxconn 12000
frontend fe
    bind $TLS_LISTEN ssl crt $WORK/haproxy.pem alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:9001
    server s2 127.0.0.1:9002
    server s3 127.0.0.1:9003
CONF
    spawn "$d" lb haproxy -db -f "$d/haproxy.cfg"
}

start_fulcrum() {
    local d=$1
    [[ -x $FULCRUM_BIN ]] || { log "no fulcrum binary at $FULCRUM_BIN (cargo build --release, or set FULCRUM_BIN)"; return 1; }
    cat >"$d/fulcrum.toml" <<CONF
[global]
workers = 1
access_log = "off"

[[listeners]]
name = "tls"
listen = "$TLS_LISTEN"

[listeners.tls]
certificates = [ { cert = "$CERT", key = "$KEY" } ]

[[routes]]
upstream = "app"

[upstreams.app]
balance = "round_robin"
keepalive = 128
keepalive_timeout = "300s"
servers = [ { address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }, { address = "127.0.0.1:9003" } ]
CONF
    "$FULCRUM_BIN" check -c "$d/fulcrum.toml" >"$d/check.out" 2>&1 || {
        log "fulcrum check failed (a binary without TLS?): $(tail -1 "$d/check.out")"
        return 1
    }
    spawn "$d" lb "$FULCRUM_BIN" run -c "$d/fulcrum.toml"
}

lb_version() {
    case $1 in
    nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
    haproxy) haproxy -v | head -1 | awk '{print $3}' ;;
    fulcrum) "$FULCRUM_BIN" --version 2>/dev/null | head -1 ;;
    esac
}

# wait_https URL SECONDS PID: until URL answers 200 over TLS (certificate not verified)
wait_https() {
    local url=$1 t=$2 pid=$3 i code
    for ((i = 0; i < t * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        code=$(curl -sk -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

RUN_SEQ=0
start_lb() { # NAME -> LB_PID, LB_DIR
    LB_DIR=$WORK/$1.$((++RUN_SEQ))
    mkdir -p "$LB_DIR"
    "start_$1" "$LB_DIR" || return 1
    LB_PID=$SPAWNED_PID
    if ! wait_https "https://$TLS_LISTEN/" 15 "$LB_PID"; then
        log "LB $1 did not answer on https://$TLS_LISTEN/; its output:"
        cat "$LB_DIR"/*.out "$LB_DIR"/*error* 2>/dev/null | tail -20 >&2
        stop_tree "$LB_PID"; LB_PID=""
        return 1
    fi
}
stop_lb() {
    [[ -n $LB_PID ]] && stop_tree "$LB_PID"
    LB_PID=""
    local i
    for ((i = 0; i < 50; i++)); do port_in_use "$TLS_LISTEN" || break; sleep 0.1; done
}

# ---------- functional checks ----------
declare -A VERSIONS TLSINFO H2OK
VERSIONS[backend-nginx]=$(nginx -v 2>&1 | sed 's/^nginx version: //')
VERSIONS[wrk]=$(wrk -v 2>&1 | head -1 | awk '{print $2}')
command -v h2load >/dev/null && VERSIONS[h2load]=$(h2load --version | awk '{print $2}')
VERSIONS[openssl]=$(openssl version | awk '{print $2}')
VERSIONS[kernel]=$(uname -r)
GOOD_LBS=""
for lb in $LBS; do
    start_lb "$lb" || { log "SKIP $lb: failed to start"; continue; }
    VERSIONS[$lb]=$(lb_version "$lb")
    ok=1
    body=$(curl -sk -m 2 "https://$TLS_LISTEN/"); [[ $body == ok ]] || { log "$lb: / returned '$body'"; ok=0; }
    n=$(curl -sk -m 2 "https://$TLS_LISTEN/4k" | wc -c); [[ $n == 4096 ]] || { log "$lb: /4k returned $n bytes"; ok=0; }
    seen=$(for _ in 1 2 3 4 5 6; do curl -sk -m 2 "https://$TLS_LISTEN/who"; done | sort -u | tr '\n' ' ')
    [[ $(wc -w <<<"$seen") == 3 ]] || log "WARNING $lb: round robin did not hit all 3 backends ($seen)"
    # what wrk gets (no ALPN): protocol version and cipher suite
    TLSINFO[$lb]=$(openssl s_client -connect "$TLS_LISTEN" -servername localhost -brief </dev/null 2>&1 |
        awk -F': ' '/^Protocol version/ {p=$2} /^Ciphersuite/ {c=$2} END {print p, c}')
    h2ver=$(curl -sk -m 2 --http2 -o /dev/null -w '%{http_version}' "https://$TLS_LISTEN/")
    if [[ $h2ver == 2 ]]; then H2OK[$lb]=1; else log "$lb: no h2 by ALPN (curl got HTTP/$h2ver), tls-h2 will skip it"; fi
    log "check $lb: version '${VERSIONS[$lb]}', TLS '${TLSINFO[$lb]}', h2 ${H2OK[$lb]:-0}, upstreams seen: $seen"
    stop_lb
    if ((ok)); then GOOD_LBS="$GOOD_LBS $lb"; else log "SKIP $lb: functional check failed"; fi
done
LBS=${GOOD_LBS# }
[[ -n $LBS ]] || die "no LB passed the functional check"

{
    for k in "${!VERSIONS[@]}"; do printf 'version\t%s\t%s\n' "$k" "${VERSIONS[$k]}"; done
    for k in "${!TLSINFO[@]}"; do printf 'tls\t%s\t%s\n' "$k" "${TLSINFO[$k]}"; done
} >"$WORK/meta.tsv"
python3 - "$OUT/meta.json" "$WORK/meta.tsv" "$STAMP" "$LBS" "$SCENARIOS" <<EOF
import json, sys
meta = {"started": sys.argv[3], "lbs": sys.argv[4].split(), "scenarios": sys.argv[5].split(),
        "versions": {}, "tls": {}, "listen": "$TLS_LISTEN",
        "params": {"rounds": $ROUNDS, "duration": $DURATION, "warmup": $WARMUP, "conns": $CONNS,
                   "h2_conns": $H2_CONNS, "h2_streams": $H2_STREAMS, "lb_cpu": $LB_CPU, "gen_cpu": $GEN_CPU},
        "machine": {"nproc": $(nproc), "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"}}
for line in open(sys.argv[2]):
    kind, k, v = line.rstrip("\n").split("\t")
    meta["versions" if kind == "version" else "tls"][k] = v
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
log "LBs: $LBS | scenarios: $SCENARIOS | rounds $ROUNDS x ${DURATION}s | results -> $OUT"

# ---------- load ----------
gen_cmd() { # SCENARIO DURATION -> GEN array
    case $1 in
    tls-small) GEN=(wrk -t1 -c"$CONNS" -d"$2s" --latency "https://$TLS_LISTEN/") ;;
    tls-4k) GEN=(wrk -t1 -c"$CONNS" -d"$2s" --latency "https://$TLS_LISTEN/4k") ;;
    tls-h2) GEN=(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$2" "https://$TLS_LISTEN/") ;;
    esac
}
run_gen() { # OUTFILE CMD...: the generator pinned to GEN_CPU, a recorded child
    local outf=$1; shift
    taskset -c "$GEN_CPU" "$@" >"$outf" 2>&1 &
    GEN_PID=$!
    record_pid "$GEN_PID" gen
    wait "$GEN_PID"
    GEN_PID=""
}

RUNS=$OUT/runs.jsonl
: >"$RUNS"
for sc in $SCENARIOS; do
    tool=wrk; [[ $sc == tls-h2 ]] && tool=h2load
    for ((r = 1; r <= ROUNDS; r++)); do
        for lb in $LBS; do
            if [[ $sc == tls-h2 && -z ${H2OK[$lb]:-} ]]; then
                ((r == 1)) && log "tls-h2: skip $lb (no h2 by ALPN)"
                continue
            fi
            start_lb "$lb" || { log "run $sc/$r/$lb: LB failed to start"; continue; }
            if ((WARMUP > 0)); then
                gen_cmd "$sc" "$WARMUP"
                run_gen "$LB_DIR/warmup.txt" "${GEN[@]}"
            fi
            gen_cmd "$sc" "$DURATION"
            be0=$(backend_counters)
            python3 "$BENCH_LIB/procstat.py" snap "$LB_PID" >"$LB_DIR/before.json"
            run_gen "$LB_DIR/gen.txt" "${GEN[@]}"
            python3 "$BENCH_LIB/procstat.py" snap "$LB_PID" >"$LB_DIR/after.json"
            be1=$(backend_counters)
            rec=$(python3 "$BENCH_LIB/record.py" "$lb" "$sc" "$r" "$tool" "$LB_DIR/gen.txt" \
                "$LB_DIR/before.json" "$LB_DIR/after.json" "$be0" "$be1") || {
                log "could not parse $LB_DIR/gen.txt:"; cat "$LB_DIR/gen.txt" >&2; }
            [[ -n $rec ]] && echo "$rec" >>"$RUNS"
            cp "$LB_DIR/gen.txt" "$OUT/raw-$sc-$r-$lb.txt"
            log "$sc round $r $lb: $(python3 "$BENCH_LIB/oneline.py" "$rec")"
            stop_lb
        done
    done
done

stop_tree "$BACKEND_PID"; BACKEND_PID=""
python3 "$SCRIPT_DIR/report.py" "$OUT"
log "results: $OUT/results.md and $OUT/results.json"
