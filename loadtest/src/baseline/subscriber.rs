//! A subscriber connection after its request head: the WebSocket or SSE response head, the
//! subscription, then a loop that only reads what the client sends and finishes writes the
//! kernel did not take at once. Messages are written by the publishers, not by this task.

use std::{io, ops::ControlFlow, sync::Arc};

use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    Shared,
    channels::{Kind, Sub},
    ws::{self, ClientFrames, Control},
};

/// Herald's SSE response head on its direct path (no chunked encoding: the stream ends when
/// the connection closes), and the `retry:` line Herald sends first (its default, 2 s).
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\nretry: 2000\n\n";

/// `GET /v1/ws?channel=`: handshake, `subscribed` frame, then pings and close answered.
/// `early` holds client bytes that arrived with the request head.
pub async fn serve_ws(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    channel: String,
    key: &str,
    early: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        ws::accept_key(key.as_bytes())
    );
    stream.write_all(head.as_bytes()).await?;
    drop(head);
    let sub = Arc::new(Sub::new(stream));
    let ch = shared.registry.channel(&channel);
    let epoch = &shared.epoch;
    ch.subscribe(&sub, Kind::Ws, &shared.stats, |offset| {
        let mut f = Vec::new();
        let body = format!(
            r#"{{"type":"subscribed","channel":"{channel}","offset":{offset},"epoch":"{epoch}","recovered":false}}"#
        );
        ws::frame(&mut f, ws::TEXT, body.as_bytes());
        f
    });
    drop(channel);
    let mut frames = ClientFrames::default();
    let mut on_read = |bytes: &[u8]| {
        let mut flow = ControlFlow::Continue(());
        let fed = frames.feed(bytes, |c| {
            let mut f = Vec::new();
            match c {
                Control::Ping(p) => ws::frame(&mut f, ws::PONG, &p),
                Control::Close(code) => {
                    let code = code.map(u16::to_be_bytes);
                    ws::frame(&mut f, ws::CLOSE, code.as_ref().map_or(&[][..], |c| &c[..]));
                    flow = ControlFlow::Break(());
                }
            }
            sub.send(&f, &shared.stats);
        });
        if fed.is_err() {
            let mut f = Vec::new();
            ws::frame(&mut f, ws::CLOSE, &1002u16.to_be_bytes());
            sub.send(&f, &shared.stats);
            return ControlFlow::Break(());
        }
        flow
    };
    let ended = match on_read(early) {
        ControlFlow::Continue(()) => pump(&sub, &mut on_read).await,
        ControlFlow::Break(()) => Ok(()),
    };
    ch.unsubscribe(&sub, Kind::Ws, &shared.stats);
    // A closing frame the kernel did not take at once: one more try, then the socket closes.
    let _ = sub.flush();
    ended
}

/// `GET /v1/sse?channel=`: the stream head, `herald.subscribed`, then nothing but EOF detection.
pub async fn serve_sse(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    channel: String,
) -> io::Result<()> {
    stream.write_all(SSE_HEAD).await?;
    let sub = Arc::new(Sub::new(stream));
    let ch = shared.registry.channel(&channel);
    let epoch = &shared.epoch;
    ch.subscribe(&sub, Kind::Sse, &shared.stats, |offset| {
        format!(
            "id: {epoch},{offset},{channel}\nevent: herald.subscribed\n\
             data: {{\"channel\":\"{channel}\",\"offset\":{offset},\"epoch\":\"{epoch}\",\"recovered\":false}}\n\n"
        )
        .into_bytes()
    });
    drop(channel);
    // An EventSource sends nothing after its request: whatever comes is ignored.
    let ended = pump(&sub, &mut |_| ControlFlow::Continue(())).await;
    ch.unsubscribe(&sub, Kind::Sse, &shared.stats);
    ended
}

/// Reads the client until it goes away (handing the bytes to `on_read`), and finishes
/// backlogged writes when the socket becomes writable. Only `readable`/`writable`/`notified`
/// are awaited in the `select!`, all cancel-safe; the reads themselves are non-blocking.
async fn pump(sub: &Sub, on_read: &mut impl FnMut(&[u8]) -> ControlFlow<()>) -> io::Result<()> {
    loop {
        let backlog = sub.backlogged();
        tokio::select! {
            r = sub.stream.readable() => {
                r?;
                // Scoped to this arm: not part of the task's state between wake-ups.
                let mut buf = [0u8; 512];
                match sub.stream.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        if on_read(&buf[..n]).is_break() {
                            return Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            r = sub.stream.writable(), if backlog => {
                r?;
                sub.flush()?;
            }
            () = sub.wake.notified(), if !backlog => {
                if sub.is_closed() {
                    return Ok(());
                }
            }
        }
    }
}
