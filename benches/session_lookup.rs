//! The hot path of an authenticated request before proxying: parse the
//! session cookie, check its HMAC tag, hash the id and find the session in the
//! in-memory cache. Run with `cargo bench --bench session_lookup`.
//! The target is well under a microsecond for a cache hit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use membergate::config::Config;
use membergate::members::sqlite::SqliteStore;
use membergate::members::{MemberStore, NewMember, Status, now};
use membergate::session::{Lookup, Sessions};

fn lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nhttps_listen = \"\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_mode = \"serve\"\n\
         [members]\ndatabase = \"{}\"\ncookie_secure = false\n\
         [[sites]]\nname = \"b\"\nhosts = [\"*\"]\n[[sites.routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
        dir.path().join("m.db").display()
    );
    let config = Config::parse(&toml).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sessions, cookie) = runtime.block_on(async {
        let store: Arc<dyn MemberStore> =
            Arc::new(SqliteStore::open(&config.members.database).await.unwrap());
        let new = NewMember {
            email: "bench@example.com".into(),
            first_name: "Bench".into(),
            last_name: "Mark".into(),
            password_hash: None,
            status: Status::Active,
        };
        let member = store.create_member(new, now()).await.unwrap();
        let sessions = Sessions::new(store, &[9u8; 32], &config.members);
        let created = sessions.create(&member).await.unwrap();
        (sessions, created.cookie_value)
    });
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        format!("theme=dark; membergate={cookie}; lang=en")
            .parse()
            .unwrap(),
    );
    headers.insert("accept", "text/html".parse().unwrap());
    // A cached or refused lookup completes without awaiting: poll it once,
    // so the figures hold the lookup and not an executor's overhead.
    let _guard = runtime.enter();
    let lookup_now = |headers: &http::HeaderMap| {
        let future = std::pin::pin!(sessions.lookup(std::hint::black_box(headers)));
        let mut context = Context::from_waker(Waker::noop());
        match future.poll(&mut context) {
            Poll::Ready(found) => found,
            Poll::Pending => panic!("a cached lookup must not wait"),
        }
    };
    c.bench_function("session lookup, cache hit", |b| {
        b.iter(|| assert!(matches!(lookup_now(&headers), Lookup::Member(_))))
    });
    let anonymous = http::HeaderMap::new();
    c.bench_function("session lookup, no cookie", |b| {
        b.iter(|| lookup_now(&anonymous))
    });
    let mut forged = http::HeaderMap::new();
    forged.insert(
        "cookie",
        format!("membergate={}", "A".repeat(64)).parse().unwrap(),
    );
    c.bench_function("session lookup, forged cookie", |b| {
        b.iter(|| lookup_now(&forged))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
