//! Connection hygiene, against the real server on 127.0.0.1: clients that dribble a request
//! header are closed at the header-read timeout while ordinary requests keep being answered, and
//! a flood of connections cannot push the server past its connection limit.
//!
//! Every loop is bounded in count and time; no assertion is about timing.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use blipserve_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

fn frame() -> Vec<u8> {
    jpeg(&synthetic_frame(160, 120, 5), 90, Subsamp::Sub2x2)
}

fn detect_ok(server: &Server, image: &[u8]) -> bool {
    client()
        .post(server.url("/v1/detect"))
        .multipart(detect_form(image, &["is the dog barking?"], &[]))
        .send()
        .is_ok_and(|r| r.status() == 200)
}

/// Whether the server closed this connection: a read sees the end (or a reset).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // an error answer (408) before the close also ends it
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn clients_dribbling_a_header_are_closed_and_others_are_answered() {
    let server = Server::start(BIN, "tiny", &["--header-read-timeout-ms", "1500", "--max-connections", "1500"]);
    let image = frame();
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut slow: Vec<Option<TcpStream>> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(b"POST /v1/detect HTTP/1.1\r\nHost: blipserve\r\n").expect("half a header");
            s.set_nonblocking(true).expect("nonblocking");
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let mut answered = 0;
    let mut last_dribble = Instant::now();
    // A header line every 400 ms keeps each connection busy; the server must close them anyway.
    while (slow.iter().any(Option::is_some) || answered < 10) && started.elapsed() < Duration::from_secs(30) {
        if last_dribble.elapsed() >= Duration::from_millis(400) {
            for s in slow.iter_mut().flatten() {
                let _ = s.write_all(b"X-Slow: 1\r\n");
            }
            last_dribble = Instant::now();
        }
        for entry in slow.iter_mut() {
            if entry.as_mut().is_some_and(closed_by_server) {
                *entry = None;
            }
        }
        if answered < 10 {
            assert!(detect_ok(&server, &image), "an ordinary request failed while slow clients were open");
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let still_open = slow.iter().filter(|s| s.is_some()).count();
    eprintln!(
        "slow clients: 1000 dribbling connections, {still_open} still open after {:.1} s; {answered} ordinary requests answered",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(still_open, 0, "the server kept connections that never finished their header");
    assert!(answered >= 10);
    assert!(detect_ok(&server, &image));
}

#[test]
fn a_connection_flood_stops_at_the_limit_and_the_server_answers_afterwards() {
    let limit = 200;
    let server =
        Server::start(BIN, "tiny", &["--max-connections", &limit.to_string(), "--header-read-timeout-ms", "60000"]);
    // The server's own sockets: the fewest seen over half a second, since the readiness check's
    // connection may still be closing.
    let baseline = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            server.open_sockets()
        })
        .min()
        .unwrap();
    let addr = server.base.trim_start_matches("http://").to_string();
    // Past the limit: the kernel completes the handshakes of the surplus (listen backlog); the
    // server accepts no more than its limit. A connect the backlog cannot take gives up at once.
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let flood: Vec<TcpStream> =
        (0..limit + 100).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()).collect();
    assert!(flood.len() > limit, "the flood did not get past the limit ({} connections)", flood.len());
    let settled = eventually(Duration::from_secs(10), || server.open_sockets() >= baseline + limit);
    std::thread::sleep(Duration::from_millis(300));
    let open = server.open_sockets();
    eprintln!(
        "connection flood: {} connections made, the server holds {} sockets (limit {limit} + {baseline} of its own)",
        flood.len(),
        open
    );
    assert!(settled, "the server did not accept up to its limit");
    assert!(open <= baseline + limit, "the server holds {open} sockets, over its limit of {limit} (+{baseline})");
    drop(flood);
    let image = frame();
    assert!(eventually(Duration::from_secs(20), || detect_ok(&server, &image)), "no answer after the flood");
    assert!(server.metric("blipserve_connections_total") >= (limit + 1) as f64);
}
