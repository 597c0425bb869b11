//! The HTTP/1 server under every stand-in: an ephemeral port of 127.0.0.1 (tests never send
//! traffic elsewhere), each connection on its own task, every request answered by `handle`,
//! and the accept loop stopped when the server is dropped.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;

pub struct LoopbackServer {
    pub addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl LoopbackServer {
    /// Binds 127.0.0.1:0 and serves until dropped. `handle` is cloned per request, so it
    /// should hold its state behind `Arc`s.
    pub async fn start<H, F>(handle: H) -> Self
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let reply = handle(request);
                        async move { Ok::<_, std::convert::Infallible>(reply.await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // A client hanging up mid-request is not the stand-in's failure.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { addr, accept_loop }
    }
}
