//! The demo page (`/`) and its assets (`/assets/…`): the built files of `clients/demo`, committed under
//! `gateway/static/demo/` and compiled into the binary (release builds), so no Node runs at run time.

use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/demo/"]
struct DemoFiles;

/// Serves one embedded file, with an ETag from its hash (`If-None-Match` gets 304): the asset names do
/// not change between builds, so browsers revalidate instead of caching blindly.
fn serve(req: &HttpRequest, path: &str) -> HttpResponse {
    let Some(file) = DemoFiles::get(path) else {
        return HttpResponse::NotFound().body("not found");
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if fresh {
        return response.finish();
    }
    response
        .content_type(file.metadata.mimetype())
        .body(file.data.into_owned())
}

#[get("/")]
pub async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html")
}

#[get("/assets/{file:.+}")]
pub async fn asset(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    serve(&req, &format!("assets/{}", file.into_inner()))
}
