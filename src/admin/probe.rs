//! `membergate health`: asks a running gateway's admin listener for
//! `/healthz`, for container health checks (the image has no curl). Exit 0
//! when it answers 200 within five seconds, 1 otherwise. Only `admin.listen`
//! is read from the file: the gateway serves on the configuration it loaded,
//! which may be older than the file.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

const WAIT: Duration = Duration::from_secs(5);

pub fn run(config_path: &Path) -> ExitCode {
    let listen = match Config::admin_listen(config_path) {
        Ok(Some(listen)) => listen,
        Ok(None) => {
            eprintln!("the admin listener is off (admin.listen = \"\"): nothing to ask");
            return ExitCode::FAILURE;
        }
        Err(why) => {
            eprintln!("cannot tell where the admin listener is: {why}");
            return ExitCode::FAILURE;
        }
    };
    match healthz(reachable(listen)) {
        Ok(()) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("not healthy: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Where to connect for a listen address: a wildcard one is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn healthz(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("{addr}: no answer ({e})"))?;
    match &head {
        b"HTTP/1.1 200" => Ok(()),
        other => Err(format!(
            "{addr} answered {:?}",
            String::from_utf8_lossy(other)
        )),
    }
}
