//! A TCP proxy between the extension and a real server that can cut a
//! connection after a number of bytes from the server — a server or network
//! that fails mid-fetch, on demand.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

pub struct CuttingProxy {
    pub port: u16,
    /// Server bytes after which the next connection is cut (0: never).
    cut_after: Arc<AtomicU64>,
    /// Connections cut so far.
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(target_port: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let cut_after = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (cut_setting, cut_count) = (cut_after.clone(), cuts.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                // One cut per setting: the next connection then runs normally.
                let limit = cut_setting.swap(0, Ordering::SeqCst);
                let count = cut_count.clone();
                pipe(client, server, limit, count);
            }
        });
        CuttingProxy { port, cut_after, cuts }
    }

    /// Cuts the next connection once the server has sent `bytes` bytes.
    pub fn cut_next_connection_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn pipe(client: TcpStream, server: TcpStream, limit: u64, cuts: Arc<AtomicUsize>) {
    let (mut client_reader, mut server_writer) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(read) = client_reader.read(&mut buffer) {
            if read == 0 || server_writer.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = server_writer.shutdown(Shutdown::Write);
    });
    let (mut server_reader, mut client_writer) = (server, client);
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        let mut sent: u64 = 0;
        while let Ok(read) = server_reader.read(&mut buffer) {
            if read == 0 {
                break;
            }
            let mut chunk = &buffer[..read];
            if limit > 0 && sent + chunk.len() as u64 >= limit {
                chunk = &chunk[..(limit - sent) as usize];
                let _ = client_writer.write_all(chunk);
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = client_writer.shutdown(Shutdown::Both);
                let _ = server_reader.shutdown(Shutdown::Both);
                return;
            }
            sent += chunk.len() as u64;
            if client_writer.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = client_writer.shutdown(Shutdown::Both);
    });
}
