//! An OTLP/HTTP metrics receiver for tests: it keeps every export request's body.

use std::sync::{Arc, Mutex};

/// The export requests received, as protobuf bodies.
pub type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

/// An OTLP/HTTP receiver on a free port; returns its endpoint.
pub async fn http_receiver(bodies: Bodies) -> String {
    let receiver = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = Arc::clone(&bodies);
            async move {
                store.lock().expect("lock").push(body.to_vec());
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    format!("http://127.0.0.1:{port}")
}
