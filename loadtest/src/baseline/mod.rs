//! `herald-loadtest baseline`: the raw fan-out ceiling of this machine, for `scripts/bench.sh`.
//!
//! The smallest server that speaks enough of Herald's wire API for the `fanout`, `idle` and
//! `publish` scenarios to run against it unchanged: `GET /v1/ws?channel=`, `GET
//! /v1/sse?channel=` and `POST /v1/publish`, with the same frames and events Herald sends. It
//! does what any fan-out server must do and nothing else: one process, no broker, no history,
//! no JSON parsing beyond finding the channel and the data, each message encoded once and
//! written by the publishing task itself to every subscriber socket with non-blocking writes
//! (see [`channels`]). What Herald costs above it is Herald's own overhead.
//!
//! Threads: `--threads N` (global option) runs N single-threaded runtimes, each accepting on
//! its own `SO_REUSEPORT` listener on the same address, so the kernel spreads connections over
//! them and a connection stays on one thread. A publish writes to subscriber sockets of every
//! thread directly (`try_write` takes `&self`); only a backlogged write wakes the socket's own
//! thread.

mod channels;
mod publish;
mod request;
mod subscriber;
mod ws;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering, mpsc},
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpSocket, TcpStream},
};

use channels::{Registry, Stats};
use request::Route;

/// Accept backlog per listener (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
}

/// What every connection of every thread shares.
#[derive(Debug)]
pub struct Shared {
    pub registry: Registry,
    pub stats: Stats,
    /// One epoch for every channel (Herald's are per channel, 16 characters like this one).
    pub epoch: String,
}

/// Runs the server until the process is killed. `threads`: runtimes (default one per CPU).
pub fn run(args: Args, threads: Option<usize>) -> Result<(), String> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let shared = Arc::new(Shared {
        registry: Registry::default(),
        stats: Stats::default(),
        epoch: format!("{:016x}", rand::random::<u64>()),
    });
    // Bind every socket here so port 0 resolves once and all share it.
    let mut sockets = Vec::with_capacity(threads);
    let mut addr = args.listen;
    for _ in 0..threads {
        let s = reuseport_socket(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
        addr = s.local_addr().map_err(|e| e.to_string())?;
        sockets.push(s);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (shared, ready) = (shared.clone(), ready_tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("baseline-{i}"))
            .spawn(move || serve_thread(socket, shared, ready))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a server thread ended before listening".into()),
        }
    }
    // Only now: every listener accepts, so a client that reads this line can connect.
    println!(
        "baseline listening on http://{addr} ({threads} thread{}, epoch {})",
        if threads == 1 { "" } else { "s" },
        shared.epoch
    );
    for h in handles {
        let _ = h.join();
    }
    Err("the server threads ended".into())
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    Ok(s)
}

/// One thread: a current-thread runtime accepting on its own listener.
fn serve_thread(socket: TcpSocket, shared: Arc<Shared>, ready: mpsc::Sender<Result<(), String>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match socket.listen(BACKLOG) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Frames are written whole; Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors: wait for connections to close.
                    eprintln!("baseline: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
}

/// One accepted connection: keep-alive requests until one turns it into a subscriber stream.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&shared.stats);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut encoder: Option<publish::Encoder> = None;
    let mut ack = Vec::new();
    loop {
        let Ok(Some((head_len, route))) = request::read(&mut stream, &mut buf).await else {
            return;
        };
        // Expected disconnects (resets, EOF) end the connection quietly.
        let _ = match route {
            Route::Ws { channel, key } => {
                let early = buf[head_len..].to_vec();
                drop(buf);
                subscriber::serve_ws(stream, shared.clone(), channel, &key, &early).await
            }
            Route::Sse { channel } => {
                drop(buf);
                subscriber::serve_sse(stream, shared.clone(), channel).await
            }
            Route::Reject(r) => stream.write_all(&r.response()).await,
            Route::Publish { body_len } => {
                let total = head_len + body_len;
                if request::read_body(&mut stream, &mut buf, total)
                    .await
                    .is_err()
                {
                    return;
                }
                match publish::scan(&buf[head_len..total]) {
                    Ok(p) => {
                        let enc = encoder.get_or_insert_with(Default::default);
                        enc.publish(&shared, &p, &mut ack);
                        ok_json(&mut out, &ack);
                    }
                    Err(e) => {
                        let _ = stream.write_all(&publish::rejection(e).response()).await;
                        return;
                    }
                }
                buf.drain(..total);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
            Route::Stats | Route::Health => {
                let body = match route {
                    Route::Stats => shared.stats.to_json(),
                    _ => r#"{"status":"ok"}"#.to_owned(),
                };
                ok_json(&mut out, body.as_bytes());
                buf.drain(..head_len);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                continue;
            }
        };
        return;
    }
}

/// A `200` keep-alive response with a JSON body, in `out`.
fn ok_json(out: &mut Vec<u8>, body: &[u8]) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

struct OpenGuard<'a>(&'a Stats);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
