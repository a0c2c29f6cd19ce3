//! The admin page at `/admin`: one HTML page, its script and its styles,
//! embedded in the binary (nothing is fetched from elsewhere). It signs in
//! with an API key and speaks the v1 API like any client, so it can do
//! exactly what the key may do; the page itself is public, as `/docs` is.

use poem::http::{header, StatusCode};
use poem::{Endpoint, Response};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/admin.js");
const STYLES: &str = include_str!("ui/admin.css");

/// The paths the page is served at.
pub const PATHS: [&str; 4] = ["/admin", "/admin/", "/admin/admin.js", "/admin/admin.css"];

/// Scripts and styles from this server only, no framing (clickjacking),
/// requests to this server only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type(content_type)
        .header(header::CONTENT_SECURITY_POLICY, POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

/// The page's HTML (at `/admin` and `/admin/`).
pub fn page() -> impl Endpoint<Output = Response> {
    poem::get(poem::endpoint::make_sync(|_| asset("text/html; charset=utf-8", PAGE)))
}

pub fn script() -> impl Endpoint<Output = Response> {
    poem::get(poem::endpoint::make_sync(|_| {
        asset("text/javascript; charset=utf-8", SCRIPT)
    }))
}

pub fn styles() -> impl Endpoint<Output = Response> {
    poem::get(poem::endpoint::make_sync(|_| asset("text/css; charset=utf-8", STYLES)))
}
