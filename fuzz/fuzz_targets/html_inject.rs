//! Streaming injection: any page, cut into any chunks, with any member email
//! and token. The output is the input with the snippet spliced in at most
//! once, the same for every chunking, and a re-parse of the output finds
//! exactly the snippet's scripts added: no value can end a script early.
//! (A page that names `content-security-policy` in its head may also have
//! its `<meta>` policy rewritten; for those only the chunking and the
//! re-parse are checked.)
#![no_main]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use membergate::config::{Chat, ChatProvider, ChatShow, WidgetLoader};
use membergate::inject::{Coding, InjectBody, Snippet, snippet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Arbitrary, Debug)]
struct Input {
    email: String,
    token: String,
    /// Chunk lengths for the second run (the first is one chunk).
    cuts: Vec<u8>,
    page: Vec<u8>,
}

/// A body that yields the given chunks, all ready at once.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

fn rewrite(chunks: VecDeque<Bytes>, snippet: Snippet) -> Vec<u8> {
    let body = InjectBody::new(
        Chunks(chunks),
        Some(encoding_rs::UTF_8),
        snippet,
        Coding::Identity,
        Coding::Identity,
        1 << 20,
    );
    let Ok(body) = body else {
        panic!("the rewriter could not be built");
    };
    let mut body = Box::pin(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => panic!("rewriting failed: {e}"),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("a ready body went pending"),
        }
    }
}

/// How many `<script data-membergate>` elements lol_html finds in `html`.
fn marked_scripts(html: &[u8]) -> usize {
    let mut count = 0;
    let settings = lol_html::Settings::new().append_element_content_handler(lol_html::element!(
        "script[data-membergate]",
        |_| {
            count += 1;
            Ok(())
        }
    ));
    let mut rewriter = lol_html::HtmlRewriter::new(settings, |_: &[u8]| {});
    rewriter.write(html).expect("a re-parse within limits");
    rewriter.end().expect("a re-parse within limits");
    count
}

fuzz_target!(|input: Input| {
    let chat = Chat {
        provider: ChatProvider::Builtin {
            widget_url: "/assets/chat-widget.js".into(),
        },
        default: ChatShow::Everyone,
        rules: Vec::new(),
        load_immediately: Some(true),
        inline_embed_selector: None,
        loader: WidgetLoader::Membergate,
    };
    let build = || snippet(&chat, Some((&input.email, &input.token)), None, None);
    let snippet = build().html;
    let page = Bytes::from(input.page);

    let whole = rewrite(VecDeque::from([page.clone()]), build());
    let mut chunks = VecDeque::new();
    let mut rest = page.clone();
    for cut in input.cuts {
        let at = usize::from(cut).min(rest.len());
        chunks.push_back(rest.split_to(at));
    }
    chunks.push_back(rest);
    let chunked = rewrite(chunks, build());
    assert_eq!(whole, chunked, "the output depends on chunk boundaries");
    let names_a_policy = page
        .windows(b"content-security-policy".len())
        .any(|w| w.eq_ignore_ascii_case(b"content-security-policy"));
    if names_a_policy {
        assert!(
            marked_scripts(&whole) <= marked_scripts(&page) + marked_scripts(snippet.as_bytes()),
            "a value ended the script"
        );
        return;
    }

    let injected = whole.len() != page.len();
    if injected {
        assert_eq!(
            whole.len(),
            page.len() + snippet.len(),
            "more than one insertion"
        );
        // The insertion point `at` keeps page[..at] before and page[at..] after.
        let same_start = whole
            .iter()
            .zip(page.iter())
            .take_while(|(a, b)| a == b)
            .count();
        let same_end = whole
            .iter()
            .rev()
            .zip(page.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let spliced = (page.len().saturating_sub(same_end)..=same_start.min(page.len()))
            .any(|at| &whole[at..at + snippet.len()] == snippet.as_bytes());
        assert!(
            spliced,
            "the page changed beyond one insertion of the snippet"
        );
        assert_eq!(
            marked_scripts(&whole),
            marked_scripts(&page) + marked_scripts(snippet.as_bytes()),
            "a value ended the script or the snippet went in where it is not parsed"
        );
    } else {
        assert_eq!(
            whole,
            page.to_vec(),
            "the page changed without an insertion"
        );
    }
});
