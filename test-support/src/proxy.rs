//! A TCP proxy in front of a real service that a test can cut and restore — to make Kafka or
//! Cassandra unreachable for one component without stopping it for every other test.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// See the module docs. Dropping it stops accepting connections.
pub struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listen on a free loopback port and forward every connection to `upstream`.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_string();
        {
            let (cut, stop, open) = (cut.clone(), stop.clone(), open.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if cut.load(Ordering::Acquire) {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            }
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = TcpStream::connect(&upstream) else {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                                let mut open = open.lock().expect("proxy lock");
                                open.push(c);
                                open.push(s);
                            }
                            pipe(
                                client.try_clone().expect("clone"),
                                server.try_clone().expect("clone"),
                            );
                            pipe(server, client);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        Self {
            addr,
            cut,
            open,
            stop,
        }
    }

    /// `127.0.0.1:<port>` to give the component instead of the real address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Close every open connection and refuse new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for stream in self.open.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
