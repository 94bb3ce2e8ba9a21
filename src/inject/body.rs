//! A response body rewritten on the fly by lol_html: each chunk from the
//! origin is decoded (if the origin compressed it), goes through the rewriter,
//! and whatever is ready is encoded for the client and sent on. The page
//! streams and memory stays bounded by the chunk size, not the page size.
//!
//! Only the start of a page is parsed: the rewriter is fed in small slices
//! until the snippet is in, then ended, and the rest of the page passes
//! through untouched (the snippet goes in once, so nothing later matters).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use lol_html::html_content::ContentType;
use lol_html::send::{Element, ElementContentHandlers, EndTagHandler, HtmlRewriter, Settings};
use lol_html::{AsciiCompatibleEncoding, HandlerResult, MemorySettings, OutputSink, Selector};

use super::Snippet;
use super::codec::{Capped, Coding, Encoder};
use crate::proxy::body::BoxError;

/// The most memory the rewriter may hold for one page (its buffers for an
/// unfinished tag); pages within it are rewritten, a pathological one fails.
const MAX_REWRITER_MEMORY: usize = 1024 * 1024;
/// Bytes fed to the rewriter at a time until the snippet is in: the head of a
/// page is usually within the first few slices, and the rest is not parsed.
const SLICE: usize = 1024;

/// Where the next slice fed to the rewriter should end: just after the first
/// `</head ...>` or `<body ...>` tag within a slice's reach, so that the parse
/// stops at the likely insertion point instead of running on through the
/// page; else a whole slice. Only a guess to save work: lol_html decides
/// where the snippet goes (a tag inside a comment or script is not one), and
/// any cut is correct, since it parses across writes.
fn slice_end(bytes: &[u8], from: usize) -> usize {
    let window_end = (from + SLICE).min(bytes.len());
    let Some(tag) = insertion_tag(&bytes[from..window_end]) else {
        return window_end;
    };
    match memchr::memchr(b'>', &bytes[from + tag..]) {
        Some(close) => from + tag + close + 1,
        None => window_end,
    }
}

/// Where the first `</head` or `<body` starts in `bytes`, by bytes alone.
fn insertion_tag(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'<', bytes).find(|&i| {
        let rest = &bytes[i + 1..];
        rest.get(..5)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"/head"))
            || rest
                .get(..4)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"body"))
    })
}

/// What the rewriter must watch the page's `<meta>` tags for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MetaWatch {
    /// A charset declaration, for a response whose header names none.
    charset: bool,
    /// A `Content-Security-Policy`, which governs the snippet as the
    /// header's does.
    policy: bool,
}

impl MetaWatch {
    /// Every `<meta>` before the insertion point, whatever it says.
    fn all(header_names_charset: bool) -> MetaWatch {
        MetaWatch {
            charset: !header_names_charset,
            policy: true,
        }
    }
}

/// The likely insertion point in a page's first bytes, by bytes alone: where
/// the first `</head` or `<body` tag starts, and where it ends (just past its
/// `>`, or at the end of the bytes when they stop inside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Likely {
    tag: usize,
    end: usize,
}

fn likely_insertion(first: &[u8]) -> Option<Likely> {
    let tag = insertion_tag(first)?;
    let end = memchr::memchr(b'>', &first[tag..]).map_or(first.len(), |close| tag + close + 1);
    Some(Likely { tag, end })
}

/// What the page's first bytes say the rewriter must watch `<meta>` for:
/// nothing when they already hold the likely insertion point and, before
/// it, no charset but ASCII-compatible ones (or the header names one) and
/// no `content-security-policy`. That is most pages, whose head comes in
/// one piece and says utf-8. This look at bytes only decides whether
/// lol_html looks too (a selector compiled into a rewriter costs about as
/// much as the rest of the rewrite); what counts is lol_html's reading, and
/// a likely point that proves to be text is caught (`InjectBody::rewrite`).
fn meta_watch(first: &[u8], likely: Option<Likely>, header_names_charset: bool) -> MetaWatch {
    let Some(likely) = likely else {
        return MetaWatch::all(header_names_charset);
    };
    let head = &first[..likely.tag];
    let mut watch = MetaWatch {
        charset: false,
        policy: false,
    };
    for at in memchr::memchr2_iter(b'c', b'C', head) {
        let rest = &head[at..];
        watch.charset |= !header_names_charset
            && starts_with_ignore_case(rest, b"charset")
            && !names_ascii_compatible(&rest[7..]);
        watch.policy |= starts_with_ignore_case(rest, b"content-security-policy");
    }
    watch
}

fn starts_with_ignore_case(bytes: &[u8], word: &[u8]) -> bool {
    bytes
        .get(..word.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(word))
}

/// What follows the word `charset`: true when it is `= label` with a label
/// of an ASCII-compatible encoding, or no `=` (the word, not a declaration).
fn names_ascii_compatible(after: &[u8]) -> bool {
    let Some(rest) = after.trim_ascii_start().strip_prefix(b"=") else {
        return true;
    };
    let rest = rest.trim_ascii_start();
    let rest = rest
        .strip_prefix(b"\"")
        .or_else(|| rest.strip_prefix(b"'"))
        .unwrap_or(rest);
    let label_end = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')));
    // A label that runs to the end of the bytes may go on past them.
    let Some(label_end) = label_end else {
        return false;
    };
    super::ascii_compatible(&rest[..label_end]).is_some()
}

/// The selectors, parsed once per process.
struct Selectors {
    script: Selector,
    template: Selector,
    head: Selector,
    body: Selector,
    meta: Selector,
}

static SELECTORS: LazyLock<Option<Selectors>> = LazyLock::new(|| {
    Some(Selectors {
        script: "script".parse().ok()?,
        template: "template".parse().ok()?,
        head: "head".parse().ok()?,
        body: "body".parse().ok()?,
        meta: "meta".parse().ok()?,
    })
});

/// Collects the rewriter's output between writes.
#[derive(Clone)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    /// Room for a slice and the snippet, so collecting one slice's output
    /// does not grow the buffer piece by piece.
    fn with_capacity(capacity: usize) -> Collected {
        Collected(Arc::new(Mutex::new(Vec::with_capacity(capacity))))
    }

    fn take(&self) -> Vec<u8> {
        match self.0.lock() {
            Ok(mut buffer) => std::mem::take(&mut *buffer),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
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

/// What the handlers of one page share (they run in document order): one
/// allocation per page, not one per flag.
struct Page {
    snippet: Snippet,
    /// The snippet is in.
    injected: AtomicBool,
    /// The page already loads the widget (or was injected upstream).
    present: AtomicBool,
    /// The page's `<meta>` names a charset the snippet cannot be written in.
    foreign_charset: AtomicBool,
    /// A policy in the page's `<meta>` allows no script at all.
    policy_forbids: AtomicBool,
    /// How many `<template>` elements the parser is inside.
    template_depth: AtomicUsize,
    /// A `<meta>` policy was given the settings script's hash: from there
    /// on, the rewriter's output is no longer the page's bytes.
    rewrote_meta: AtomicBool,
}

impl Page {
    /// Back to the state before any of the page was parsed.
    fn reset(&self) {
        self.injected.store(false, Ordering::Relaxed);
        self.present.store(false, Ordering::Relaxed);
        self.foreign_charset.store(false, Ordering::Relaxed);
        self.policy_forbids.store(false, Ordering::Relaxed);
        self.template_depth.store(0, Ordering::Relaxed);
        self.rewrote_meta.store(false, Ordering::Relaxed);
    }

    /// Whether the snippet may go in here, and if so, claims it: once only,
    /// never inside a template, never into a page that already has the widget,
    /// declares a charset other than an ASCII-compatible one, or allows no
    /// script.
    fn claim(&self) -> bool {
        self.template_depth.load(Ordering::Relaxed) == 0
            && !self.present.load(Ordering::Relaxed)
            && !self.foreign_charset.load(Ordering::Relaxed)
            && !self.policy_forbids.load(Ordering::Relaxed)
            && !self.injected.swap(true, Ordering::Relaxed)
    }

    /// A `<meta http-equiv="Content-Security-Policy">` before the insertion
    /// point governs the snippet as the header's policy does (it applies to
    /// what follows it): its content gets the settings script's hash where
    /// a policy needs it, and one that allows no script keeps the snippet out.
    fn follow_meta_policy(&self, el: &mut Element<'_, '_>) -> HandlerResult {
        if self.template_depth.load(Ordering::Relaxed) > 0 || self.injected.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        let Some(policy) = meta_policy(el) else {
            return Ok(());
        };
        // lol_html hands attribute values over as written. A policy with
        // character references is left alone rather than read wrongly: at
        // worst it blocks our script, which the browser reports.
        if policy.contains('&') {
            return Ok(());
        }
        if super::csp::meta_forbids_scripts(&policy) {
            self.policy_forbids.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let Some(script) = self.snippet.inline_script() else {
            return Ok(());
        };
        if let Some(allowing) =
            super::csp::allow_in_meta(&policy, script, self.snippet.nonce.as_deref())
        {
            self.rewrote_meta.store(true, Ordering::Relaxed);
            el.set_attribute("content", &allowing)?;
        }
        Ok(())
    }
}

/// The content of a `<meta http-equiv="Content-Security-Policy">`.
fn meta_policy(el: &Element<'_, '_>) -> Option<String> {
    let equiv = el.get_attribute("http-equiv")?;
    if !equiv.trim().eq_ignore_ascii_case("content-security-policy") {
        return None;
    }
    el.get_attribute("content")
}

fn handler<'h>(
    selector: &'h Selector,
    f: impl FnMut(&mut Element<'_, '_>) -> HandlerResult + Send + 'h,
) -> (Cow<'h, Selector>, ElementContentHandlers<'h>) {
    (
        Cow::Borrowed(selector),
        ElementContentHandlers::default().element(f),
    )
}

/// Whether a `<meta>` declares the page's charset, and if so whether it is one
/// the snippet (ASCII) can be written in. An unknown label (`utf-7`) counts
/// as foreign: the snippet goes only where its bytes mean what they say.
fn meta_charset(el: &Element<'_, '_>) -> Option<bool> {
    let label = match el.get_attribute("charset") {
        Some(label) => label,
        None => {
            let equiv = el.get_attribute("http-equiv")?;
            if !equiv.trim().eq_ignore_ascii_case("content-type") {
                return None;
            }
            let content = el.get_attribute("content")?;
            super::charset_parameter(&content)?
                .trim_matches(['"', '\''])
                .to_owned()
        }
    };
    Some(super::ascii_compatible(label.trim().as_bytes()).is_some())
}

/// A rewriter that puts the page's snippet before `</head>`, or at the start
/// of `<body>` when the head has no end tag. `encoding` is the charset the
/// response header names; `watch`: what the page's `<meta>` tags may say
/// (its first charset decides whether the snippet may go in at all).
fn rewriter(
    selectors: &'static Selectors,
    encoding: Option<&'static encoding_rs::Encoding>,
    watch: MetaWatch,
    page: &Arc<Page>,
    output: Collected,
) -> HtmlRewriter<'static, Collected> {
    let mut settings = Settings::new_send()
        .with_strict(false)
        .with_memory_settings(
            MemorySettings::new().with_max_allowed_memory_usage(MAX_REWRITER_MEMORY),
        );
    if let Some(encoding) = encoding.and_then(AsciiCompatibleEncoding::new) {
        settings = settings.with_encoding(encoding);
    }
    if watch.charset || watch.policy {
        // Only the first charset declaration counts (HTML, 13.2.3.2).
        let declared = page.clone();
        let mut decided = !watch.charset;
        settings = settings.append_element_content_handler(handler(&selectors.meta, move |el| {
            if !decided && let Some(ascii_compatible) = meta_charset(el) {
                decided = true;
                declared
                    .foreign_charset
                    .store(!ascii_compatible, Ordering::Relaxed);
            }
            if watch.policy {
                declared.follow_meta_policy(el)?;
            }
            Ok(())
        }));
    }
    // Matched by tag name alone and checked here: an attribute selector
    // costs more to compile (for every page) than this costs to run for the
    // few scripts before `</head>`.
    let seen = page.clone();
    settings = settings.append_element_content_handler(handler(&selectors.script, move |el| {
        if el.has_attribute("data-membergate")
            || (seen.snippet.loads_widget
                && el
                    .get_attribute("id")
                    .is_some_and(|id| id == "hs-script-loader"))
        {
            seen.present.store(true, Ordering::Relaxed);
        }
        Ok(())
    }));
    // Nothing goes into a <template>: its head and body are inert.
    let template = page.clone();
    settings = settings.append_element_content_handler(handler(&selectors.template, move |el| {
        // `<template/>` in SVG or MathML is empty and has no end tag to wait for.
        if !el.can_have_content() {
            return Ok(());
        }
        template.template_depth.fetch_add(1, Ordering::Relaxed);
        let template = template.clone();
        let leave: EndTagHandler<'static> = Box::new(move |end| {
            // lol_html also ends the template at an end tag that closes an
            // element around it (`<head><template></head>`). A browser does
            // not: in a template, such an end tag is ignored, and what
            // follows is still inert.
            if !end.name().eq_ignore_ascii_case("template") {
                return Ok(());
            }
            template.template_depth.fetch_sub(1, Ordering::Relaxed);
            Ok(())
        });
        el.on_end_tag(leave)
    }));
    let head = page.clone();
    settings = settings.append_element_content_handler(handler(&selectors.head, move |el| {
        if head.template_depth.load(Ordering::Relaxed) > 0 {
            return Ok(());
        }
        let head = head.clone();
        // An implied </head> never fires this; <body> below covers that case.
        let insert: EndTagHandler<'static> = Box::new(move |end| {
            // Scripts in the head have been seen by now, templates closed.
            if head.claim() {
                end.before(&head.snippet.html, ContentType::Html);
            }
            Ok(())
        });
        let _ = el.on_end_tag(insert);
        Ok(())
    }));
    let body = page.clone();
    settings = settings.append_element_content_handler(handler(&selectors.body, move |el| {
        if body.claim() {
            el.prepend(&body.snippet.html, ContentType::Html);
        }
        Ok(())
    }));
    HtmlRewriter::new(settings, output)
}

/// The look at a page's first two bytes for a byte order mark.
#[derive(Clone, Copy)]
enum Sniff {
    Start,
    One(u8),
    Done,
}

/// The first bytes of a page, other than white space and a UTF-8 byte order
/// mark, lower-cased: enough to tell a document (a doctype, `<html>` or
/// `<head>`) from a fragment.
#[derive(Default)]
struct Opening {
    seen: [u8; 9],
    len: usize,
}

impl Opening {
    fn see(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == self.seen.len() {
                return;
            }
            let leading =
                self.len == 0 && (b.is_ascii_whitespace() || [0xEF, 0xBB, 0xBF].contains(&b));
            if !leading {
                self.seen[self.len] = b.to_ascii_lowercase();
                self.len += 1;
            }
        }
    }

    fn is_document(&self) -> bool {
        let seen = &self.seen[..self.len];
        // `<head` must end there: `<header>` opens many a fragment. A
        // comment proves nothing (partials start with them too).
        let tag = |name: &[u8]| {
            seen.strip_prefix(name).is_some_and(|rest| {
                rest.first()
                    .is_none_or(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
            })
        };
        seen.starts_with(b"<!doctype") || tag(b"<html") || tag(b"<head")
    }
}

/// What building a page's rewriter waits for: its first bytes, which tell
/// whether it must watch the page's `<meta>` tags.
#[derive(Clone, Copy)]
struct Unbuilt {
    selectors: &'static Selectors,
    encoding: Option<&'static encoding_rs::Encoding>,
}

pub struct InjectBody<B> {
    inner: Pin<Box<B>>,
    decoder: Option<Capped>,
    /// Until the first bytes arrive.
    unbuilt: Option<Unbuilt>,
    /// From the first bytes until the snippet is in.
    rewriter: Option<HtmlRewriter<'static, Collected>>,
    /// What the rewriter has taken and not yet given back (a tag cut by a
    /// chunk's end, say), in order. Until anything is changed, its output
    /// is its input, so a page whose rewrite fails can go on as it came.
    /// One buffer, not the chunks: a tag cut into a million one-byte chunks
    /// costs a copy of each byte, not a million entries shifted one by one.
    held: BytesMut,
    page: Arc<Page>,
    output: Collected,
    encoder: Option<Encoder>,
    /// The rest of a chunk, sent as a frame of its own after the rewritten
    /// start (the origin's bytes, not copied).
    pending: Option<Bytes>,
    /// How far the look for a byte order mark has got.
    sniff: Sniff,
    /// How the page begins, for the snippet's last chance at its end.
    opening: Opening,
    /// The last byte other than white space the rewriter was given: a page
    /// that ends inside a tag gets nothing added after it.
    last_byte: u8,
    /// Whether the encoder has been given bytes since it last flushed.
    unflushed: bool,
    finished: bool,
}

impl<B> InjectBody<B> {
    /// `encoding`: the charset the response header names. `from`: the
    /// origin's coding; `to`: the client's; `max_decoded`: the cap on a
    /// compressed page's decoded size.
    pub fn new(
        inner: B,
        encoding: Option<&'static encoding_rs::Encoding>,
        snippet: Snippet,
        from: Coding,
        to: Coding,
        max_decoded: usize,
    ) -> Result<InjectBody<B>, (B, BoxError)> {
        let Some(selectors) = SELECTORS.as_ref() else {
            return Err((inner, "the injection selectors did not parse".into()));
        };
        let output = Collected::with_capacity(SLICE + snippet.html.len());
        let page = Arc::new(Page {
            snippet,
            injected: AtomicBool::new(false),
            present: AtomicBool::new(false),
            foreign_charset: AtomicBool::new(false),
            policy_forbids: AtomicBool::new(false),
            template_depth: AtomicUsize::new(0),
            rewrote_meta: AtomicBool::new(false),
        });
        let decoder = match from {
            Coding::Identity => None,
            coding => match Capped::new(coding, max_decoded) {
                Ok(decoder) => Some(decoder),
                Err(e) => return Err((inner, e.into())),
            },
        };
        let encoder = match to {
            Coding::Identity => None,
            coding => Some(Encoder::new(coding)),
        };
        Ok(InjectBody {
            inner: Box::pin(inner),
            decoder,
            unbuilt: Some(Unbuilt {
                selectors,
                encoding,
            }),
            rewriter: None,
            held: BytesMut::new(),
            page,
            output,
            encoder,
            pending: None,
            sniff: Sniff::Start,
            opening: Opening::default(),
            last_byte: 0,
            unflushed: false,
            finished: false,
        })
    }

    /// Whether the page starts with a UTF-16 byte order mark, which outranks
    /// the header's charset, as in browsers: such a page is not in an
    /// ASCII-compatible encoding, and its bytes may still happen to spell
    /// tags, so it is left as it is. Looks at the first two bytes once, even
    /// when they come in two chunks.
    fn utf16_bom(&mut self, decoded: &[u8]) -> bool {
        let first_two = match (self.sniff, decoded) {
            (_, []) | (Sniff::Done, _) => return false,
            (Sniff::Start, [only]) => {
                self.sniff = Sniff::One(*only);
                return false;
            }
            (Sniff::Start, [a, b, ..]) => [*a, *b],
            (Sniff::One(a), [b, ..]) => [a, *b],
        };
        self.sniff = Sniff::Done;
        first_two == [0xFE, 0xFF] || first_two == [0xFF, 0xFE]
    }

    /// Runs decoded bytes through the rewriter while the snippet is not in;
    /// afterwards they pass as they are. Returns the rewritten start and the
    /// untouched rest of the chunk.
    fn rewrite(&mut self, decoded: Bytes) -> Result<(Bytes, Bytes), BoxError> {
        if self.rewriter.is_some() || self.unbuilt.is_some() {
            self.opening.see(&decoded);
            if let Some(&last) = decoded.iter().rfind(|b| !b.is_ascii_whitespace()) {
                self.last_byte = last;
            }
        }
        if self.utf16_bom(&decoded) {
            // Nothing went in yet (the rewriter saw one byte at most): flush
            // it and pass the page on as it is.
            self.unbuilt = None;
            if let Some(rewriter) = self.rewriter.take() {
                rewriter.end()?;
            }
            return Ok((Bytes::from(self.output.take()), decoded));
        }
        let offset = match self.feed_chunk(&decoded) {
            Ok(offset) => offset,
            Err(error) => return self.give_up(decoded, error),
        };
        if self.rewriter.is_none() {
            return Ok((decoded, Bytes::new()));
        }
        let mut ready = self.output.take();
        if self.page.injected.load(Ordering::Relaxed) {
            // In: flush what the rewriter holds, and stop parsing.
            if let Some(rewriter) = self.rewriter.take() {
                rewriter.end()?;
            }
            self.held.clear();
            ready.extend_from_slice(&self.output.take());
            return Ok((Bytes::from(ready), decoded.slice(offset..)));
        }
        self.hold(decoded, ready.len());
        Ok((Bytes::from(ready), Bytes::new()))
    }

    /// Builds the rewriter at the first bytes and writes the chunk to it,
    /// until the snippet is in; returns how many bytes it took.
    fn feed_chunk(&mut self, decoded: &Bytes) -> Result<usize, BoxError> {
        // The first bytes decide what the rewriter watches. When that is
        // less than every `<meta>`, it rests on the likely insertion point
        // being the real one, which lol_html confirms or not once it has read
        // that far.
        let mut narrowed = None;
        if !decoded.is_empty()
            && let Some(unbuilt) = self.unbuilt.take()
        {
            let header_names_charset = unbuilt.encoding.is_some();
            let likely = likely_insertion(decoded);
            let watch = meta_watch(decoded, likely, header_names_charset);
            self.build_rewriter(unbuilt, watch);
            if let Some(likely) = likely
                && watch != MetaWatch::all(header_names_charset)
            {
                narrowed = Some((unbuilt, likely));
            }
        }
        let Some((unbuilt, likely)) = narrowed else {
            return self.feed(decoded);
        };
        let offset = self.feed(&decoded[..likely.end])?;
        if self.page.injected.load(Ordering::Relaxed) {
            return Ok(offset);
        }
        // The likely point was text (in a comment or a script, say), and
        // `<meta>` tags after it went unwatched. Nothing has been sent yet:
        // read these bytes again, watching every `<meta>`.
        self.rewriter = None;
        self.output.take();
        self.page.reset();
        self.build_rewriter(unbuilt, MetaWatch::all(unbuilt.encoding.is_some()));
        self.feed(decoded)
    }

    /// Keeps what the rewriter took of `decoded` (all of it: the snippet is
    /// not in) and of what it held before, less the `given_back` bytes it
    /// has just put out.
    fn hold(&mut self, decoded: Bytes, given_back: usize) {
        if self.held.is_empty() && given_back == decoded.len() {
            return; // All given back: the usual case, nothing to keep.
        }
        self.held.extend_from_slice(&decoded);
        self.held.advance(given_back.min(self.held.len()));
    }

    /// The rewriter failed (a tag larger than its memory allows, say). Until
    /// the snippet is in or a `<meta>` is changed, what it put out is the
    /// page's own start: the rest of the page follows it as it came, with
    /// nothing inserted. Otherwise the response is cut short.
    fn give_up(&mut self, decoded: Bytes, error: BoxError) -> Result<(Bytes, Bytes), BoxError> {
        if self.page.injected.load(Ordering::Relaxed)
            || self.page.rewrote_meta.load(Ordering::Relaxed)
        {
            return Err(error);
        }
        tracing::warn!(error = %error, "page rewriting failed before anything was changed; the page passes as it came");
        self.rewriter = None;
        let given_back = self.output.take();
        let mut rest = std::mem::take(&mut self.held);
        rest.extend_from_slice(&decoded);
        rest.advance(given_back.len().min(rest.len()));
        Ok((Bytes::from(given_back), rest.freeze()))
    }

    /// Builds the page's rewriter, writing into the body's output.
    fn build_rewriter(&mut self, unbuilt: Unbuilt, watch: MetaWatch) {
        let Unbuilt {
            selectors,
            encoding,
        } = unbuilt;
        let output = self.output.clone();
        self.rewriter = Some(rewriter(selectors, encoding, watch, &self.page, output));
    }

    /// Writes `decoded` to the rewriter in slices until the snippet is in;
    /// returns how many bytes it took. Without a rewriter, takes none.
    fn feed(&mut self, decoded: &[u8]) -> Result<usize, BoxError> {
        let Some(rewriter) = self.rewriter.as_mut() else {
            return Ok(0);
        };
        let mut offset = 0;
        while offset < decoded.len() && !self.page.injected.load(Ordering::Relaxed) {
            let end = slice_end(decoded, offset);
            rewriter.write(&decoded[offset..end])?;
            offset = end;
        }
        Ok(offset)
    }

    fn encode(&mut self, bytes: Bytes) -> Result<Bytes, BoxError> {
        match self.encoder.as_mut() {
            None => Ok(bytes),
            Some(encoder) => {
                self.unflushed |= !bytes.is_empty();
                Ok(Bytes::from(encoder.encode(&bytes)?))
            }
        }
    }

    /// What the encoder holds, for when the origin makes the page wait.
    fn flush(&mut self) -> Result<Bytes, BoxError> {
        match self.encoder.as_mut() {
            Some(encoder) if std::mem::take(&mut self.unflushed) => {
                Ok(Bytes::from(encoder.flush()?))
            }
            _ => Ok(Bytes::new()),
        }
    }

    /// One chunk from the origin, all the way to what the client gets: the
    /// rewritten start now, the untouched rest as `pending`.
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let decoded = match self.decoder.as_mut() {
            None => data,
            Some(decoder) => Bytes::from(decoder.decode(&data)?),
        };
        let (start, rest) = self.rewrite(decoded)?;
        if self.encoder.is_some() {
            // The encoder takes both parts in order; one output.
            let mut out = BytesMut::from(&self.encode(start)?[..]);
            out.extend_from_slice(&self.encode(rest)?);
            return Ok(out.freeze());
        }
        if !rest.is_empty() {
            self.pending = Some(rest);
        }
        Ok(start)
    }

    /// The end of the page: the last decoded bytes, the rewriter's and the
    /// encoder's remainders.
    fn last(&mut self) -> Result<Bytes, BoxError> {
        let rest = match self.decoder.take() {
            None => Bytes::new(),
            Some(decoder) => Bytes::from(decoder.finish()?),
        };
        let (start, tail) = self.rewrite(rest)?;
        let mut out = BytesMut::from(&start[..]);
        out.extend_from_slice(&tail);
        if let Some(rewriter) = self.rewriter.take() {
            match rewriter.end() {
                Ok(()) => {
                    self.held.clear();
                    out.extend_from_slice(&self.output.take());
                    // HTML lets a document leave out both `</head>` and
                    // `<body>`; then the page's end is the snippet's place.
                    // Not a fragment's (an htmx or Turbo partial, `<tr>...`):
                    // the page it goes into has the widget.
                    if self.opening.is_document() && self.last_byte == b'>' && self.page.claim() {
                        out.extend_from_slice(self.page.snippet.html.as_bytes());
                    }
                }
                Err(error) => {
                    let (given_back, rest) = self.give_up(Bytes::new(), error.into())?;
                    out.extend_from_slice(&given_back);
                    out.extend_from_slice(&rest);
                }
            }
        }
        let mut last = BytesMut::from(&self.encode(out.freeze())?[..]);
        if let Some(encoder) = self.encoder.take() {
            last.extend_from_slice(&encoder.finish()?);
        }
        Ok(last.freeze())
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
            if let Some(rest) = this.pending.take() {
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let result = match this.inner.as_mut().poll_frame(cx) {
                // The origin makes the page wait: send what the encoder has.
                Poll::Pending => match this.flush() {
                    Ok(bytes) if bytes.is_empty() => return Poll::Pending,
                    flushed => flushed,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.chunk(data),
                    // Trailers cannot follow a rewritten body; drop them.
                    Err(_) => continue,
                },
                Poll::Ready(None) => {
                    this.finished = true;
                    this.last()
                }
            };
            match result {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(e) => {
                    tracing::warn!(error = %e, "page rewriting failed; response cut short");
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const S: &str = "<script data-membergate=\"x\"></script>";

    fn run(chunks: Vec<Bytes>, from: Coding, to: Coding) -> Result<Vec<u8>, BoxError> {
        run_as(None, chunks, from, to)
    }

    /// `run`, for a response whose header names `charset`.
    fn run_as(
        charset: Option<&'static encoding_rs::Encoding>,
        chunks: Vec<Bytes>,
        from: Coding,
        to: Coding,
    ) -> Result<Vec<u8>, BoxError> {
        let snippet = Snippet {
            html: S.to_owned(),
            inline_script: None,
            loads_widget: true,
            nonce: None,
        };
        run_snippet(snippet, charset, chunks, from, to)
    }

    fn run_snippet(
        snippet: Snippet,
        charset: Option<&'static encoding_rs::Encoding>,
        chunks: Vec<Bytes>,
        from: Coding,
        to: Coding,
    ) -> Result<Vec<u8>, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(c)));
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let body =
            InjectBody::new(inner, charset, snippet, from, to, 1 << 20).map_err(|(_, e)| e)?;
        Ok(runtime.block_on(body.collect())?.to_bytes().to_vec())
    }

    fn split_at(page: &[u8], split: &[usize]) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut start = 0;
        for &at in split.iter().chain(std::iter::once(&page.len())) {
            chunks.push(Bytes::copy_from_slice(&page[start..at]));
            start = at;
        }
        chunks
    }

    fn rewrite_in_chunks(page: &[u8], split: &[usize]) -> String {
        let chunks = split_at(page, split);
        String::from_utf8(run(chunks, Coding::Identity, Coding::Identity).unwrap()).unwrap()
    }

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
    fn long_pages_pass_through_after_the_head_unchanged() {
        let tail: String = (0..5000)
            .map(|i| format!("<p id=p{i}>x</p><head></head>"))
            .collect();
        let page = format!("<html><head><meta charset=utf-8></head><body>{tail}</body></html>");
        let expected = page.replacen("</head>", &format!("{S}</head>"), 1);
        for split in [vec![], vec![10], vec![3000, 70_000], vec![40, 41, 42, 43]] {
            assert_eq!(
                rewrite_in_chunks(page.as_bytes(), &split),
                expected,
                "{split:?}"
            );
        }
    }

    #[test]
    fn slices_end_after_the_likely_insertion_tag() {
        let page = b"<html><head><title>x</title></HEAD ><body><p>";
        let after_head = page.windows(7).position(|w| w == b"</HEAD ").unwrap() + 8;
        assert_eq!(slice_end(page, 0), after_head);
        let body_end = page.len() - 3;
        assert_eq!(slice_end(page, after_head), body_end);
        assert_eq!(slice_end(page, body_end), page.len());
        let long = vec![b'a'; 3000];
        assert_eq!(slice_end(&long, 0), SLICE);
        assert_eq!(slice_end(&long, 2500), 3000);
        // A tag whose '>' has not arrived yet: the whole window.
        assert_eq!(slice_end(b"<p></head", 0), 9);
    }

    #[test]
    fn utf16_pages_and_bytes_of_other_charsets_pass_untouched() {
        let utf16le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                // Read as ASCII, these characters' bytes spell `<head></head> `.
                "\u{683C}\u{6165}\u{3E64}\u{2F3C}\u{6568}\u{6461}\u{203E}"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        let utf16be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("<head></head>".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert!(utf16le.windows(13).any(|w| w == b"<head></head>"));
        for page in [&utf16le, &utf16be] {
            for split in [vec![], vec![1], vec![2], vec![3, 9]] {
                let out = run(split_at(page, &split), Coding::Identity, Coding::Identity).unwrap();
                assert_eq!(&out, page, "{split:?}");
            }
        }
        // A windows-1252 page labelled only by its <meta>: its bytes are kept.
        let latin = b"<head><meta charset=windows-1252><title>Caf\xE9</title></head>".to_vec();
        let out = run(
            vec![Bytes::from(latin.clone())],
            Coding::Identity,
            Coding::Identity,
        )
        .unwrap();
        let mut expected = latin[..latin.len() - 7].to_vec();
        expected.extend_from_slice(S.as_bytes());
        expected.extend_from_slice(b"</head>");
        assert_eq!(out, expected);
    }

    #[test]
    fn a_meta_charset_the_snippet_cannot_be_written_in_leaves_the_page_alone() {
        let foreign = [
            "<head><meta charset=ISO-2022-JP></head>\x1b$B$3\x1b(B",
            "<head><meta charset=\"utf-7\"></head>+ADw-",
            "<head><meta charset=utf-16le></head>",
            "<head><meta http-equiv=Content-Type content=\"text/html; charset=iso-2022-kr\"></head>",
            // The first declaration counts, a later one cannot undo it.
            "<head><meta charset=iso-2022-jp><meta charset=utf-8></head>",
            // Another parameter before the charset.
            "<head><meta http-equiv=content-type content=\"text/html; x=y; charset=iso-2022-jp\"></head>",
        ];
        for page in foreign {
            for split in [vec![], vec![14], vec![page.len() - 3]] {
                assert_eq!(
                    rewrite_in_chunks(page.as_bytes(), &split),
                    page,
                    "{split:?}"
                );
            }
        }
        let ascii_compatible = [
            "<head><meta charset=Shift_JIS></head>",
            "<head><meta http-equiv=content-type content='text/html;charset=koi8-r'></head>",
            "<head><meta name=viewport content=width=device-width></head>",
            "<head><meta charset=utf-8><meta charset=iso-2022-jp></head>",
            "<head><meta http-equiv=content-type content=\"text/html; charset=utf-8; x=y\"></head>",
        ];
        for page in ascii_compatible {
            assert_eq!(
                rewrite_in_chunks(page.as_bytes(), &[]),
                page.replace("</head>", &format!("{S}</head>")),
            );
        }
        // The response header's charset outranks the page's <meta>.
        let page = "<head><meta charset=iso-2022-jp></head>";
        let out = run_as(
            Some(encoding_rs::UTF_8),
            vec![Bytes::from(page)],
            Coding::Identity,
            Coding::Identity,
        )
        .unwrap();
        assert_eq!(
            out,
            page.replace("</head>", &format!("{S}</head>")).as_bytes()
        );
    }

    fn watch_of(page: &str, header_names_charset: bool) -> MetaWatch {
        let first = page.as_bytes();
        meta_watch(first, likely_insertion(first), header_names_charset)
    }

    #[test]
    fn only_pages_that_may_name_a_foreign_charset_or_a_policy_get_their_meta_watched() {
        let plain = [
            "<head><meta charset=\"utf-8\"></head>",
            "<head><meta charset=utf-8><title>x</title></head>",
            "<head><title>x</title></head><body>",
            "<head><meta CHARSET = 'Shift_JIS'></head>",
            "<head><script>// the charset we use</script></head>",
            "<meta http-equiv=content-type content=\"text/html; charset=windows-1251\"><body>",
        ];
        let nothing = MetaWatch {
            charset: false,
            policy: false,
        };
        for page in plain {
            assert_eq!(watch_of(page, false), nothing, "{page}");
        }
        let watched = [
            "<head><meta charset=iso-2022-jp></head>",
            "<head><meta http-equiv=content-type content=\"text/html; charset=utf-7\"></head>",
            "<head><meta charset=\"\"></head>",
            "<head><meta charset=\"utf-8\">",
            "<head><meta charset=utf",
            "",
        ];
        for page in watched {
            assert!(watch_of(page, false).charset, "{page}");
            assert!(!watch_of(page, true).charset, "{page}");
        }
        // A policy in the head is watched for whatever the header says.
        for header_names_charset in [false, true] {
            let watch = |page: &str| watch_of(page, header_names_charset).policy;
            assert!(watch(
                "<head><meta http-equiv=Content-Security-Policy content=\"default-src 'self'\"></head>"
            ));
            assert!(watch("<head><meta http-equiv=\"CONTENT-SECURITY-POLICY\""));
            assert!(watch("<head><title>no end yet"));
            assert!(!watch("<head><meta name=csp content=x></head>"));
            assert!(!watch(
                "<head></head><meta http-equiv=content-security-policy>"
            ));
        }
    }

    /// A settings script `x()`, whose hash is `X_HASH`.
    const SETTINGS: &str = "<script data-membergate=\"settings\">x()</script>";
    const X_HASH: &str = "'sha256-D6IGS8VMvCoyaR/l0h9tERrBTATY01CoPS7l6xDv0kI='";

    fn with_settings(page: &str, split: &[usize], nonce: Option<&str>) -> String {
        let start = SETTINGS.find('>').unwrap() + 1;
        let snippet = Snippet {
            html: SETTINGS.to_owned(),
            inline_script: Some(start..start + 3),
            loads_widget: true,
            nonce: nonce.map(str::to_owned),
        };
        let header_charset = Some(encoding_rs::UTF_8);
        let chunks = split_at(page.as_bytes(), split);
        let out = run_snippet(
            snippet,
            header_charset,
            chunks,
            Coding::Identity,
            Coding::Identity,
        );
        String::from_utf8(out.unwrap()).unwrap()
    }

    #[test]
    fn a_page_the_rewriter_cannot_read_passes_as_it_came() {
        // A tag larger than the rewriter's memory, before the end of head.
        let huge = format!(
            "<script src=\"data:,{}\"></script>",
            "a".repeat(MAX_REWRITER_MEMORY + 1)
        );
        let page = format!("<html><head><title>t</title>{huge}</head><body>x</body></html>");
        let page = page.as_bytes();
        let tag = page.len() - huge.len() - "</head><body>x</body></html>".len();
        // In one chunk, and cut in the text before the tag, inside it, and
        // in many small chunks, so that what the rewriter held comes from
        // several of them.
        let many: Vec<usize> = (1..page.len() / 4096).map(|i| i * 4096 + 7).collect();
        for split in [
            vec![],
            vec![10],
            vec![tag + 3],
            vec![tag - 2, tag + 20],
            many,
        ] {
            let out = run(split_at(page, &split), Coding::Identity, Coding::Identity);
            assert!(
                out.as_ref().unwrap() == page,
                "split at {:?}",
                &split[..split.len().min(3)]
            );
        }
        // Once a policy in the page has been changed, its bytes are no longer
        // the origin's: the response is cut short instead.
        let policy = "<meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'self'\">";
        let page = format!("<html><head>{policy}{huge}</head><body>x</body></html>");
        let start = SETTINGS.find('>').unwrap() + 1;
        let snippet = Snippet {
            html: SETTINGS.to_owned(),
            inline_script: Some(start..start + 3),
            loads_widget: true,
            nonce: None,
        };
        let chunks = split_at(page.as_bytes(), &[]);
        let out = run_snippet(snippet, None, chunks, Coding::Identity, Coding::Identity);
        assert!(out.is_err());
    }

    #[test]
    fn the_snippet_goes_where_a_browser_can_run_it() {
        let cases = [
            // `</head>` and `<body>` left out, as HTML allows: the page's end.
            (
                "<!doctype html><title>x</title><link rel=icon href=/i><p>hi</p>\n",
                "<!doctype html><title>x</title><link rel=icon href=/i><p>hi</p>\n<S>",
            ),
            (
                "\u{feff} <HEAD><meta charset=utf-8><noscript><link rel=x></noscript><div>a</div>",
                "\u{feff} <HEAD><meta charset=utf-8><noscript><link rel=x></noscript><div>a</div><S>",
            ),
            // Cut off inside a tag: nothing is added after it.
            ("<!doctype html><p>a</p><p", "<!doctype html><p>a</p><p"),
            // A `</head>` inside a template is ignored, and so is what follows
            // while the template is open.
            (
                "<head><template></head><body>x",
                "<head><template></head><body>x",
            ),
            (
                "<head><template><p>a</p></template></head><body>x",
                "<head><template><p>a</p></template><S></head><body>x",
            ),
            (
                "<html><head><title>t</title></head><body>x</body></html>",
                "<html><head><title>t</title><S></head><body>x</body></html>",
            ),
            // A fragment (an htmx or Turbo partial) is no document: the page
            // it goes into has the widget.
            ("<tr><td>x</td></tr>", "<tr><td>x</td></tr>"),
            (
                "<title>t</title><div>x</div>",
                "<title>t</title><div>x</div>",
            ),
            (
                "<header class=top><a href=/>Home</a></header>",
                "<header class=top><a href=/>Home</a></header>",
            ),
            (
                "<!--[--><div id=cart>3</div><!--]-->",
                "<!--[--><div id=cart>3</div><!--]-->",
            ),
            ("<html><p>x</p>", "<html><p>x</p><S>"),
        ];
        for (page, expected) in cases {
            let expected = expected.replace("<S>", SETTINGS);
            for at in 0..=page.len() {
                assert_eq!(
                    with_settings(page, &[at], None),
                    expected,
                    "{page} split at {at}"
                );
            }
        }
    }

    #[test]
    fn a_long_tag_in_many_small_chunks_is_held_and_given_back_whole() {
        // The rewriter holds the whole tag until it ends, then gives it back
        // at once: thousands of pieces to let go of together.
        let tag = format!("<script src=\"data:,{}\"></script>", "a".repeat(200_000));
        let page = format!("<html><head><title>t</title>{tag}</head><body>x</body></html>");
        let pieces: Vec<usize> = (1..page.len() / 50).map(|i| i * 50 + 3).collect();
        let expected = page.replace("</head>", &format!("{SETTINGS}</head>"));
        assert!(with_settings(&page, &pieces, None) == expected);
    }

    #[test]
    fn a_policy_in_the_head_gets_the_settings_hash_at_every_chunk_boundary() {
        let page = "<html><head><meta http-equiv=\"Content-Security-Policy\" \
                    content=\"default-src 'self'; img-src *\"><title>t</title></head><body>x</body>";
        let expected = page
            .replace(
                "content=\"default-src 'self'; img-src *\"",
                &format!("content=\"default-src 'self'; img-src *; script-src 'self' {X_HASH}\""),
            )
            .replace("</head>", &format!("{SETTINGS}</head>"));
        for at in 0..=page.len() {
            assert_eq!(with_settings(page, &[at], None), expected, "split at {at}");
        }
    }

    #[test]
    fn a_likely_end_of_head_that_is_only_text_does_not_hide_the_metas_after_it() {
        // The first bytes seem to end the head inside a comment or a script,
        // so the look at bytes alone finds no <meta> worth watching before it.
        for fake in ["<!-- </head> -->", "<script>var s = '</head>';</script>"] {
            let page = format!(
                "<html><head>{fake}<meta http-equiv=\"Content-Security-Policy\" \
                 content=\"default-src 'self'\"><title>t</title></head><body>x</body>"
            );
            let expected = page
                .replace(
                    "content=\"default-src 'self'\"",
                    &format!("content=\"default-src 'self'; script-src 'self' {X_HASH}\""),
                )
                .replace(
                    "<title>t</title></head>",
                    &format!("<title>t</title>{SETTINGS}</head>"),
                );
            for at in 0..=page.len() {
                assert_eq!(
                    with_settings(&page, &[at], None),
                    expected,
                    "{fake}, split at {at}"
                );
            }
            let foreign = format!("<head>{fake}<meta charset=iso-2022-jp></head><body>x</body>");
            for at in [0, 20, foreign.len()] {
                assert_eq!(
                    rewrite_in_chunks(foreign.as_bytes(), &[at]),
                    foreign,
                    "split at {at}"
                );
            }
        }
    }

    #[test]
    fn policies_in_the_head_are_followed_never_loosened() {
        let meta = |content: &str| {
            format!(
                "<head><meta http-equiv=content-security-policy content=\"{content}\"></head><body>"
            )
        };
        let inserted = |page: &str| page.replace("</head>", &format!("{SETTINGS}</head>"));
        // Already allowed, by 'unsafe-inline' or by the nonce our script carries.
        for content in ["script-src 'unsafe-inline'", "script-src 'nonce-n1'"] {
            let page = meta(content);
            assert_eq!(with_settings(&page, &[], Some("n1")), inserted(&page));
        }
        // No script allowed at all, or a comma that browsers read two ways:
        // the page stays as it is.
        for content in [
            "script-src 'none'",
            "img-src *, default-src 'none'",
            "default-src 'self', img-src *",
        ] {
            let page = meta(content);
            assert_eq!(with_settings(&page, &[], None), page);
        }
        // Character references are not read: the policy stays as written.
        let page = meta("script-src &#39;self&#39;");
        assert_eq!(with_settings(&page, &[], None), inserted(&page));
        // A policy inside a template, or after the head, is no policy.
        let page = "<head><template><meta http-equiv=content-security-policy \
                    content=\"script-src 'none'\"></template></head><body>";
        assert_eq!(with_settings(page, &[], None), inserted(page));
        // Another http-equiv, or none: not a policy.
        let page = "<head><meta http-equiv=refresh content=\"script-src 'none'\"></head><body>";
        assert_eq!(with_settings(page, &[], None), inserted(page));
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
            (
                "<body><iframe srcdoc=\"<head></head><body></body>\"></iframe></body>",
                format!("<body>{S}<iframe srcdoc=\"<head></head><body></body>\"></iframe></body>"),
            ),
            // Cut off mid-tag: no end of head ever came, so nothing goes in,
            // and what came goes out as it came.
            (
                "<head><title>t</title></hea",
                "<head><title>t</title></hea".to_owned(),
            ),
            ("<head><title>t</ti", "<head><title>t</ti".to_owned()),
            ("no markup at all", "no markup at all".to_owned()),
            // An empty template in SVG has no end tag; the page goes on.
            (
                "<head><template><svg><template/></svg></template></head><body>x</body>",
                format!(
                    "<head><template><svg><template/></svg></template>{S}</head><body>x</body>"
                ),
            ),
            (
                "<html><svg><template/></svg><head></head><body>x</body></html>",
                format!("<html><svg><template/></svg><head>{S}</head><body>x</body></html>"),
            ),
        ];
        for (page, expected) in cases {
            assert_eq!(rewrite_in_chunks(page.as_bytes(), &[]), expected, "{page}");
        }
    }

    #[test]
    fn compressed_pages_are_decoded_rewritten_and_encoded_again() {
        use std::io::Write;
        let page = format!(
            "<html><head></head><body>{}</body></html>",
            "<p>tide</p>".repeat(5000)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(page.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let chunks: Vec<Bytes> = gz.chunks(777).map(Bytes::copy_from_slice).collect();
        let plain = run(chunks.clone(), Coding::Gzip, Coding::Identity).unwrap();
        let expected = page.replacen("</head>", &format!("{S}</head>"), 1);
        assert_eq!(String::from_utf8(plain).unwrap(), expected);
        let br = run(chunks, Coding::Gzip, Coding::Br).unwrap();
        let mut decoded = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), expected);
        // A bomb is cut off at the cap.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(b"<html><head>").unwrap();
        bomb.write_all(&vec![b' '; 8 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(run(vec![Bytes::from(bomb)], Coding::Gzip, Coding::Identity).is_err());
    }
}
