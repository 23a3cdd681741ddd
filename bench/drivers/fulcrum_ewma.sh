# shellcheck shell=bash
# Fulcrum with balance = "ewma" (same work otherwise): one worker thread, no access log, upstream keep-alive pool.
# Run bench.sh from the project root after `cargo build --release`, or set:
#   FULCRUM_EWMA_BIN     the binary (default ./target/release/fulcrum)
#   FULCRUM_EWMA_CONFIG  a config template (default bench/configs/ewma.toml);
#                   @LISTEN@ @H2C_LISTEN@ @UPSTREAM1@ @UPSTREAM2@ @UPSTREAM3@ @TMPDIR@ are replaced
#   FULCRUM_EWMA_H2C     0 to skip the h2 scenario (default 1: the plain listeners speak h2c prior knowledge)
#   FULCRUM_EWMA_ENV     extra environment, e.g. "RUST_LOG=warn"
FULCRUM_EWMA_BIN=${FULCRUM_EWMA_BIN:-$PWD/target/release/fulcrum}
FULCRUM_EWMA_CONFIG=${FULCRUM_EWMA_CONFIG:-$PWD/bench/configs/ewma.toml}
LB_DESC="fulcrum_ewma: $FULCRUM_EWMA_BIN, 1 worker"
[[ ${FULCRUM_EWMA_H2C:-1} == 1 ]] && LB_H2C_ADDR=$LB_H2C_LISTEN
lb_version() { "$FULCRUM_EWMA_BIN" --version 2>/dev/null | head -1 || echo "?"; }
lb_start() {
    local d=$1
    [[ -x $FULCRUM_EWMA_BIN ]] || { log "no fulcrum binary at $FULCRUM_EWMA_BIN (cargo build --release, or set FULCRUM_EWMA_BIN)"; return 1; }
    sed -e "s|@LISTEN@|$LB_LISTEN|g" -e "s|@H2C_LISTEN@|$LB_H2C_LISTEN|g" \
        -e "s|@UPSTREAM1@|127.0.0.1:9001|g" -e "s|@UPSTREAM2@|127.0.0.1:9002|g" \
        -e "s|@UPSTREAM3@|127.0.0.1:9003|g" -e "s|@TMPDIR@|$d|g" "$FULCRUM_EWMA_CONFIG" >"$d/fulcrum.toml"
    # shellcheck disable=SC2086
    lb_spawn env ${FULCRUM_EWMA_ENV:-} "$FULCRUM_EWMA_BIN" run -c "$d/fulcrum.toml"
}
