//! Serves one file over HTTP on 127.0.0.1 with the download tests' server,
//! for throughput benchmarks of `examples/download.rs` against curl:
//!
//! ```text
//! cargo run --release --example serve_file -- FILE PORT
//! ```
//!
//! The file is at `http://127.0.0.1:PORT/FILE_NAME` until the process is killed.

#[path = "../tests/support/http_server.rs"]
mod http_server;

use std::path::PathBuf;

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [file, port] = arguments.as_slice() else {
        bail!("usage: serve_file FILE PORT");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("invalid port {port:?}"))?;
    let file = PathBuf::from(file);
    let name = file
        .file_name()
        .context("the file has no name")?
        .to_string_lossy()
        .into_owned();
    let server = http_server::HttpServer::start_on(port);
    server.serve_file(&format!("/{name}"), file.clone());
    kbuild::ui::result(server.url(&format!("/{name}")));
    loop {
        std::thread::park();
    }
}
