//! A small browser for the tests: keeps cookies from `Set-Cookie`, sends them
//! back, submits forms with their CSRF token and our own `Origin`, and never
//! follows redirects by itself.

use std::collections::BTreeMap;

use super::Gateway;

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The value of the hidden `csrf` field of the page's form.
    pub fn csrf(&self) -> String {
        self.field("csrf")
    }

    /// The value of the form field `name` on the page, unescaped.
    pub fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end]
            .replace("&#x2f;", "/")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

pub struct Browser {
    client: reqwest::Client,
    base: String,
    pub origin: String,
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(gw: &Gateway) -> Browser {
        Browser::with_client(gw, gw.client())
    }

    /// A browser on its own client (from `gw.client_builder()`), for example
    /// one bound to another loopback address.
    pub fn with_client(gw: &Gateway, client: reqwest::Client) -> Browser {
        let base = gw.https_url("");
        Browser {
            client,
            origin: base.clone(),
            base,
            cookies: BTreeMap::new(),
        }
    }

    /// A browser on an https page whose requests reach the gateway's plain
    /// listener, as through a TLS-terminating ingress in front of a sidecar.
    pub fn behind_ingress(gw: &Gateway) -> Browser {
        let base = gw.http_url("");
        Browser {
            client: gw.client(),
            origin: base.replacen("http://", "https://", 1),
            base,
            cookies: BTreeMap::new(),
        }
    }

    pub fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    async fn finish(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removal = text.to_ascii_lowercase().contains("max-age=0");
            if removal || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let body = response.text().await.unwrap_or_default();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = self.cookie_header() {
            request = request.header("cookie", cookie);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        self.finish(response).await
    }

    /// POSTs a form as the page itself would (our Origin, our cookies).
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[("origin", &self.origin.clone())])
            .await
    }

    pub async fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let body = serde_urlencoded_encode(fields);
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = self.cookie_header() {
            request = request.header("cookie", cookie);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        self.finish(response).await
    }

    /// Opens `page`, then submits its form to `action` with `fields` and the page's token.
    pub async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page).await.csrf();
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", &csrf));
        self.post(action, &all).await
    }

    pub async fn register(&mut self, email: &str, password: &str, first: &str, last: &str) -> Page {
        let fields = [
            ("email", email),
            ("password", password),
            ("first_name", first),
            ("last_name", last),
        ];
        self.submit("/_membergate/register", "/_membergate/register", &fields)
            .await
    }

    /// Opens a mailed verification link and presses its button, as a person does.
    pub async fn confirm_address(&mut self, link: &str) -> Page {
        let page = self.get(link).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let fields = ["csrf", "token", "return_to"].map(|name| (name, page.field(name)));
        let fields = fields
            .each_ref()
            .map(|(name, value)| (*name, value.as_str()));
        self.post("/_membergate/verify", &fields).await
    }

    pub async fn login(&mut self, email: &str, password: &str) -> Page {
        self.login_to(email, password, "/").await
    }

    pub async fn login_to(&mut self, email: &str, password: &str, return_to: &str) -> Page {
        let fields = [
            ("email", email),
            ("password", password),
            ("return_to", return_to),
        ];
        self.submit("/_membergate/login", "/_membergate/login", &fields)
            .await
    }

    pub async fn logout(&mut self) -> Page {
        let csrf = self.get("/_membergate/account").await;
        let token = if csrf.status == 200 {
            csrf.csrf()
        } else {
            self.get("/_membergate/login").await.csrf()
        };
        self.post("/_membergate/logout", &[("csrf", &token)]).await
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.cookies.get("__Host-membergate").cloned()
    }
}

fn serde_urlencoded_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
