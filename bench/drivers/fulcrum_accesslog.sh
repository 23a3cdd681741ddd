# shellcheck shell=bash
# Fulcrum with a JSON access log to a file (same work otherwise): one worker thread, upstream keep-alive pool.
# The log goes to access.log in the run's temp dir (KEEP_WORK=1 keeps it); compare with the fulcrum driver.
# Run bench.sh from the project root after `cargo build --release`, or set:
#   FULCRUM_ACCESSLOG_BIN     the binary (default ./target/release/fulcrum)
#   FULCRUM_ACCESSLOG_CONFIG  a config template (default bench/configs/accesslog.toml);
#                   @LISTEN@ @H2C_LISTEN@ @UPSTREAM1@ @UPSTREAM2@ @UPSTREAM3@ @TMPDIR@ are replaced
#   FULCRUM_ACCESSLOG_H2C     0 to skip the h2 scenario (default 1: the plain listeners speak h2c prior knowledge)
#   FULCRUM_ACCESSLOG_ENV     extra environment, e.g. "RUST_LOG=warn"
FULCRUM_ACCESSLOG_BIN=${FULCRUM_ACCESSLOG_BIN:-$PWD/target/release/fulcrum}
FULCRUM_ACCESSLOG_CONFIG=${FULCRUM_ACCESSLOG_CONFIG:-$PWD/bench/configs/accesslog.toml}
LB_DESC="fulcrum_accesslog: $FULCRUM_ACCESSLOG_BIN, 1 worker, JSON access log to a file"
[[ ${FULCRUM_ACCESSLOG_H2C:-1} == 1 ]] && LB_H2C_ADDR=$LB_H2C_LISTEN
lb_version() { "$FULCRUM_ACCESSLOG_BIN" --version 2>/dev/null | head -1 || echo "?"; }
lb_start() {
    local d=$1
    [[ -x $FULCRUM_ACCESSLOG_BIN ]] || { log "no fulcrum binary at $FULCRUM_ACCESSLOG_BIN (cargo build --release, or set FULCRUM_ACCESSLOG_BIN)"; return 1; }
    sed -e "s|@LISTEN@|$LB_LISTEN|g" -e "s|@H2C_LISTEN@|$LB_H2C_LISTEN|g" \
        -e "s|@UPSTREAM1@|127.0.0.1:9001|g" -e "s|@UPSTREAM2@|127.0.0.1:9002|g" \
        -e "s|@UPSTREAM3@|127.0.0.1:9003|g" -e "s|@TMPDIR@|$d|g" "$FULCRUM_ACCESSLOG_CONFIG" >"$d/fulcrum.toml"
    # shellcheck disable=SC2086
    lb_spawn env ${FULCRUM_ACCESSLOG_ENV:-} "$FULCRUM_ACCESSLOG_BIN" run -c "$d/fulcrum.toml"
}
