//! A few numbers from a Redis server's `INFO`, over a plain TCP connection (RESP by hand: one
//! inline command, one bulk reply), so a scenario can report what it cost Redis.

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// What Redis has done so far (monotonic counters).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Every command executed, those run by scripts included.
    pub commands: u64,
    /// Script calls (`EVALSHA` and `EVAL`): round trips of Herald's scripts.
    pub scripts: u64,
    /// `used_cpu_user + used_cpu_sys`, seconds.
    pub cpu_s: f64,
}

/// `host:port` of a `redis://host:port[/db]` URL.
fn address(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: expected redis://host:port"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    Ok(rest.split('/').next().unwrap_or(rest))
}

async fn info(stream: &mut BufReader<TcpStream>, section: &str) -> Result<String, String> {
    stream
        .get_mut()
        .write_all(format!("INFO {section}\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = String::new();
    stream
        .read_line(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let len: usize = head
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected INFO reply {head:?}"))?;
    let mut body = vec![0; len + 2];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body[..len]).into_owned())
}

/// Reads the counters of the Redis at `url`.
pub async fn read(url: &str) -> Result<Counters, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address(url)?))
        .await
        .map_err(|_| "redis: connect timed out".to_owned())?
        .map_err(|e| format!("redis: {e}"))?;
    let mut stream = BufReader::new(stream);
    let mut c = Counters::default();
    for line in info(&mut stream, "commandstats").await?.lines() {
        let Some((name, stats)) = line.split_once(':') else {
            continue;
        };
        let calls: u64 = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        c.commands += calls;
        if name == "cmdstat_evalsha" || name == "cmdstat_eval" {
            c.scripts += calls;
        }
    }
    for line in info(&mut stream, "cpu").await?.lines() {
        if let Some((k, v)) = line.split_once(':')
            && (k == "used_cpu_user" || k == "used_cpu_sys")
        {
            c.cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(c)
}

/// Waits until Redis has executed no script for `quiet` (work queued on the nodes has reached
/// it), at most `limit`; returns the counters then.
pub async fn quiescent(url: &str, quiet: Duration, limit: Duration) -> Result<Counters, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = read(url).await?;
    loop {
        tokio::time::sleep(quiet).await;
        let now = read(url).await?;
        if now.scripts == last.scripts || tokio::time::Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_urls() {
        assert_eq!(address("redis://127.0.0.1:6380"), Ok("127.0.0.1:6380"));
        assert_eq!(address("redis://u:p@h:1/2"), Ok("h:1"));
        assert!(address("http://x").is_err());
    }
}
