//! Bare poem server: exists only as the baseline for `scripts/bench.sh`.
//!
//! It does the least a realistic JSON handler does (routing, JSON parsing and
//! serialization, no storage), so the benchmark can show how much of exdaas'
//! cost is the web stack itself and how much is the database behind it.
//!
//! Listens on `127.0.0.1:$PORT` (default 4100):
//! - `GET /api` answers `{"id":1,"data":{"color":"blue"}}`;
//! - `POST /api` parses the JSON body and echoes it back.

use std::io;

use poem::{get, handler, listener::TcpListener, web::Json, Route, Server};
use serde_json::{json, Value};

#[handler]
fn read() -> Json<Value> {
    Json(json!({"id": 1, "data": {"color": "blue"}}))
}

#[handler]
fn echo(Json(body): Json<Value>) -> Json<Value> {
    Json(body)
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("PORT={p}: {e}")))?,
        Err(_) => 4100,
    };
    let app = Route::new().at("/api", get(read).post(echo));
    Server::new(TcpListener::bind(("127.0.0.1", port))).run(app).await
}
