//! `[rate_limits.*]` and `[redis]`: what they become, and their mistakes.

use std::time::Duration;

use http::HeaderName;

use super::*;

fn with_limits(route_keys: &str, sections: &str) -> String {
    format!("{}{sections}", in_route(route_keys))
}

#[test]
fn limits_map_to_the_model_with_defaults() {
    let config = parse_ok(&with_limits(
        "rate_limit = \"api\"",
        r#"
[rate_limits.api]
rate = "600/m"
burst = 20
key = "header:X-Api-Key"
store = "redis"
max_keys = 500

[rate_limits.plain]
rate = "5/s"

[rate_limits.session]
rate = "1/s"
key = "cookie:sid"

[redis]
url = "redis://:pw@127.0.0.1:6379/2"
on_error = "deny"
timeout = "50ms"
"#,
    ));
    assert_eq!(config.routes[0].rate_limit, Some(RateLimitId(0)));
    let api = &config.rate_limits[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.rate_per_sec, 10.0);
    assert_eq!(api.burst, 20);
    assert_eq!(api.key, LimitKey::Header(HeaderName::from_static("x-api-key")));
    assert_eq!(api.store, LimitStore::Redis);
    assert_eq!(api.max_keys, 500);
    let plain = &config.rate_limits[1];
    assert_eq!(
        (plain.burst, plain.store, plain.max_keys),
        (1, LimitStore::Local, 100_000)
    );
    assert_eq!(plain.key, LimitKey::ClientIp);
    assert_eq!(config.rate_limits[2].key, LimitKey::Cookie("sid".to_string()));
    let redis = config.redis.expect("a [redis] section");
    assert_eq!(redis.url, "redis://:pw@127.0.0.1:6379/2");
    assert_eq!(redis.on_error, RedisOnError::Deny);
    assert_eq!(redis.timeout, Duration::from_millis(50));

    let config = parse_ok(&format!("{BASE}[redis]\nurl = \"redis://localhost\"\n"));
    let redis = config.redis.expect("a [redis] section");
    assert_eq!(
        (redis.on_error, redis.timeout),
        (RedisOnError::Allow, Duration::from_millis(100))
    );
    assert_eq!(parse_ok(BASE).routes[0].rate_limit, None);
}

#[test]
fn limit_mistakes_point_at_the_value() {
    let limit = |keys: &str| format!("{BASE}[rate_limits.api]\n{keys}\n");
    assert_error(
        &limit("rate = \"5/d\""),
        "\"5/d\"",
        "rate_limits.api.rate",
        "invalid rate",
    );
    assert_error(
        &limit("rate = \"2000000/s\""),
        "\"2000000/s\"",
        "rate_limits.api.rate",
        "between \"1/h\" and \"1000000/s\"",
    );
    assert_error(
        &limit("rate = \"0.5/h\""),
        "\"0.5/h\"",
        "rate_limits.api.rate",
        "between",
    );
    assert_error(
        &limit("rate = \"5/s\"\nburst = 0"),
        "0\n",
        "rate_limits.api.burst",
        "burst must be between 1 and 1000000",
    );
    assert_error(
        &limit("rate = \"5/s\"\nmax_keys = 0"),
        "0\n",
        "rate_limits.api.max_keys",
        "max_keys must be between",
    );
    assert_error(
        &limit("rate = \"5/s\"\nkey = \"query:x\""),
        "\"query:x\"",
        "rate_limits.api.key",
        "expected client_ip, header:NAME or cookie:NAME",
    );
    assert_error(
        &limit("rate = \"5/s\"\nstore = \"memcached\""),
        "\"memcached\"",
        "rate_limits.api.store",
        "unknown variant",
    );
    assert_error(
        &limit("burst = 3"),
        "[rate_limits.api]",
        "rate_limits.api",
        "missing field `rate`",
    );
    assert_error(
        &in_route("rate_limit = \"nope\""),
        "\"nope\"",
        "routes[0].rate_limit",
        "no rate limit named `nope`",
    );
}

#[test]
fn redis_mistakes_point_at_the_value() {
    let redis = |keys: &str| format!("{BASE}[redis]\n{keys}\n");
    assert_error(
        &redis("url = \"http://127.0.0.1:6379\""),
        "\"http:",
        "redis.url",
        "invalid url",
    );
    assert_error(
        &redis("url = \"rediss://127.0.0.1:6379\""),
        "\"rediss:",
        "redis.url",
        "invalid url",
    );
    assert_error(
        &redis("url = \"redis://127.0.0.1\"\ntimeout = \"0s\""),
        "\"0s\"",
        "redis.timeout",
        "timeout must be greater than 0",
    );
    assert_error(
        &redis("url = \"redis://127.0.0.1\"\non_error = \"retry\""),
        "\"retry\"",
        "redis.on_error",
        "unknown variant",
    );
    assert_error(&redis("on_error = \"deny\""), "[redis]", "redis", "missing field `url`");
}
