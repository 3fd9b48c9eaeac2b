//! For tests: an SMTP server that follows a script, to check what a client
//! writes before it waits for an answer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// A server for one connection: after its greeting, each step reads
/// `lines` lines, waits `pause_ms`, then writes `reply` (CRLF added); it
/// hands back every line it read. A step whose lines never come fails the
/// test by its read timeout (5 s).
pub fn scripted_server(script: Vec<(usize, u64, &'static str)>) -> (u16, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(b"220 scripted\r\n").unwrap();
        let mut read = Vec::new();
        for (lines, pause_ms, reply) in script {
            for _ in 0..lines {
                let mut line = String::new();
                assert!(reader.read_line(&mut line).unwrap() > 0, "the client hung up after {read:?}");
                read.push(line.trim_end().to_owned());
            }
            std::thread::sleep(Duration::from_millis(pause_ms));
            reader.get_mut().write_all(format!("{reply}\r\n").as_bytes()).unwrap();
        }
        read
    });
    (port, server)
}
