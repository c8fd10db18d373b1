//! What auth and limits cost a request: finding the caller's key, counting the prompt's
//! tokens, and reserving then settling a realistic plan (the key's and its team's requests,
//! tokens, in-flight and budget checks, and both tallies) in the memory store and in Redis.
//!
//! `cargo bench --bench limits`. The Redis group starts its own `redis-server` on a free
//! port (skipped, with a note, when none is installed).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use std::hint::black_box;
use switchyard::auth::{self, KeyTable, hash_key, hex};
use switchyard::bench::Call;
use switchyard::bench::Metrics;
use switchyard::bench::Tokenizer;
use switchyard::bench::parse;
use switchyard::bench::{Check, Limiter, Period, Plan, Used};
use switchyard::config::schema::{
    AuthConfig, KeyConfig, LimitsBackend, LimitsSettings, RedisSettings,
};

const REQUEST: &[u8] = include_bytes!("chat-request.json");
const KEY: &str = "sk-sy-bench-0123456789abcdef0123456789";

/// 1,000 keys, the caller's among them.
fn key_table() -> KeyTable {
    let mut config = AuthConfig::default();
    for i in 0..1000 {
        let secret = if i == 500 {
            KEY.to_owned()
        } else {
            format!("sk-sy-other-{i}")
        };
        let key: KeyConfig =
            serde_json::from_value(serde_json::json!({"sha256": hex(&hash_key(&secret))}))
                .unwrap_or_else(|e| panic!("{e}"));
        config.keys.insert(format!("key-{i}"), key);
    }
    KeyTable::build(&config)
}

/// The checks of a key with every limit and a budget, in a team with limits (all far from
/// refusing), and the two tallies its usage is booked on.
fn plan() -> Plan {
    let mut checks = Vec::new();
    for scope in ["key 'bench'", "team 'bench'"] {
        let scope: Arc<str> = Arc::from(scope);
        checks.push(Check::Requests {
            scope: scope.clone(),
            per_minute: 1_000_000_000,
        });
        checks.push(Check::Tokens {
            scope: scope.clone(),
            per_minute: u64::MAX / 4,
            amount: 1200,
        });
        checks.push(Check::Concurrency {
            scope: scope.clone(),
            max: 1_000_000,
        });
        checks.push(Check::Budget {
            scope,
            period: Period::Day,
            limit_usd: 1e12,
            amount_usd: 0.002,
        });
    }
    Plan {
        checks,
        accounts: vec![Arc::from("key 'bench'"), Arc::from("team 'bench'")],
    }
}

const USED: Used = Used {
    tokens: 300,
    cost_usd: 0.0004,
};

fn auth_and_tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    let table = key_table();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {KEY}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    group.bench_function("authenticate", |b| {
        b.iter(|| auth::authenticate(black_box(&headers), &[Some(&table), None]))
    });
    group.finish();

    let Ok(Call::Chat(request)) = parse::chat(REQUEST) else {
        panic!("the bench payload parses")
    };
    let mut group = c.benchmark_group("limits");
    let tokenizer = Tokenizer::for_model("gpt-4o-mini");
    group.bench_function("count_prompt_tokens", |b| {
        b.iter(|| tokenizer.chat_prompt(black_box(&request)))
    });
    group.finish();
}

fn reserve_and_settle(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("limits");
    let memory = Limiter::new(&LimitsSettings::default(), Arc::new(Metrics::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = plan();
    group.bench_function("memory_reserve_settle", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let admission = memory.reserve(black_box(&plan)).await;
                if let Ok(admission) = admission {
                    memory.settle(admission, USED);
                }
            })
        })
    });
    let Some(redis) = RedisServer::start() else {
        eprintln!("redis-server not found: the Redis benchmark is skipped");
        return;
    };
    let settings = LimitsSettings {
        backend: LimitsBackend::Redis,
        redis: Some(RedisSettings {
            url: format!("redis://127.0.0.1:{}", redis.port),
            timeout: Duration::from_secs(1),
            on_failure: Default::default(),
            key_prefix: "bench:".into(),
        }),
        ..LimitsSettings::default()
    };
    let shared = runtime
        .block_on(async { Limiter::new(&settings, Arc::new(Metrics::new())) })
        .unwrap_or_else(|e| panic!("{e}"));
    // The reservation is the round trip on the request's path; the settlement runs in the
    // background (and is included here as load on the same connection).
    group.bench_function("redis_reserve_settle", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let admission = shared.reserve(black_box(&plan)).await;
                match admission {
                    Ok(admission) => shared.settle(admission, USED),
                    Err(rejection) => panic!("the bench plan never refuses: {rejection:?}"),
                }
            })
        })
    });
    group.finish();
}

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    #[allow(
        clippy::disallowed_methods,
        reason = "no runtime here: waiting for the server to start"
    )]
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { child, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group!(benches, auth_and_tokens, reserve_and_settle);
criterion_main!(benches);
