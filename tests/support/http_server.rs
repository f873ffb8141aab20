//! A small HTTP/1.1 file server on 127.0.0.1 for download tests.
//!
//! It responds to GET with Content-Length, honours `Range: bytes=N-` with 206 and
//! Content-Range (or 416), and closes each connection after one response.
//! Each path can misbehave on purpose: ignore ranges, cut the connection
//! once, stall once, respond with a fixed status, or serve slowly. Every
//! request is logged with its Range header and the body bytes sent.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where a path's bytes come from.
#[derive(Clone)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File(path) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        }
    }
}

/// Ways a path can misbehave. One-shot faults apply to the next request only.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Respond to every request with 200 and the whole body, ignoring Range.
    pub ignore_range: bool,
    /// Close the connection after this many body bytes, once.
    pub cut_after: Option<u64>,
    /// Send this many body bytes, then go silent for the duration, once.
    pub stall_after: Option<(u64, Duration)>,
    /// Respond to every request with this status and no file.
    pub status: Option<u16>,
    /// Write the body in chunks of this size with a pause after each.
    pub slow: Option<(usize, Duration)>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    pub body_bytes: u64,
}

#[derive(Default)]
struct State {
    bodies: HashMap<String, Body>,
    once: HashMap<String, VecDeque<Body>>,
    behaviours: HashMap<String, Behaviour>,
    log: Vec<Request>,
}

pub struct HttpServer {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts a server on 127.0.0.1 with a free port.
    pub fn start() -> HttpServer {
        HttpServer::start_on(0)
    }

    /// Starts a server on 127.0.0.1 at `port`; 0 picks a free one.
    pub fn start_on(port: u16) -> HttpServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding 127.0.0.1");
        let address = listener.local_addr().expect("reading the server address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, state, stop))
        };
        HttpServer {
            address,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn serve(&self, path: &str, body: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state
            .bodies
            .insert(path.to_string(), Body::Bytes(Arc::new(body)));
    }

    pub fn serve_file(&self, path: &str, file: PathBuf) {
        let mut state = self.state.lock().unwrap();
        state.bodies.insert(path.to_string(), Body::File(file));
    }

    /// Serves `body` for the next request of `path`, then the normal body again.
    pub fn serve_once(&self, path: &str, body: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        let queue = state.once.entry(path.to_string()).or_default();
        queue.push_back(Body::Bytes(Arc::new(body)));
    }

    pub fn behave(&self, path: &str, behaviour: Behaviour) {
        let mut state = self.state.lock().unwrap();
        state.behaviours.insert(path.to_string(), behaviour);
    }

    pub fn log(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.log()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept call so the loop reads the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Returns a URL on 127.0.0.1 where nothing listens, so connecting is refused.
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let address = listener.local_addr().expect("reading the address");
    drop(listener);
    format!("http://{address}/refused.img")
}

fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &state);
        });
    }
}

struct Head {
    path: String,
    range: Option<String>,
}

fn read_head(stream: &TcpStream) -> std::io::Result<Head> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    Ok(Head { path, range })
}

/// What to send for one request, decided under the state lock.
struct Reply {
    status: u16,
    body: Option<Body>,
    start: u64,
    total: u64,
    cut_after: Option<u64>,
    stall_after: Option<(u64, Duration)>,
    slow: Option<(usize, Duration)>,
}

fn plan(state: &Mutex<State>, head: &Head) -> Reply {
    let mut state = state.lock().unwrap();
    let behaviour = state
        .behaviours
        .get(&head.path)
        .cloned()
        .unwrap_or_default();
    let once = state.once.get_mut(&head.path).and_then(VecDeque::pop_front);
    let body = once.or_else(|| state.bodies.get(&head.path).cloned());

    // One-shot faults apply to this request only.
    if let Some(entry) = state.behaviours.get_mut(&head.path) {
        entry.cut_after = None;
        entry.stall_after = None;
    }

    let mut reply = Reply {
        status: 404,
        body: None,
        start: 0,
        total: 0,
        cut_after: behaviour.cut_after,
        stall_after: behaviour.stall_after,
        slow: behaviour.slow,
    };
    if let Some(status) = behaviour.status {
        reply.status = status;
        return reply;
    }
    let Some(body) = body else { return reply };

    reply.total = body.len();
    reply.status = 200;
    let start = head
        .range
        .as_deref()
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<u64>().ok());
    if let (Some(start), false) = (start, behaviour.ignore_range) {
        reply.status = if start < reply.total { 206 } else { 416 };
        reply.start = start;
    }
    reply.body = Some(body);
    reply
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let head = read_head(&stream)?;
    let reply = plan(state, &head);
    let index = {
        let mut locked = state.lock().unwrap();
        locked.log.push(Request {
            path: head.path,
            range: head.range,
            status: reply.status,
            body_bytes: 0,
        });
        locked.log.len() - 1
    };
    let mut sent = Sent {
        state,
        index,
        bytes: 0,
    };
    let result = write_reply(&mut stream, &reply, &mut sent);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    result
}

/// Body bytes of one logged request. They are counted before each write, so
/// a client that has received them always finds them in the log.
struct Sent<'a> {
    state: &'a Mutex<State>,
    index: usize,
    bytes: u64,
}

impl Sent<'_> {
    fn add(&mut self, count: u64) {
        self.bytes += count;
        if let Some(request) = self.state.lock().unwrap().log.get_mut(self.index) {
            request.body_bytes = self.bytes;
        }
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, sent: &mut Sent) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let Some(body) = &reply.body else {
        let text = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            reply.status
        );
        return stream.write_all(text.as_bytes());
    };
    if reply.status == 416 {
        let text = format!(
            "HTTP/1.1 416 {reason}\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            reply.total
        );
        return stream.write_all(text.as_bytes());
    }
    let length = reply.total - reply.start;
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {length}\r\nConnection: close\r\n",
        reply.status
    );
    if reply.status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {}-{}/{}\r\n",
            reply.start,
            reply.total - 1,
            reply.total
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    write_body(stream, body, reply, length, sent)
}

fn write_body(
    stream: &mut TcpStream,
    body: &Body,
    reply: &Reply,
    length: u64,
    sent: &mut Sent,
) -> std::io::Result<()> {
    let mut file = match body {
        Body::File(path) => {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(reply.start))?;
            Some(file)
        }
        Body::Bytes(_) => None,
    };
    let limit = reply.cut_after.map_or(length, |cut| cut.min(length));
    let chunk_size = reply.slow.map_or(256 * 1024, |(size, _)| size);
    let mut buffer = vec![0u8; chunk_size];
    let mut stall = reply.stall_after;
    while sent.bytes < limit {
        let mut want = buffer.len().min((limit - sent.bytes) as usize);
        if let Some((after, _)) = stall {
            want = want.min(after.saturating_sub(sent.bytes).max(1) as usize);
        }
        let count = match (&mut file, body) {
            (Some(file), _) => file.read(&mut buffer[..want])?,
            (None, Body::Bytes(bytes)) => {
                let from = (reply.start + sent.bytes) as usize;
                buffer[..want].copy_from_slice(&bytes[from..from + want]);
                want
            }
            (None, Body::File(_)) => 0,
        };
        if count == 0 {
            break;
        }
        sent.add(count as u64);
        stream.write_all(&buffer[..count])?;
        if let Some((after, pause)) = stall {
            if sent.bytes >= after {
                stall = None;
                stream.flush()?;
                std::thread::sleep(pause);
            }
        }
        if let Some((_, pause)) = reply.slow {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}
