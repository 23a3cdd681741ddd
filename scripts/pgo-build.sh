#!/usr/bin/env bash
# Profile-guided release build of Fulcrum.
#
#   scripts/pgo-build.sh [--seconds N]        (N seconds per training load, default 5)
#
# 1. builds an instrumented binary (target/pgo/gen),
# 2. runs it as a balancer in front of three built-in backends and drives it with wrk and
#    h2load over the paths that matter for speed: HTTP/1.1 keep-alive (small and 4 KiB
#    answers), a new connection per request, HTTP/2 cleartext, TLS with HTTP/1.1 and HTTP/2,
#    gzip and brotli compression, and the JSON access log,
# 3. merges the profile (target/pgo/fulcrum.profdata) and builds target/pgo/fulcrum with it,
# 4. checks that binary answers over HTTP/1.1, h2c and TLS with HTTP/2.
#
# target/release/fulcrum is left alone. Code that the training never runs is laid out as
# cold, so a load unlike these (say, heavy WebSocket traffic) may be slower on this binary
# than on the plain release build: measure your own load on both.
#
# Needs wrk, h2load (Debian: wrk, nghttp2-client) and llvm-profdata of the LLVM that rustc
# is built on: `rustup component add llvm-tools`, or Debian's llvm-22 for rustc's LLVM 22.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=5
while (($#)); do
    case $1 in
    --seconds) SECS=$2; shift ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "pgo-build: $*" >&2; exit 1; }
for tool in wrk h2load curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install wrk nghttp2-client curl)"
done
# llvm-profdata must read what rustc's own LLVM writes: rustup's llvm-tools component if it
# is there, else a packaged one of the same major version.
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[[ -x $PROFDATA ]] || PROFDATA=$(command -v "llvm-profdata-$LLVM_MAJOR" || true)
if [[ -z $PROFDATA ]] && command -v llvm-profdata >/dev/null &&
    llvm-profdata --version | grep -q "version $LLVM_MAJOR\."; then
    PROFDATA=$(command -v llvm-profdata)
fi
[[ -n $PROFDATA ]] || die "no llvm-profdata for LLVM $LLVM_MAJOR, rustc's: rustup component add llvm-tools (or on Debian: apt-get install llvm-$LLVM_MAJOR)"
echo "== llvm-profdata: $PROFDATA"

WORK=$ROOT/target/pgo
RAW=$WORK/raw
rm -rf "$RAW" "$WORK/run"
mkdir -p "$RAW" "$WORK/run"

echo "== instrumented build (target/pgo/gen)"
RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" \
    --target-dir "$WORK/gen"
GEN=$WORK/gen/release/fulcrum

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits until URL answers, for at most 10 s.
wait_up() {
    local url=$1 i
    for ((i = 0; i < 100; i++)); do
        curl -sk -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    die "$url did not answer within 10 s (logs in $WORK/run)"
}

# Backends come from the instrumented binary too; their profiles go elsewhere and are
# not merged, so only the balancer's work shapes the build.
BACKENDS=""
for i in 1 2 3; do
    port=$((39100 + i))
    LLVM_PROFILE_FILE=$WORK/run/backend-%p.profraw \
        "$GEN" backend --listen "127.0.0.1:$port" --name "b$i" >"$WORK/run/backend$i.log" 2>&1 &
    PIDS+=($!)
    BACKENDS+="{ address = \"127.0.0.1:$port\" }, "
    wait_up "http://127.0.0.1:$port/"
done

# Starts balancer binary $1 on config $2, runs the command in $3.., then stops it with
# SIGTERM (an instrumented binary writes its profile on the way out). Its log is lb.log.
balance() {
    local bin=$1 config=$2 pid
    shift 2
    "$bin" run -c "$config" >"$WORK/run/lb.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:39080/"
    "$@"
    kill -TERM "$pid"
    wait "$pid" || die "the balancer exited with an error (log: $WORK/run/lb.log)"
}

cat >"$WORK/run/lb.toml" <<EOF
[global]
workers = 1
access_log = "off"

[[listeners]]
name = "web"
listen = "127.0.0.1:39080"

[[listeners]]
name = "tls"
listen = "127.0.0.1:39443"
[listeners.tls]
certificates = [ { cert = "$ROOT/examples/certs/demo.pem", key = "$ROOT/examples/certs/demo.key" } ]

[[routes]]
path_prefix = "/z/"
rewrite_prefix = "/"
compress = ["gzip", "br"]
upstream = "app"

[[routes]]
upstream = "app"

[upstreams.app]
balance = "round_robin"
keepalive = 128
keepalive_timeout = "300s"
servers = [ $BACKENDS]
EOF
sed -e "s|^access_log = \"off\"|access_log = \"$WORK/run/access.log\"|" "$WORK/run/lb.toml" >"$WORK/run/lb-log.toml"

loads() {
    local d=${SECS}s
    echo "== HTTP/1.1 keep-alive, small and 4 KiB"
    wrk -t1 -c64 -d"$d" http://127.0.0.1:39080/ | grep 'Requests/sec'
    wrk -t1 -c64 -d"$d" http://127.0.0.1:39080/bytes/4096 | grep 'Requests/sec'
    echo "== HTTP/1.1, a new connection per request"
    wrk -t1 -c64 -d"$d" -H 'Connection: close' http://127.0.0.1:39080/ | grep 'Requests/sec'
    echo "== HTTP/2 cleartext"
    h2load -t1 -c8 -m8 -D "$SECS" http://127.0.0.1:39080/ | grep 'finished in'
    echo "== compressed answers, gzip and brotli"
    curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' http://127.0.0.1:39080/z/bytes/4096 |
        grep -qi '^content-encoding: gzip' || die "the compressing route answered without gzip"
    wrk -t1 -c16 -d"$d" -H 'Accept-Encoding: gzip' http://127.0.0.1:39080/z/bytes/4096 | grep 'Requests/sec'
    wrk -t1 -c16 -d"$d" -H 'Accept-Encoding: br' http://127.0.0.1:39080/z/bytes/4096 | grep 'Requests/sec'
    echo "== TLS: HTTP/1.1 keep-alive, HTTP/2"
    wrk -t1 -c64 -d"$d" https://127.0.0.1:39443/ | grep 'Requests/sec'
    h2load -t1 -c8 -m8 -D "$SECS" https://127.0.0.1:39443/ | grep 'finished in'
}
access_log_load() {
    echo "== HTTP/1.1 keep-alive with the JSON access log"
    wrk -t1 -c64 -d"$((SECS / 2 + 1))s" http://127.0.0.1:39080/ | grep 'Requests/sec'
}

balance "$GEN" "$WORK/run/lb.toml" loads
balance "$GEN" "$WORK/run/lb-log.toml" access_log_load

echo "== merge"
shopt -s nullglob
profiles=("$RAW"/*.profraw)
((${#profiles[@]})) || die "the training wrote no profile into $RAW"
"$PROFDATA" merge -o "$WORK/fulcrum.profdata" "${profiles[@]}"

echo "== optimised build with the profile (target/pgo/use)"
RUSTFLAGS="-Cprofile-use=$WORK/fulcrum.profdata" cargo build --release --locked \
    --manifest-path "$ROOT/Cargo.toml" --target-dir "$WORK/use"
cp "$WORK/use/release/fulcrum" "$WORK/fulcrum"

check() { # EXPECTED CURL-ARGS...: "status version" of one request
    local want=$1 got
    shift
    got=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' "$@")
    [[ $got == "$want" ]] || die "curl $*: got '$got', want '$want' (log: $WORK/run/lb.log)"
}
answers() {
    check "200 1.1" http://127.0.0.1:39080/
    check "200 2" --http2-prior-knowledge http://127.0.0.1:39080/
    check "200 2" -k --http2 https://127.0.0.1:39443/
}
echo "== the optimised binary answers over HTTP/1.1, h2c and TLS with HTTP/2"
balance "$WORK/fulcrum" "$WORK/run/lb.toml" answers
echo "built $WORK/fulcrum"
