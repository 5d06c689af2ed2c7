//! Starts servers in-process for the tests: the conformance fixture, on its own actix system
//! thread, with the library's configuration as a test wants it.

#![allow(dead_code)]

#[path = "../../../examples/conformance_server/fixture.rs"]
pub mod fixture;

use fawkes::{Config, Endpoint, Server, Socket};
use protocol_tests::{Control, Target};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};

pub struct Running {
    pub addr: std::net::SocketAddr,
    pub endpoint: Endpoint,
    pub stop: fawkes::server::StopHandle,
}

impl Running {
    pub fn url(&self) -> String {
        format!("ws://{}/socket", self.addr)
    }

    pub fn target(&self) -> Target {
        let mut t = Target::new(&self.url());
        t.control = Some(Arc::new(EndpointControl(self.endpoint.clone())));
        t
    }
}

struct EndpointControl(Endpoint);

impl Control for EndpointControl {
    fn disconnect(&self, socket_id: &str) {
        self.0.disconnect(socket_id);
    }
}

/// Serves `socket` at /socket on a free port, in a background thread.
pub fn start_with(config: Config, socket: Socket) -> Running {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let endpoint = Endpoint::new(config);
            let server = Server::new(endpoint.clone())
                .socket("/socket", socket)
                .workers(2)
                .bind("127.0.0.1:0")
                .expect("bind");
            tx.send(Running {
                addr: server.local_addr(),
                endpoint,
                stop: server.handle(),
            })
            .unwrap();
            server.run().await.expect("server");
        })
    });
    rx.recv().expect("server started")
}

pub fn start(config: Config) -> Running {
    start_with(config, fixture::socket())
}

/// The fixture on its defaults, shared by the tests of one binary.
pub fn shared() -> &'static Running {
    static S: OnceLock<Running> = OnceLock::new();
    S.get_or_init(|| {
        let _ = env_logger::builder().is_test(true).try_init();
        start(Config::default())
    })
}

/// Scenarios share `community:feed`: one at a time, so none sees another's broadcasts.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}
