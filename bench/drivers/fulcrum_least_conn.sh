# shellcheck shell=bash
# Fulcrum with balance = "least_conn" (same work otherwise): one worker thread, no access log, upstream keep-alive pool.
# Run bench.sh from the project root after `cargo build --release`, or set:
#   FULCRUM_LEAST_CONN_BIN     the binary (default ./target/release/fulcrum)
#   FULCRUM_LEAST_CONN_CONFIG  a config template (default bench/configs/least_conn.toml);
#                   @LISTEN@ @H2C_LISTEN@ @UPSTREAM1@ @UPSTREAM2@ @UPSTREAM3@ @TMPDIR@ are replaced
#   FULCRUM_LEAST_CONN_H2C     0 to skip the h2 scenario (default 1: the plain listeners speak h2c prior knowledge)
#   FULCRUM_LEAST_CONN_ENV     extra environment, e.g. "RUST_LOG=warn"
FULCRUM_LEAST_CONN_BIN=${FULCRUM_LEAST_CONN_BIN:-$PWD/target/release/fulcrum}
FULCRUM_LEAST_CONN_CONFIG=${FULCRUM_LEAST_CONN_CONFIG:-$PWD/bench/configs/least_conn.toml}
LB_DESC="fulcrum_least_conn: $FULCRUM_LEAST_CONN_BIN, 1 worker"
[[ ${FULCRUM_LEAST_CONN_H2C:-1} == 1 ]] && LB_H2C_ADDR=$LB_H2C_LISTEN
lb_version() { "$FULCRUM_LEAST_CONN_BIN" --version 2>/dev/null | head -1 || echo "?"; }
lb_start() {
    local d=$1
    [[ -x $FULCRUM_LEAST_CONN_BIN ]] || { log "no fulcrum binary at $FULCRUM_LEAST_CONN_BIN (cargo build --release, or set FULCRUM_LEAST_CONN_BIN)"; return 1; }
    sed -e "s|@LISTEN@|$LB_LISTEN|g" -e "s|@H2C_LISTEN@|$LB_H2C_LISTEN|g" \
        -e "s|@UPSTREAM1@|127.0.0.1:9001|g" -e "s|@UPSTREAM2@|127.0.0.1:9002|g" \
        -e "s|@UPSTREAM3@|127.0.0.1:9003|g" -e "s|@TMPDIR@|$d|g" "$FULCRUM_LEAST_CONN_CONFIG" >"$d/fulcrum.toml"
    # shellcheck disable=SC2086
    lb_spawn env ${FULCRUM_LEAST_CONN_ENV:-} "$FULCRUM_LEAST_CONN_BIN" run -c "$d/fulcrum.toml"
}
