//! The pages and files the server serves to browsers: GraphiQL at `/`, the dashboard at
//! `/dashboard`, and their scripts and styles under `/assets/`. All of it is compiled
//! into the binary, so nothing is fetched from another host: the pages work offline.
//! A Content-Security-Policy on every page makes the browser hold them to that.

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// What a page may load: only this server's own files and API. GraphiQL sets inline
/// styles, and its stylesheet carries its fonts as `data:` URLs.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; font-src 'self' data:; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Vendored files carry their version in their path, so they never change under it.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The server's own files change with the server: revalidate by ETag.
const REVALIDATE: &str = "no-cache";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    cache_control: &'static str,
    compressed: OnceLock<Vec<u8>>,
    etag: OnceLock<HeaderValue>,
}

macro_rules! asset {
    ($path:literal, $content_type:literal, $cache_control:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $path)),
            cache_control: $cache_control,
            compressed: OnceLock::new(),
            etag: OnceLock::new(),
        }
    };
}

static FILES: [Asset; 8] = [
    asset!(
        "vendor/graphiql-3.8.3/graphiql.min.js",
        "text/javascript; charset=utf-8",
        IMMUTABLE
    ),
    asset!(
        "vendor/graphiql-3.8.3/graphiql.min.css",
        "text/css; charset=utf-8",
        IMMUTABLE
    ),
    asset!(
        "vendor/react-18.3.1/react.production.min.js",
        "text/javascript; charset=utf-8",
        IMMUTABLE
    ),
    asset!(
        "vendor/react-dom-18.3.1/react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        IMMUTABLE
    ),
    asset!(
        "graphiql-page.js",
        "text/javascript; charset=utf-8",
        REVALIDATE
    ),
    asset!("graphiql-page.css", "text/css; charset=utf-8", REVALIDATE),
    asset!("dashboard.js", "text/javascript; charset=utf-8", REVALIDATE),
    asset!("dashboard.css", "text/css; charset=utf-8", REVALIDATE),
];

static GRAPHIQL_PAGE: Asset = asset!("graphiql.html", "text/html; charset=utf-8", REVALIDATE);
static DASHBOARD_PAGE: Asset = asset!("dashboard.html", "text/html; charset=utf-8", REVALIDATE);

impl Asset {
    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body);
            HeaderValue::try_from(format!("\"{}\"", hex::encode(&digest[..12])))
                .expect("hex is a valid header value")
        })
    }

    /// Gzip, made once: the GraphiQL bundle shrinks from 3.5 MB to 0.7 MB.
    fn compressed(&self) -> &[u8] {
        self.compressed.get_or_init(|| {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
            // Writing into a Vec cannot fail.
            let _ = encoder.write_all(self.body);
            encoder.finish().unwrap_or_default()
        })
    }

    fn respond(&'static self, request: &HeaderMap) -> Response {
        let etag = self.etag();
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, etag.clone());
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.content_type.starts_with("text/html") {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        let unchanged = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|value| value == etag);
        if unchanged {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if accepts_gzip(request) {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (headers, self.compressed()).into_response()
        } else {
            (headers, self.body).into_response()
        }
    }
}

fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|parameter| parameter == "q=0")
        })
}

pub async fn graphiql(request: HeaderMap) -> Response {
    GRAPHIQL_PAGE.respond(&request)
}

pub async fn dashboard(request: HeaderMap) -> Response {
    DASHBOARD_PAGE.respond(&request)
}

pub async fn file(Path(path): Path<String>, request: HeaderMap) -> Response {
    match FILES.iter().find(|asset| asset.path == path) {
        Some(asset) => asset.respond(&request),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(!with("gzip;q=0"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_dashboard_names_its_document_by_its_hash() {
        let script = std::str::from_utf8(
            FILES
                .iter()
                .find(|asset| asset.path == "dashboard.js")
                .unwrap()
                .body,
        )
        .unwrap();
        let expected = format!(
            "var DOCUMENT_ID = \"sha256:{}\";",
            crate::documents::sha256_hex(crate::documents::DASHBOARD_DOCUMENT)
        );
        assert!(
            script.contains(&expected),
            "assets/dashboard.js must say {expected} (assets/dashboard.graphql changed)"
        );
    }

    #[test]
    fn pages_load_nothing_from_another_host() {
        for page in [&GRAPHIQL_PAGE, &DASHBOARD_PAGE] {
            let html = std::str::from_utf8(page.body).unwrap();
            let elsewhere: Vec<&str> = html
                .split(['"', '\''])
                .filter(|part| part.contains("://"))
                .collect();
            assert!(
                elsewhere.is_empty(),
                "{} refers to {elsewhere:?}",
                page.path
            );
            for (index, _) in html.match_indices("src=\"") {
                let path = &html[index + 5..];
                let path = &path[..path.find('"').unwrap()];
                let file = path.strip_prefix("/assets/").unwrap_or_else(|| {
                    panic!("{} loads {path}, which is not one of ours", page.path)
                });
                assert!(
                    FILES.iter().any(|asset| asset.path == file),
                    "{} loads {path}, which is not served",
                    page.path
                );
            }
        }
    }
}
