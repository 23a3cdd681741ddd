# shellcheck shell=bash
# fulcrum_ratelimit with the limit's store in Redis (one EVALSHA round trip per request).
# Start the Redis yourself first: redis-server --port 6379 --save '' --appendonly no
# FULCRUM_RATELIMIT_REDIS overrides its URL (default redis://127.0.0.1:6379).
# shellcheck source=bench/drivers/fulcrum_ratelimit.sh
source "$(dirname "${BASH_SOURCE[0]}")/fulcrum_ratelimit.sh"
# shellcheck disable=SC2034 # read by bench.sh
LB_DESC="fulcrum_ratelimit_redis: $FULCRUM_RATELIMIT_BIN, 1 worker, store=redis"
# The store is set only while this driver starts its LB, so that the
# local-store driver loaded in the same run stays local.
eval "$(declare -f lb_start | sed '1s/^lb_start/ratelimit_lb_start/')"
lb_start() {
    # shellcheck disable=SC2034 # read by ratelimit_lb_start
    local FULCRUM_RATELIMIT_STORE=redis
    ratelimit_lb_start "$@"
}
