//! Cross-origin requests (CORS), when `EXDAAS_CORS_ORIGINS` names origins:
//! poem's `Cors` answers them, and refuses (403) a request whose `Origin`
//! it was not told of. A browser sends `Origin` on its own page's writes
//! too (a POST from the admin page served here), and those are not
//! cross-origin: they pass straight through, untouched by CORS.

use std::sync::Arc;

use poem::http::header::{HOST, ORIGIN};
use poem::middleware::{Cors, CorsEndpoint};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// `Cors`, with a same-origin request left out of it.
pub struct CrossOrigin {
    cors: Cors,
}

impl CrossOrigin {
    pub fn new(cors: Cors) -> Self {
        Self { cors }
    }
}

impl<E: Endpoint> Middleware<E> for CrossOrigin {
    type Output = CrossOriginEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        let ep = Arc::new(ep);
        CrossOriginEndpoint {
            cors: self.cors.transform(ep.clone()),
            same_origin: ep,
        }
    }
}

pub struct CrossOriginEndpoint<E> {
    cors: CorsEndpoint<Arc<E>>,
    same_origin: Arc<E>,
}

impl<E: Endpoint> Endpoint for CrossOriginEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if is_same_origin(&req) {
            self.same_origin.call(req).await.map(IntoResponse::into_response)
        } else {
            self.cors.call(req).await.map(IntoResponse::into_response)
        }
    }
}

/// The browser says the request comes from a page of this server: its
/// `Sec-Fetch-Site` (which no page can set) says `same-origin`, or, from a
/// browser that does not send that, its `Origin` names the host and port
/// the request was sent to.
fn is_same_origin(req: &Request) -> bool {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    // A browser that sends it says where the request comes from.
    if let Some(site) = header("sec-fetch-site") {
        return site.eq_ignore_ascii_case("same-origin");
    }
    let Some(origin) = header(ORIGIN.as_str()) else {
        return false;
    };
    let Some(host) = header(HOST.as_str()).or_else(|| req.uri().authority().map(|a| a.as_str())) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    match (
        host_and_port(authority, default_port),
        host_and_port(host, default_port),
    ) {
        (Some((origin_host, origin_port)), Some((host, port))) => {
            origin_host.eq_ignore_ascii_case(host) && origin_port == port
        }
        _ => false,
    }
}

/// `host[:port]` (`[v6]:port` too) as its host and port.
fn host_and_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, default_port),
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri_str("/v1/collections");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.finish()
    }

    #[test]
    fn a_page_of_this_server_is_same_origin() {
        for headers in [
            &[("origin", "http://127.0.0.1:4000"), ("host", "127.0.0.1:4000")][..],
            &[("origin", "https://db.example.com"), ("host", "DB.example.com:443")],
            &[("origin", "http://[::1]:4000"), ("host", "[::1]:4000")],
            &[
                ("origin", "https://db.example.com"),
                ("host", "internal:4000"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            assert!(is_same_origin(&request(headers)), "{headers:?}");
        }
    }

    #[test]
    fn another_origin_is_not() {
        for headers in [
            &[("origin", "https://evil.example"), ("host", "127.0.0.1:4000")][..],
            &[("origin", "http://127.0.0.1:4001"), ("host", "127.0.0.1:4000")],
            &[("origin", "https://127.0.0.1:4000"), ("host", "127.0.0.1")],
            &[("origin", "null"), ("host", "127.0.0.1:4000")],
            &[
                ("origin", "http://db.example.com"),
                ("host", "db.example.com"),
                ("sec-fetch-site", "cross-site"),
            ],
            &[("host", "127.0.0.1:4000")],
        ] {
            assert!(!is_same_origin(&request(headers)), "{headers:?}");
        }
    }
}
