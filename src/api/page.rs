//! `GET /`: the status page, one HTML file with its script inline (no build step, no external
//! asset, so it works offline). The page itself holds nothing secret and is served without the
//! token; everything it shows it fetches from the API with the token, which it takes from the
//! link `meshsync open` prints (`#token=…`, a fragment the browser never sends) or asks for, and
//! keeps only in the tab's session storage.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::ApiState;

const PAGE: &str = include_str!("page.html");

/// What the page may do: run its own inline script and style, talk to the API it came from,
/// nothing else (no other origin, no frames around it).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; form-action 'none'";

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
