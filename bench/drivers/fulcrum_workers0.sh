# shellcheck shell=bash
# Fulcrum with workers = 0 (one worker per core), otherwise the harness's fulcrum driver.
# For the scaling run: LB_CPU=0,1 so the LB may use both cores (the generator shares core 1).
# shellcheck source=/dev/null
source "$BENCH_DIR/drivers/fulcrum.sh"
# shellcheck disable=SC2034 # read by bench.sh
LB_DESC="fulcrum_workers0: $FULCRUM_BIN, workers = 0"
# The config is swapped only while this driver starts its LB, so that the
# plain fulcrum driver loaded in the same run keeps its own.
eval "$(declare -f lb_start | sed '1s/^lb_start/fulcrum_lb_start/')"
lb_start() {
    # shellcheck disable=SC2034 # read by fulcrum_lb_start
    local FULCRUM_CONFIG=$PWD/bench/configs/workers0.toml
    fulcrum_lb_start "$@"
}
