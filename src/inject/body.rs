//! A response body rewritten on the fly by lol_html: each chunk from the
//! origin goes through the rewriter and whatever it has ready goes on to the
//! visitor, so the page streams and memory stays bounded.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use lol_html::html_content::ContentType;
use lol_html::send::{EndTagHandler, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, MemorySettings, OutputSink, element};

use crate::proxy::body::{BoxError, GatewayBody};

/// The most memory the rewriter may hold for one page (its buffers for an
/// unfinished tag); pages within it are rewritten, a pathological one fails.
const MAX_REWRITER_MEMORY: usize = 1024 * 1024;

/// Collects the rewriter's output between polls.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn take(&self) -> Bytes {
        match self.0.lock() {
            Ok(mut buffer) => Bytes::from(std::mem::take(&mut *buffer)),
            Err(poisoned) => Bytes::from(std::mem::take(&mut *poisoned.into_inner())),
        }
    }
}

impl OutputSink for Collected {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        match self.0.lock() {
            Ok(mut buffer) => buffer.extend_from_slice(chunk),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(chunk),
        }
    }
}

pub struct InjectBody<B = GatewayBody> {
    inner: Pin<Box<B>>,
    rewriter: Option<HtmlRewriter<'static, Collected>>,
    output: Collected,
    finished: bool,
}

impl<B> InjectBody<B> {
    pub fn new(
        inner: B,
        encoding: &'static encoding_rs::Encoding,
        snippet: Bytes,
    ) -> InjectBody<B> {
        let output = Collected::default();
        let snippet: Arc<str> = String::from_utf8_lossy(&snippet).into();
        // Shared by the handlers below, which run in document order.
        let injected = Arc::new(AtomicBool::new(false));
        let present = Arc::new(AtomicBool::new(false));
        let in_template = Arc::new(AtomicUsize::new(0));
        let mut settings = Settings::new_send()
            .with_strict(false)
            .with_memory_settings(
                MemorySettings::new().with_max_allowed_memory_usage(MAX_REWRITER_MEMORY),
            );
        if let Some(encoding) = AsciiCompatibleEncoding::new(encoding) {
            settings = settings.with_encoding(encoding);
        }
        // A page that already loads the widget (or was injected upstream) is left alone.
        let seen = present.clone();
        settings = settings.append_element_content_handler(element!(
            "script[data-membergate], script#hs-script-loader",
            move |_el| {
                seen.store(true, Ordering::Relaxed);
                Ok(())
            }
        ));
        // Nothing goes into a <template>: its head and body are inert.
        let depth = in_template.clone();
        settings = settings.append_element_content_handler(element!("template", move |el| {
            depth.fetch_add(1, Ordering::Relaxed);
            let depth = depth.clone();
            let leave: EndTagHandler<'static> = Box::new(move |_end| {
                depth.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            });
            el.on_end_tag(leave)
        }));
        let (head_snippet, head_injected, head_present, head_depth) = (
            snippet.clone(),
            injected.clone(),
            present.clone(),
            in_template.clone(),
        );
        settings = settings.append_element_content_handler(element!("head", move |el| {
            if head_depth.load(Ordering::Relaxed) > 0 {
                return Ok(());
            }
            let (snippet, injected, present) = (
                head_snippet.clone(),
                head_injected.clone(),
                head_present.clone(),
            );
            // An implied </head> never fires this; <body> below covers that case.
            let insert: EndTagHandler<'static> = Box::new(move |end| {
                if !present.load(Ordering::Relaxed) && !injected.swap(true, Ordering::Relaxed) {
                    end.before(&snippet, ContentType::Html);
                }
                Ok(())
            });
            let _ = el.on_end_tag(insert);
            Ok(())
        }));
        settings = settings.append_element_content_handler(element!("body", move |el| {
            if in_template.load(Ordering::Relaxed) == 0
                && !present.load(Ordering::Relaxed)
                && !injected.swap(true, Ordering::Relaxed)
            {
                el.prepend(&snippet, ContentType::Html);
            }
            Ok(())
        }));
        InjectBody {
            inner: Box::pin(inner),
            rewriter: Some(HtmlRewriter::new(settings, output.clone())),
            output,
            finished: false,
        }
    }
}

impl<B> Body for InjectBody<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers cannot follow a rewritten body; drop them.
                        continue;
                    };
                    let Some(rewriter) = this.rewriter.as_mut() else {
                        continue;
                    };
                    if let Err(e) = rewriter.write(&data) {
                        tracing::warn!(error = %e, "HTML rewriting failed; response cut short");
                        this.finished = true;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    let ready = this.output.take();
                    if !ready.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(ready))));
                    }
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    if let Some(rewriter) = this.rewriter.take()
                        && let Err(e) = rewriter.end()
                    {
                        tracing::warn!(error = %e, "HTML rewriting failed at the end of the page");
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    let rest = this.output.take();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn rewrite_in_chunks(page: &[u8], split: &[usize]) -> String {
        let snippet = Bytes::from_static(b"<script data-membergate=\"x\"></script>");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut chunks = Vec::new();
        let mut start = 0;
        for &at in split.iter().chain(std::iter::once(&page.len())) {
            chunks.push(Bytes::copy_from_slice(&page[start..at]));
            start = at;
        }
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(c)));
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let body = InjectBody::new(inner, encoding_rs::UTF_8, snippet);
        let collected = runtime.block_on(body.collect()).unwrap().to_bytes();
        String::from_utf8(collected.to_vec()).unwrap()
    }

    const S: &str = "<script data-membergate=\"x\"></script>";

    #[test]
    fn inserts_once_before_the_end_of_head_at_every_chunk_boundary() {
        let page = "<!doctype html><html><head><title>t</title></head><body><p>x</p></body></html>";
        let expected = page.replace("</head>", &format!("{S}</head>"));
        for at in 0..=page.len() {
            assert_eq!(
                rewrite_in_chunks(page.as_bytes(), &[at]),
                expected,
                "split at {at}"
            );
        }
        for a in (0..page.len()).step_by(7) {
            for b in (a..page.len()).step_by(5) {
                assert_eq!(
                    rewrite_in_chunks(page.as_bytes(), &[a, b]),
                    expected,
                    "split at {a},{b}"
                );
            }
        }
    }

    #[test]
    fn pages_without_head_get_it_at_the_start_of_body() {
        assert_eq!(
            rewrite_in_chunks(b"<body class=a><p>x</p></body>", &[]),
            format!("<body class=a>{S}<p>x</p></body>")
        );
    }

    #[test]
    fn never_twice_nor_in_comments_templates_or_scripts() {
        let cases = [
            // Already there: left alone.
            (
                "<head><script data-membergate=\"settings\"></script></head><body></body>",
                "<head><script data-membergate=\"settings\"></script></head><body></body>"
                    .to_owned(),
            ),
            (
                "<head></head><body><head></head></body>",
                format!("<head>{S}</head><body><head></head></body>"),
            ),
            (
                "<!-- <head></head> --><head></head>",
                format!("<!-- <head></head> --><head>{S}</head>"),
            ),
            (
                "<template><head></head><body></body></template><head></head>",
                format!("<template><head></head><body></body></template><head>{S}</head>"),
            ),
            (
                "<head><script>var s = '</head><body>';</script></head>",
                format!("<head><script>var s = '</head><body>';</script>{S}</head>"),
            ),
            ("no markup at all", "no markup at all".to_owned()),
        ];
        for (page, expected) in cases {
            assert_eq!(rewrite_in_chunks(page.as_bytes(), &[]), expected, "{page}");
        }
    }
}
