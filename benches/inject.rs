//! The rewrite phase on its own: a member's page wrapped by `inject::rewrite`
//! and polled to its end, as the proxy does for every page with the widget.
//! Run with `cargo bench --bench inject`. The pages are the bench script's
//! (a short head, then paragraphs), held in memory so only our work is timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Method, Response, StatusCode};
use http_body::Body;
use membergate::config::{Chat, ChatProvider, ChatShow, WidgetLoader};
use membergate::inject::{self, Coding};
use membergate::proxy::body::GatewayBody;

fn page(size: usize) -> Bytes {
    let head = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                <title>Benchmark page</title><link rel=\"stylesheet\" href=\"/s.css\"></head>\n<body>\n";
    let para = "<p>The keepers wrote in the logbook every four hours: wind, sea state, \
                visibility, ships sighted, and the oil burnt by the lamp.</p>\n";
    let tail = "</body></html>\n";
    let mut html = String::with_capacity(size + para.len());
    html.push_str(head);
    while html.len() + tail.len() < size {
        html.push_str(para);
    }
    html.push_str(tail);
    Bytes::from(html)
}

/// The page as the proxy has it from the origin: on loopback a 20 KB page
/// arrives in one read, so one frame. `content_type` with or without a
/// charset: without one, the page's `<meta>` is looked at too.
fn response(page: &Bytes, content_type: &'static str) -> Response<GatewayBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-length", page.len())
        .body(GatewayBody::full(page.clone()))
        .unwrap()
}

fn injection(c: &mut Criterion) {
    let chat = Chat {
        provider: ChatProvider::Builtin {
            widget_url: "/chat.js".into(),
        },
        default: ChatShow::Everyone,
        rules: vec![],
        load_immediately: None,
        inline_embed_selector: None,
        loader: WidgetLoader::Membergate,
    };
    let token =
        "v1.eyJlIjoiYmVuY2hAZXhhbXBsZS5jb20iLCJmIjoiQmVuY2gifQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWc";
    let mut group = c.benchmark_group("inject");
    let cases = [
        ("20k", 20 * 1024, "text/html; charset=utf-8"),
        ("1mb", 1024 * 1024, "text/html; charset=utf-8"),
        ("20k, no header charset", 20 * 1024, "text/html"),
    ];
    for (name, size, content_type) in cases {
        let page = page(size);
        group.throughput(Throughput::Bytes(page.len() as u64));
        group.bench_with_input(BenchmarkId::new("member page", name), &page, |b, page| {
            b.iter(|| {
                let snippet =
                    inject::snippet(&chat, Some(("bench@example.com", token)), None, None);
                let upstream = response(page, content_type);
                let rewritable =
                    inject::rewritable(&Method::GET, StatusCode::OK, upstream.headers()).unwrap();
                let rewritten = inject::rewrite(
                    upstream,
                    rewritable,
                    snippet,
                    true,
                    Coding::Identity,
                    usize::MAX,
                );
                drain(rewritten.into_body())
            })
        });
    }
    group.finish();
}

fn drain(body: GatewayBody) -> usize {
    let mut body = std::pin::pin!(body);
    let mut context = Context::from_waker(Waker::noop());
    let mut total = 0;
    loop {
        match Pin::new(&mut body).poll_frame(&mut context) {
            Poll::Ready(Some(Ok(frame))) => total += frame.data_ref().map_or(0, Bytes::len),
            Poll::Ready(None) => return total,
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Pending => panic!("an in-memory page must not wait"),
        }
    }
}

criterion_group!(benches, injection);
criterion_main!(benches);
