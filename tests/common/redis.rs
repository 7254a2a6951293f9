//! A throwaway `redis-server` on a loopback port with its own directory,
//! started by the test that needs it and killed when dropped (this process
//! started it). Outside CI, a machine without `redis-server` skips the
//! test with a notice; in CI (`CI` set) that is a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// A server with an append-only file (`appendfsync always`), so that a
    /// restart keeps its counters; `None` if `redis-server` is missing
    /// outside CI.
    pub fn start(name: &str) -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed (.ci/run installs it)"
            );
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("bq-redis-{name}-{}", std::process::id()));
        // A port found free may be taken again before the server binds it
        // (by another test's server, started at the same time): the server
        // then exits, and a test that only waited for the port to answer
        // would share the other test's server. Try another port then.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = RedisServer {
                url: format!("redis://127.0.0.1:{port}/0"),
                port,
                dir: dir.clone(),
                child: None,
            };
            if s.try_start() {
                return Some(s);
            }
        }
        panic!("redis-server did not start on any of ten ports");
    }

    /// Starts the server (again, on the same port and files).
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server did not start again");
    }

    /// Starts the server and waits until it answers itself (not while
    /// loading its files, and not another server on the port); false if it
    /// exited first (its port was taken).
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none());
        // Its complaints, if it fails to start, go to a file beside its own.
        let log = std::fs::File::create(self.dir.join("stderr.log")).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Held by `self` from now on, so that a failed wait below kills it
        // (dropping a `Child` leaves the process running).
        let pid = child.id();
        let child = self.child.insert(child);
        let t = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            if serves(self.port, pid) {
                return true;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not answer: {}",
                std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (SIGKILL: as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the server on `port` is process `pid` and ready: `INFO server`
/// (which a server still loading its files refuses) names its process id.
fn serves(port: u16, pid: u32) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    if c.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    // A bulk string, "$<length>\r\n<text>\r\n", or an error line.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = c.read(&mut buf) {
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.starts_with('-') || text.contains(&format!("process_id:{pid}\r\n")) {
            break;
        }
    }
    String::from_utf8_lossy(&reply).contains(&format!("process_id:{pid}\r\n"))
}

impl RedisServer {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A loopback TCP proxy to a server that can lose one reply: once
/// [`LosingProxy::lose_next_reply`] is called, the next bytes the server
/// sends are not passed on and that connection is closed, as a network
/// would leave a command applied but its answer lost.
pub struct LosingProxy {
    pub url: String,
    lose: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LosingProxy {
    pub fn start(port: u16) -> LosingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "redis://127.0.0.1:{}/0",
            listener.local_addr().unwrap().port()
        );
        let lose = Arc::new(AtomicBool::new(false));
        let losing = Arc::clone(&lose);
        // The threads end with their connections (or the test process).
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let (client_back, server_back) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &client, &mut &server);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
                let losing = Arc::clone(&losing);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    loop {
                        let n = match (&server_back).read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if losing.swap(false, Ordering::SeqCst) {
                            let _ = client_back.shutdown(std::net::Shutdown::Both);
                            let _ = server_back.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        if (&client_back).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        LosingProxy { url, lose }
    }

    /// The next reply of the server is lost, and its connection closed.
    pub fn lose_next_reply(&self) {
        self.lose.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
