# shellcheck shell=bash
# Fulcrum built with profile-guided optimisation (scripts/pgo-build.sh), on the same config as
# the fulcrum driver: one worker thread, no access log, upstream keep-alive pool.
# Run bench.sh from the project root after scripts/pgo-build.sh, or set:
#   FULCRUM_PGO_BIN     the binary (default ./target/pgo/fulcrum)
#   FULCRUM_PGO_CONFIG  a config template (default fulcrum.toml beside the harness's bench.sh);
#                   @LISTEN@ @H2C_LISTEN@ @UPSTREAM1@ @UPSTREAM2@ @UPSTREAM3@ @TMPDIR@ are replaced
#   FULCRUM_PGO_H2C     0 to skip the h2 scenario (default 1: the plain listeners speak h2c prior knowledge)
#   FULCRUM_PGO_ENV     extra environment, e.g. "RUST_LOG=warn"
FULCRUM_PGO_BIN=${FULCRUM_PGO_BIN:-$PWD/target/pgo/fulcrum}
FULCRUM_PGO_CONFIG=${FULCRUM_PGO_CONFIG:-$BENCH_DIR/fulcrum.toml}
LB_DESC="fulcrum_pgo: $FULCRUM_PGO_BIN, 1 worker, profile-guided build"
[[ ${FULCRUM_PGO_H2C:-1} == 1 ]] && LB_H2C_ADDR=$LB_H2C_LISTEN
lb_version() { "$FULCRUM_PGO_BIN" --version 2>/dev/null | head -1 || echo "?"; }
lb_start() {
    local d=$1
    [[ -x $FULCRUM_PGO_BIN ]] || { log "no fulcrum binary at $FULCRUM_PGO_BIN (scripts/pgo-build.sh, or set FULCRUM_PGO_BIN)"; return 1; }
    sed -e "s|@LISTEN@|$LB_LISTEN|g" -e "s|@H2C_LISTEN@|$LB_H2C_LISTEN|g" \
        -e "s|@UPSTREAM1@|127.0.0.1:9001|g" -e "s|@UPSTREAM2@|127.0.0.1:9002|g" \
        -e "s|@UPSTREAM3@|127.0.0.1:9003|g" -e "s|@TMPDIR@|$d|g" "$FULCRUM_PGO_CONFIG" >"$d/fulcrum.toml"
    # shellcheck disable=SC2086
    lb_spawn env ${FULCRUM_PGO_ENV:-} "$FULCRUM_PGO_BIN" run -c "$d/fulcrum.toml"
}
