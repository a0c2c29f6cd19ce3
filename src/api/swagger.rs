//! Swagger UI at `/docs`: poem-openapi's page, built once and served from
//! shared bytes, under a content security policy as strict as the admin
//! page's. The page carries its script inline, so the policy names each
//! inline script by its hash instead of allowing inline scripts at large.

use base64::Engine as _;
use bytes::Bytes;
use poem::http::{header, StatusCode};
use poem::{Endpoint, Response};
use sha2::{Digest, Sha256};

/// The page and the policy that goes with it. Cheap to clone.
#[derive(Clone)]
pub struct DocsPage {
    html: Bytes,
    policy: poem::http::HeaderValue,
}

impl DocsPage {
    pub fn new(html: String) -> Self {
        let policy = policy(&html);
        let policy = poem::http::HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| poem::http::HeaderValue::from_static("default-src 'none'"));
        Self {
            html: Bytes::from(html),
            policy,
        }
    }

    pub fn endpoint(&self) -> impl Endpoint<Output = Response> {
        let page = self.clone();
        poem::get(poem::endpoint::make_sync(move |_| page.response()))
    }

    fn response(&self) -> Response {
        Response::builder()
            .status(StatusCode::OK)
            .content_type("text/html; charset=utf-8")
            .header(header::CONTENT_SECURITY_POLICY, self.policy.clone())
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::X_FRAME_OPTIONS, "DENY")
            .header(header::REFERRER_POLICY, "no-referrer")
            .body(self.html.clone())
    }
}

/// Scripts: the page's own inline ones, by hash. Styles inline (Swagger UI
/// sets them as it renders), images from here or data URLs, requests to
/// this server only, no framing, no forms elsewhere.
fn policy(html: &str) -> String {
    let hashes: Vec<String> = inline_scripts(html)
        .map(|script| {
            let digest = Sha256::digest(script.as_bytes());
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        })
        .collect();
    format!(
        "default-src 'none'; script-src {}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        hashes.join(" ")
    )
}

/// The text of each `<script>` element with no `src`.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    let mut rest = html;
    std::iter::from_fn(move || loop {
        let start = rest.find("<script")?;
        let open_end = start + rest[start..].find('>')?;
        let tag = &rest[start..open_end];
        let body_start = open_end + 1;
        let body_end = body_start + rest[body_start..].find("</script>")?;
        let body = &rest[body_start..body_end];
        rest = &rest[body_end + "</script>".len()..];
        if !tag.contains(" src=") {
            return Some(body);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inline_script_is_hashed_and_no_other_is() {
        let html = "<head><script charset=\"UTF-8\">one()</script><script src=\"x.js\"></script></head>\
                    <body><script>\n two() \n</script></body>";
        let scripts: Vec<&str> = inline_scripts(html).collect();
        assert_eq!(scripts, ["one()", "\n two() \n"]);
        let policy = policy(html);
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"one()"));
        assert!(policy.contains(&format!("'sha256-{expected}'")), "{policy}");
        assert!(!policy.contains("unsafe-eval") && !policy.contains("script-src 'unsafe-inline'"));
        assert!(policy.contains("frame-ancestors 'none'"));
    }
}
