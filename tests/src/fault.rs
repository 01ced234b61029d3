//! A TCP fault proxy on 127.0.0.1, between the agent and PostgreSQL, that a
//! test controls: it passes bytes through until told to cut every
//! connection, stall them (hold every byte in both directions), refuse new
//! ones, or drop a connection after a number of bytes from the client (a
//! cut in the middle of a batch). Plain std threads: one accept loop, two
//! copy threads per connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to the traffic; shared by its threads.
#[derive(Default)]
struct Control {
    /// Hold every byte (both directions) while set.
    stalled: AtomicBool,
    /// Close new connections at once while set.
    refusing: AtomicBool,
    /// When non-zero: cut the connection that carries the client's byte
    /// number `drop_after` (counted from when it was set, over all
    /// connections); reset to 0 once done.
    drop_after: AtomicU64,
    client_bytes: AtomicU64,
    /// Live connections (client side, server side), for `cut_all`.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
    /// Faults done, for the test's log: cuts, drops.
    cuts: AtomicU64,
}

/// The proxy; stops accepting when dropped.
pub struct FaultProxy {
    pub port: u16,
    ctl: Arc<Control>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctl = Arc::new(Control::default());
        let c = ctl.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if c.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if c.refusing.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                c.live
                    .lock()
                    .unwrap()
                    .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                let (c1, c2) = (c.clone(), c.clone());
                let (cr, sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(cr, sw, &c1, true));
                thread::spawn(move || pump(server, client, &c2, false));
            }
        });
        FaultProxy { port, ctl }
    }

    /// Cuts every live connection now (both directions), as a network failure would.
    pub fn cut_all(&self) {
        let live = std::mem::take(&mut *self.ctl.live.lock().unwrap());
        self.ctl.cuts.fetch_add(live.len() as u64, Ordering::SeqCst);
        for (a, b) in live {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Holds (`true`) or releases (`false`) every byte in both directions.
    pub fn stall(&self, on: bool) {
        self.ctl.stalled.store(on, Ordering::SeqCst);
    }

    /// Closes (`true`) new connections at once, or accepts them again.
    pub fn refuse(&self, on: bool) {
        self.ctl.refusing.store(on, Ordering::SeqCst);
    }

    /// Cuts the connection that carries the `n`-th byte sent by a client from now on.
    pub fn drop_after_client_bytes(&self, n: u64) {
        self.ctl.client_bytes.store(0, Ordering::SeqCst);
        self.ctl.drop_after.store(n.max(1), Ordering::SeqCst);
    }

    /// Back to passing everything through (live connections stay).
    pub fn heal(&self) {
        self.stall(false);
        self.refuse(false);
        self.ctl.drop_after.store(0, Ordering::SeqCst);
    }

    /// How many connections were cut (by `cut_all` or a mid-stream drop).
    pub fn cuts(&self) -> u64 {
        self.ctl.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.heal();
        self.ctl.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, ctl: &Control, from_client: bool) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while ctl.stalled.load(Ordering::SeqCst) && !ctl.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        let mut send = n;
        let mut cut = false;
        if from_client {
            let limit = ctl.drop_after.load(Ordering::SeqCst);
            let before = ctl.client_bytes.fetch_add(n as u64, Ordering::SeqCst);
            if limit > 0 && before + n as u64 >= limit {
                // Forward the bytes before the limit, then cut: the server
                // sees a message cut in the middle.
                send = limit.saturating_sub(before).min(n as u64) as usize;
                cut = ctl
                    .drop_after
                    .compare_exchange(limit, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
            }
        }
        if to.write_all(&buf[..send]).is_err() {
            break;
        }
        if cut {
            ctl.cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
