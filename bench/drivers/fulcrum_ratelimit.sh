# shellcheck shell=bash
# Fulcrum with a rate limit on the route that never rejects (1000000/s, burst 1000000), otherwise the
# same work as the round-robin run: one worker thread, no access log, upstream keep-alive pool.
# Run bench.sh from the project root after `cargo build --release`, or set:
#   FULCRUM_RATELIMIT_BIN     the binary (default ./target/release/fulcrum)
#   FULCRUM_RATELIMIT_CONFIG  a config template (default bench/configs/ratelimit.toml);
#                   @LISTEN@ @H2C_LISTEN@ @UPSTREAM1@ @UPSTREAM2@ @UPSTREAM3@ @TMPDIR@ @STORE@ @REDIS_URL@ are replaced
#   FULCRUM_RATELIMIT_STORE   local (default) or redis: the limit's store
#   FULCRUM_RATELIMIT_REDIS   the Redis for store=redis (default redis://127.0.0.1:6379; start it yourself,
#                   e.g. `redis-server --port 6379 --save '' --appendonly no`)
#   FULCRUM_RATELIMIT_H2C     0 to skip the h2 scenario (default 1: the plain listeners speak h2c prior knowledge)
#   FULCRUM_RATELIMIT_ENV     extra environment, e.g. "RUST_LOG=warn"
FULCRUM_RATELIMIT_BIN=${FULCRUM_RATELIMIT_BIN:-$PWD/target/release/fulcrum}
FULCRUM_RATELIMIT_CONFIG=${FULCRUM_RATELIMIT_CONFIG:-$PWD/bench/configs/ratelimit.toml}
FULCRUM_RATELIMIT_STORE=${FULCRUM_RATELIMIT_STORE:-local}
FULCRUM_RATELIMIT_REDIS=${FULCRUM_RATELIMIT_REDIS:-redis://127.0.0.1:6379}
LB_DESC="fulcrum_ratelimit: $FULCRUM_RATELIMIT_BIN, 1 worker, store=$FULCRUM_RATELIMIT_STORE"
[[ ${FULCRUM_RATELIMIT_H2C:-1} == 1 ]] && LB_H2C_ADDR=$LB_H2C_LISTEN
lb_version() { "$FULCRUM_RATELIMIT_BIN" --version 2>/dev/null | head -1 || echo "?"; }
lb_start() {
    local d=$1
    [[ -x $FULCRUM_RATELIMIT_BIN ]] || { log "no fulcrum binary at $FULCRUM_RATELIMIT_BIN (cargo build --release, or set FULCRUM_RATELIMIT_BIN)"; return 1; }
    case $FULCRUM_RATELIMIT_STORE in
        local|redis) ;;
        *) log "FULCRUM_RATELIMIT_STORE must be local or redis, not $FULCRUM_RATELIMIT_STORE"; return 1 ;;
    esac
    sed -e "s|@LISTEN@|$LB_LISTEN|g" -e "s|@H2C_LISTEN@|$LB_H2C_LISTEN|g" \
        -e "s|@UPSTREAM1@|127.0.0.1:9001|g" -e "s|@UPSTREAM2@|127.0.0.1:9002|g" \
        -e "s|@UPSTREAM3@|127.0.0.1:9003|g" -e "s|@TMPDIR@|$d|g" \
        -e "s|@STORE@|$FULCRUM_RATELIMIT_STORE|g" -e "s|@REDIS_URL@|$FULCRUM_RATELIMIT_REDIS|g" \
        "$FULCRUM_RATELIMIT_CONFIG" >"$d/fulcrum.toml"
    # shellcheck disable=SC2086
    lb_spawn env ${FULCRUM_RATELIMIT_ENV:-} "$FULCRUM_RATELIMIT_BIN" run -c "$d/fulcrum.toml"
}
