//! For tests: an SMTP server that follows a script, to check what a client
//! writes before it waits for an answer.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// One step: read this many lines, wait this many milliseconds, then write
/// the reply (CRLF added), or hang up when it is empty.
pub type Step = (usize, u64, &'static str);

/// A server for one connection that follows `script` after its greeting and
/// hands back every line it read, those the client sent after the script
/// too (until it hung up or was silent for 5 s). A step whose lines never
/// come fails the test by the same timeout.
pub fn scripted_server(script: Vec<Step>) -> (u16, JoinHandle<Vec<String>>) {
    let (port, server) = scripted_connections(vec![script]);
    (port, std::thread::spawn(move || server.join().unwrap().remove(0)))
}

/// The same for successive connections, one script each.
pub fn scripted_connections(scripts: Vec<Vec<Step>>) -> (u16, JoinHandle<Vec<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for script in scripts {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream);
            reader.get_mut().write_all(b"220 scripted\r\n").unwrap();
            let mut read = Vec::new();
            let mut ended = false;
            for (lines, pause_ms, reply) in script {
                for _ in 0..lines {
                    let mut line = String::new();
                    assert!(reader.read_line(&mut line).unwrap() > 0, "the client hung up after {read:?}");
                    read.push(line.trim_end().to_owned());
                }
                std::thread::sleep(Duration::from_millis(pause_ms));
                if reply.is_empty() {
                    ended = true;
                    break;
                }
                reader.get_mut().write_all(format!("{reply}\r\n").as_bytes()).unwrap();
            }
            // What the client sends after the script, until it hangs up (or falls silent).
            while !ended {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => ended = true,
                    Ok(_) => read.push(line.trim_end().to_owned()),
                    Err(error)
                        if matches!(
                            error.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionReset
                        ) =>
                    {
                        ended = true
                    }
                    Err(error) => panic!("{error}"),
                }
            }
            connections.push(read);
        }
        connections
    });
    (port, server)
}
