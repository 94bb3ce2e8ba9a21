//! The rewrite phase: puts the chat widget into HTML pages on their way to
//! the visitor, streaming (the page is never buffered whole).
//!
//! `rewritable` decides, from the response head alone, whether a response may
//! be touched: a `200 text/html` in an ASCII-compatible charset, not
//! compressed, not a range, not for `HEAD`. Everything else passes through
//! byte for byte. `snippet` builds the HTML that is inserted: the settings
//! script (`window.hsConversationsSettings`) and the provider's loader, with
//! every value JSON-encoded and escaped so no member name can end the script.

mod body;
pub mod codec;
pub mod csp;

use std::fmt::Write;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

pub use body::InjectBody;
pub use codec::Coding;

use crate::config::{Chat, ChatProvider, WidgetLoader};
use crate::hygiene::headers::{add_vary, mark_private};
use crate::proxy::body::GatewayBody;

/// Sets the widget's settings (the JSON object that follows) over whatever
/// the page has set, and keeps them set: a page whose own script assigns
/// `window.hsConversationsSettings = {...}` after ours (HubSpot's embed
/// code, before its loader, does) gets them merged into its object instead
/// of losing the member's identification (a copy of it, when the page froze
/// its object). A page that declared the name
/// with `var` before us has a property we cannot redefine; ours then runs
/// after its assignment, and a plain merge is enough.
pub const SETTINGS_SCRIPT_OPEN: &str = "(function(s){function m(n){try{return Object.assign(n||{},s)}catch(e){return Object.assign({},n,s)}}var v=m(window.hsConversationsSettings);try{Object.defineProperty(window,\"hsConversationsSettings\",{configurable:true,enumerable:true,get:function(){return v},set:function(n){v=m(n)}})}catch(e){window.hsConversationsSettings=v}})(";

/// Clears the widget's cookies and conversation once it is ready; then the
/// statement that clears the chat-reset cookie, and [`RESET_SCRIPT_CLOSE`].
/// The cookie goes only once the widget really reset: a page left before
/// its widget loaded, or one without the widget, leaves the reset pending.
const RESET_SCRIPT_OPEN: &str = "window.hsConversationsOnReady=(window.hsConversationsOnReady||[]).concat([function(){window.HubSpotConversations.clear({resetWidget:true});";
const RESET_SCRIPT_CLOSE: &str = "}]);";

/// A response that may be rewritten: its charset and content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritable {
    /// The charset the `Content-Type` names; `None` when it names none, and
    /// the page's own `<meta>` decides (as in browsers).
    pub charset: Option<&'static encoding_rs::Encoding>,
    pub coding: Coding,
}

/// Whether a response may be rewritten, from its head alone.
pub fn rewritable(method: &Method, status: StatusCode, headers: &HeaderMap) -> Option<Rewritable> {
    if method == Method::HEAD
        || status != StatusCode::OK
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return None;
    }
    let mut codings = headers.get_all(header::CONTENT_ENCODING).iter();
    let coding = match (codings.next(), codings.next()) {
        (None, _) => Coding::Identity,
        (Some(value), None) => Coding::from_header(value.to_str().ok()?)?,
        (Some(_), Some(_)) => return None,
    };
    // The origin forbids intermediaries to change the content (RFC 9110,
    // 7.7), or its policy allows no script at all: adding a hash to
    // `script-src 'none'` would switch the 'none' off.
    if has_no_transform(headers) || csp::forbids_scripts(headers) {
        return None;
    }
    // A page sent to be saved, not shown: the file must be the origin's.
    if headers
        .get(header::CONTENT_DISPOSITION)
        .is_some_and(|value| !is_inline(value.as_bytes()))
    {
        return None;
    }
    // Of two types, browsers go by the last one they can read: the page may
    // well be a download there.
    let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(content_type), None) = (content_types.next(), content_types.next()) else {
        return None;
    };
    let content_type = content_type.to_str().ok()?;
    if !content_type
        .split(';')
        .next()?
        .trim()
        .eq_ignore_ascii_case("text/html")
    {
        return None;
    }
    let charset = match charset_parameter(content_type) {
        None => None,
        Some(label) => Some(ascii_compatible(label.trim_matches('"').as_bytes())?),
    };
    Some(Rewritable { charset, coding })
}

/// Whether a `Content-Disposition` says the page is to be shown. Read as
/// bytes: a file name in raw UTF-8 is common (and browsers read it), and it
/// is still a download. Any type but `inline` is one too, as in browsers
/// (RFC 6266, 4.2: an unknown type is handled as `attachment`).
fn is_inline(disposition: &[u8]) -> bool {
    let kind = disposition.split(|&b| b == b';').next().unwrap_or_default();
    kind.trim_ascii().eq_ignore_ascii_case(b"inline")
}

/// The `charset` parameter of a media type (`text/html; charset=utf-8`), as
/// written, without surrounding whitespace: from a `Content-Type` header or
/// a `<meta http-equiv>`'s content.
fn charset_parameter(media_type: &str) -> Option<&str> {
    media_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim())
}

/// The encoding a charset label names, when the snippet (ASCII) can be
/// written in it unchanged; `None` for unknown labels too.
fn ascii_compatible(label: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    // The usual label, without the general lookup.
    if label.eq_ignore_ascii_case(b"utf-8") {
        return Some(encoding_rs::UTF_8);
    }
    let encoding = encoding_rs::Encoding::for_label(label)?;
    lol_html::AsciiCompatibleEncoding::new(encoding).map(|_| encoding)
}

/// `Cache-Control: no-transform` in any of the response's fields.
fn has_no_transform(headers: &HeaderMap) -> bool {
    crate::hygiene::headers::lists_token(headers, header::CACHE_CONTROL, "no-transform")
}

/// Wraps a rewritable response so the snippet is inserted before `</head>` (or
/// at the start of `<body>` when there is no head), sent in `to` (the
/// client's best accepted coding), and fixes the headers a rewritten body
/// invalidates. `max_decoded` caps a compressed page's decoded size.
pub fn rewrite(
    response: Response<GatewayBody>,
    page: Rewritable,
    snippet: Snippet,
    personalised: bool,
    to: Coding,
    max_decoded: usize,
) -> Response<GatewayBody> {
    let (mut parts, inner) = response.into_parts();
    let body = InjectBody::new(inner, page.charset, snippet, page.coding, to, max_decoded);
    let body = match body {
        Ok(body) => body,
        Err((inner, e)) => {
            // The page goes out as the origin sent it.
            tracing::error!(error = %e, "cannot rewrite this page");
            return Response::from_parts(parts, inner);
        }
    };
    fix_headers(&mut parts.headers, personalised, to);
    Response::from_parts(
        parts,
        GatewayBody::Injected {
            inner: Box::pin(body),
        },
    )
}

/// Headers that carry a digest of the body.
const DIGESTS: [HeaderName; 4] = [
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("digest"),
    HeaderName::from_static("content-md5"),
];

/// The header edits a rewritten page needs, for its GET or its HEAD: no
/// length or coding of the origin's, the client's coding, `Vary`, a weak
/// ETag (none on a personalised page), and private caching when personalised.
pub fn fix_headers(headers: &mut HeaderMap, personalised: bool, to: Coding) {
    headers.remove(header::CONTENT_LENGTH);
    // A range of these bytes cannot be had: a range request is passed to the
    // origin, whose bytes differ, and a resumed download would mix the two.
    headers.remove(header::ACCEPT_RANGES);
    // Digests of the origin's bytes (RFC 9530, RFC 3230, RFC 1864) would not
    // match these: a client that checks them would refuse the page.
    for digest in &DIGESTS {
        headers.remove(digest);
    }
    headers.remove(header::CONTENT_ENCODING);
    if to != Coding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(to.as_str()),
        );
    }
    add_vary(headers, "Accept-Encoding");
    // The bytes change: a strong validator would lie; a weak one still lets
    // the origin answer 304 for an unchanged page. A personalised page has
    // none: it is `no-store`, so there is no copy a validator could keep
    // fresh, and the origin's validator describes the page before we added
    // who the visitor is.
    if personalised {
        headers.remove(header::ETAG);
    } else if let Some(etag) = headers.get(header::ETAG).cloned()
        && !etag.as_bytes().starts_with(b"W/")
    {
        match HeaderValue::from_bytes(&[b"W/".as_slice(), etag.as_bytes()].concat()) {
            Ok(weak) => headers.insert(header::ETAG, weak),
            Err(_) => headers.remove(header::ETAG),
        };
    }
    // What the widget is told depends on who asks.
    add_vary(headers, "Cookie");
    if personalised {
        mark_private(headers);
    }
}

/// What is inserted into a page.
pub struct Snippet {
    /// Empty when there is nothing to insert (no settings, and the page
    /// loads the widget itself).
    pub html: String,
    /// Where the text of the inline settings script lies in `html`.
    inline_script: Option<std::ops::Range<usize>>,
    /// The snippet has the provider's loader, so a page that loads the
    /// widget itself must not get it.
    pub loads_widget: bool,
    /// The nonce on the snippet's scripts (the response's policy's), so a
    /// policy in the page that knows it needs no hash.
    nonce: Option<String>,
}

impl Snippet {
    /// The text of the inline settings script, for a CSP hash.
    pub fn inline_script(&self) -> Option<&str> {
        self.html.get(self.inline_script.clone()?)
    }
}

/// The HTML inserted into a page: the settings (when there are any) and the
/// provider's loader. `identified` is `(email, token)`.
/// With `reset` (the statement that clears the logout's cookie), the widget
/// is told to forget its visitor and conversation once it is ready.
pub fn snippet(
    chat: &Chat,
    identified: Option<(&str, &str)>,
    nonce: Option<&str>,
    reset: Option<&str>,
) -> Snippet {
    // Appended piece by piece, straight into one string sized for it: this
    // runs for every page with the widget. The `data-membergate` attribute
    // marks our tags, so a page is never injected twice (see `body`'s
    // selectors).
    let push_nonce = |out: &mut String| {
        if let Some(nonce) = nonce {
            out.push_str(" nonce=\"");
            push_attribute(out, nonce);
            out.push('"');
        }
    };
    let values = identified.map_or(0, |(email, token)| email.len() + token.len());
    let mut html = String::with_capacity(512 + values);
    // The settings script, taken out again when it would set nothing.
    html.push_str("<script data-membergate=\"settings\"");
    push_nonce(&mut html);
    html.push('>');
    let script_start = html.len();
    html.push_str(SETTINGS_SCRIPT_OPEN);
    let has_settings = push_settings(&mut html, chat, identified);
    html.push_str(");");
    if let Some(clearing) = reset {
        html.push_str(RESET_SCRIPT_OPEN);
        html.push_str(clearing);
        html.push_str(RESET_SCRIPT_CLOSE);
    }
    let inline_script = if has_settings || reset.is_some() {
        let script = script_start..html.len();
        html.push_str("</script>");
        Some(script)
    } else {
        html.clear();
        None
    };
    let loads_widget = chat.loader == WidgetLoader::Membergate;
    if loads_widget {
        match &chat.provider {
            ChatProvider::HubSpot { portal_id, .. } => {
                html.push_str("<script data-membergate=\"loader\" type=\"text/javascript\" id=\"hs-script-loader\" async defer src=\"//js.hs-scripts.com/");
                push_attribute(&mut html, portal_id);
                html.push_str(".js\"");
            }
            ChatProvider::Builtin { widget_url } => {
                html.push_str("<script data-membergate=\"loader\" async defer src=\"");
                push_attribute(&mut html, widget_url);
                html.push('"');
            }
        }
        push_nonce(&mut html);
        html.push_str("></script>");
    }
    Snippet {
        html,
        inline_script,
        loads_widget,
        nonce: nonce.map(str::to_owned),
    }
}

/// Appends the widget's settings as a JSON object: the member's email and
/// token when identified, and the site's widget options. Written by hand
/// rather than through serde_json: the fields are few and fixed. Returns
/// whether there was any field to write (else it wrote `{}`).
fn push_settings(out: &mut String, chat: &Chat, identified: Option<(&str, &str)>) -> bool {
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        out.push(if first { '{' } else { ',' });
        first = false;
        push_json_string(out, name);
        out.push(':');
    };
    if let Some((email, token)) = identified {
        field(out, "identificationEmail");
        push_json_string(out, email);
        field(out, "identificationToken");
        push_json_string(out, token);
    }
    if let Some(load) = chat.load_immediately {
        field(out, "loadImmediately");
        out.push_str(if load { "true" } else { "false" });
    }
    if let Some(selector) = &chat.inline_embed_selector {
        field(out, "inlineEmbedSelector");
        push_json_string(out, selector);
    }
    if first {
        out.push('{');
    }
    out.push('}');
    !first
}

/// A byte `push_json_string` writes as it is: printable ASCII but for the
/// quote, the backslash and `<`, `>`, `&`.
fn plain_in_script(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&')
}

/// Whether every byte of `text` is written as it is. Every byte of every
/// email and token goes through this: whole blocks are checked without an
/// early exit, which the compiler turns into vector compares.
fn all_plain_in_script(text: &[u8]) -> bool {
    text.chunks(32).all(|block| {
        block
            .iter()
            .fold(true, |plain, &b| plain & plain_in_script(b))
    })
}

/// Appends `text` as a JSON string that is safe inside a `<script>` element
/// in any ASCII-compatible charset: `<`, `>`, `&`, control characters and
/// every non-ASCII character (U+2028 and U+2029 among them) are written as
/// `\uXXXX` escapes, so no value can close the element or break the script.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    if all_plain_in_script(text.as_bytes()) {
        // The common case (emails, tokens): nothing to escape.
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii() && !c.is_ascii_control() && !matches!(c, '<' | '>' | '&') => {
                out.push(c)
            }
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends `value` escaped for a double-quoted HTML attribute.
fn push_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChatShow;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_plain_html_200s_are_rewritten() {
        let html = [("content-type", "text/html; charset=UTF-8")];
        let get = Method::GET;
        assert!(rewritable(&get, StatusCode::OK, &headers(&html)).is_some());
        assert!(
            rewritable(
                &get,
                StatusCode::OK,
                &headers(&[("content-type", "TEXT/HTML")])
            )
            .is_some()
        );
        assert_eq!(
            rewritable(
                &get,
                StatusCode::OK,
                &headers(&[("content-type", "text/html; charset=iso-8859-1")])
            ),
            Some(Rewritable {
                charset: Some(encoding_rs::WINDOWS_1252),
                coding: Coding::Identity
            })
        );
        let br = [("content-type", "text/html"), ("content-encoding", "br")];
        assert_eq!(
            rewritable(&get, StatusCode::OK, &headers(&br)).map(|r| r.coding),
            Some(Coding::Br)
        );
        for inline in ["inline", "Inline; filename=\"Résumé.html\""] {
            let pairs = [
                ("content-type", "text/html"),
                ("content-disposition", inline),
            ];
            assert!(rewritable(&get, StatusCode::OK, &headers(&pairs)).is_some());
        }
        type Case<'a> = (&'a Method, StatusCode, Vec<(&'a str, &'a str)>);
        let download = |disposition| {
            vec![
                ("content-type", "text/html"),
                ("content-disposition", disposition),
            ]
        };
        let refused: [Case; 13] = [
            (&Method::HEAD, StatusCode::OK, html.to_vec()),
            (&get, StatusCode::PARTIAL_CONTENT, html.to_vec()),
            (&get, StatusCode::NOT_MODIFIED, html.to_vec()),
            (&get, StatusCode::NO_CONTENT, html.to_vec()),
            (
                &get,
                StatusCode::OK,
                vec![("content-type", "application/json")],
            ),
            (
                &get,
                StatusCode::OK,
                vec![
                    ("content-type", "text/html"),
                    ("content-encoding", "compress"),
                ],
            ),
            (
                &get,
                StatusCode::OK,
                vec![("content-type", "text/html; charset=utf-16")],
            ),
            (
                &get,
                StatusCode::OK,
                vec![
                    ("content-type", "text/html"),
                    ("content-range", "bytes 0-1/2"),
                ],
            ),
            (
                &get,
                StatusCode::OK,
                vec![
                    ("content-type", "text/html"),
                    ("content-disposition", "Attachment; filename=\"page.html\""),
                ],
            ),
            // A file name in raw UTF-8, and types browsers take for attachment.
            (
                &get,
                StatusCode::OK,
                download("attachment; filename=\"Résumé été.html\""),
            ),
            (
                &get,
                StatusCode::OK,
                download("attachement; filename=\"page.html\""),
            ),
            (&get, StatusCode::OK, download("; filename=\"page.html\"")),
            (
                &get,
                StatusCode::OK,
                vec![
                    ("content-type", "text/html"),
                    ("content-type", "application/octet-stream"),
                ],
            ),
        ];
        for (method, status, pairs) in refused {
            assert!(
                rewritable(method, status, &headers(&pairs)).is_none(),
                "{method} {status} {pairs:?}"
            );
        }
        assert!(rewritable(&get, StatusCode::OK, &HeaderMap::new()).is_none());
    }

    #[test]
    fn no_value_can_end_the_script() {
        for text in [
            "</script><script>alert(1)</script> & \u{2028}\u{2029} Zoë 😀",
            "quote \" backslash \\ tab \t nul \0 <!-- -->",
            "",
        ] {
            let mut safe = String::new();
            push_json_string(&mut safe, text);
            assert!(safe.is_ascii(), "{safe}");
            assert!(!safe.contains('<') && !safe.contains('>') && !safe.contains('&'));
            assert!(!safe.bytes().any(|b| b.is_ascii_control()));
            let back: String = serde_json::from_str(&safe).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn an_unsafe_character_is_escaped_wherever_it_stands_in_a_long_value() {
        // Tokens run to hundreds of bytes, checked in blocks: put each kind
        // of character that needs escaping at every place in and across them.
        let plain = "a".repeat(100);
        for bad in ['<', '>', '&', '"', '\\', '\u{7f}', '\n', '\u{2028}', 'é'] {
            for at in 0..=plain.len() {
                let mut text = plain.clone();
                text.insert(at, bad);
                let mut safe = String::new();
                push_json_string(&mut safe, &text);
                assert!(
                    !safe.contains(['<', '>', '&'])
                        && safe.is_ascii()
                        && !safe.bytes().any(|b| b.is_ascii_control()),
                    "{bad:?} at {at}: {safe}"
                );
                let back: String = serde_json::from_str(&safe).unwrap();
                assert_eq!(back, text);
            }
        }
        let mut safe = String::new();
        push_json_string(&mut safe, &plain);
        assert_eq!(safe, format!("\"{plain}\""));
    }

    #[test]
    fn snippets_carry_identity_options_and_loader() {
        let chat = Chat {
            provider: ChatProvider::HubSpot {
                portal_id: "123".into(),
                api_base: http::Uri::from_static("https://api.hubapi.com"),
                access_token: "x".into(),
            },
            default: ChatShow::Everyone,
            rules: vec![],
            load_immediately: Some(false),
            inline_embed_selector: None,
            loader: WidgetLoader::Membergate,
        };
        let html = snippet(&chat, Some(("ada@example.com", "tok")), Some("n0nce"), None).html;
        assert!(html.contains("\"identificationEmail\":\"ada@example.com\""));
        assert!(html.contains("\"identificationToken\":\"tok\""));
        assert!(html.contains("\"loadImmediately\":false"));
        assert!(html.contains("src=\"//js.hs-scripts.com/123.js\""));
        assert_eq!(html.matches("nonce=\"n0nce\"").count(), 2);
        let anonymous = Chat {
            load_immediately: None,
            ..chat
        };
        let html = snippet(&anonymous, None, None, None).html;
        assert!(!html.contains("hsConversationsSettings"));
        assert!(html.starts_with("<script data-membergate=\"loader\""));
        let reset = snippet(
            &anonymous,
            None,
            None,
            Some("document.cookie=\"r=;Max-Age=0\";"),
        );
        assert!(
            reset
                .html
                .contains("window.HubSpotConversations.clear({resetWidget:true})")
        );
        assert!(
            reset
                .html
                .contains("({resetWidget:true});document.cookie=\"r=;Max-Age=0\";}]);</script>")
        );
        assert!(!reset.html.contains("identificationEmail"));
        // A page that loads the widget itself gets the settings alone, and
        // nothing for a visitor with no settings.
        let page_loads = Chat {
            loader: WidgetLoader::Page,
            ..anonymous.clone()
        };
        let identified = snippet(&page_loads, Some(("ada@example.com", "tok")), None, None);
        assert!(identified.html.contains("\"identificationToken\":\"tok\""));
        assert!(!identified.html.contains("data-membergate=\"loader\""));
        assert!(!identified.loads_widget);
        assert_eq!(snippet(&page_loads, None, None, None).html, "");
        // The script text for a CSP hash is exactly the settings element's content.
        let script = reset.inline_script().unwrap();
        assert!(script.starts_with(SETTINGS_SCRIPT_OPEN) && script.ends_with(";"));
        assert!(reset.html.starts_with(&format!(
            "<script data-membergate=\"settings\">{script}</script>"
        )));
        assert!(
            snippet(&anonymous, None, None, None)
                .inline_script()
                .is_none()
        );
    }
}
