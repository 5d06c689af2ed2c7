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
    start_server(config, socket, None)
}

/// The same, over TLS only.
pub fn start_tls(config: Config, socket: Socket, tls: rustls::ServerConfig) -> Running {
    start_server(config, socket, Some(tls))
}

fn start_server(config: Config, socket: Socket, tls: Option<rustls::ServerConfig>) -> Running {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let endpoint = Endpoint::new(config);
            let mut server = Server::new(endpoint.clone())
                .socket("/socket", socket)
                .workers(2);
            if let Some(tls) = tls {
                server = server.tls(tls);
            }
            let server = server.bind("127.0.0.1:0").expect("bind");
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

/// A fresh database for one test: a SQLite file, or a new PostgreSQL database on the server
/// named by `FAWKES_TEST_POSTGRES_URL` (`.ci/run` starts one and sets it).
pub fn fresh_database(backend: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "fawkes_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    match backend {
        "sqlite" => {
            let dir = std::env::temp_dir().join("fawkes-tests");
            std::fs::create_dir_all(&dir).unwrap();
            dir.join(format!("{name}.db"))
                .to_string_lossy()
                .into_owned()
        }
        "postgres" => {
            use diesel::{Connection, RunQueryDsl};
            let admin = std::env::var("FAWKES_TEST_POSTGRES_URL").expect(
                "FAWKES_TEST_POSTGRES_URL must name a PostgreSQL server for the PostgreSQL half of the store tests \
                 (bash .ci/run starts one and sets it)",
            );
            let mut c = diesel::PgConnection::establish(&admin).expect("connect to PostgreSQL");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut c)
                .unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .unwrap();
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        }
        other => panic!("unknown backend {other}"),
    }
}

/// `fawkes serve`'s apps (REST + sockets at /socket and /community) on a fresh database.
pub struct App {
    pub server: Running,
    pub state: actix_web::web::Data<fawkes::apps::AppState>,
}

pub fn start_app(backend: &str) -> App {
    start_app_with(
        backend,
        fawkes::apps::collections::CollectionsConfig::default(),
    )
}

pub fn start_app_with(
    backend: &str,
    collections: fawkes::apps::collections::CollectionsConfig,
) -> App {
    start_app_configured(backend, move |state| state.collections = collections)
}

/// The apps with their state set up by `configure` (sign-in verifiers, rules, limits).
pub fn start_app_configured(
    backend: &str,
    configure: impl FnOnce(&mut fawkes::apps::AppState) + Send + 'static,
) -> App {
    let url = fresh_database(backend);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let store = fawkes::store::Store::open(&url).expect("open store");
            let endpoint = Endpoint::new(Config::default());
            let mut state = fawkes::apps::AppState::new(
                store,
                endpoint.clone(),
                fawkes::apps::AppLimits::default(),
                Default::default(),
            );
            configure(&mut state);
            let state = actix_web::web::Data::new(state);
            fawkes::accounts::watch_revocations(state.store.clone(), state.endpoint.clone());
            let socket = fawkes::apps::socket(state.clone()).expect("the apps' routes");
            let routes_state = state.clone();
            let server = Server::new(endpoint.clone())
                .socket("/socket", socket.clone())
                .socket("/community", socket)
                .routes(move |cfg| fawkes::apps::routes(cfg, routes_state.clone()))
                .workers(2)
                .bind("127.0.0.1:0")
                .expect("bind");
            tx.send(App {
                server: Running {
                    addr: server.local_addr(),
                    endpoint,
                    stop: server.handle(),
                },
                state,
            })
            .unwrap_or_else(|_| panic!("test gone"));
            server.run().await.expect("server");
        })
    });
    rx.recv().expect("app started")
}

impl App {
    /// Creates a user directly in the store; returns its id and token.
    pub fn user(&self, name: &str, member: bool) -> (i64, String) {
        let mut c = self.state.store.conn().unwrap();
        let (u, t) = fawkes::apps::accounts::create_user(&mut c, name, member).unwrap();
        (u.id, t)
    }

    /// Creates a user as `fawkes users create` does, with every option.
    pub fn new_user(&self, new: fawkes::apps::accounts::NewUser) -> (i64, String) {
        let mut c = self.state.store.conn().unwrap();
        let (u, t) = fawkes::apps::accounts::create(&mut c, &new).unwrap();
        (u.id, t)
    }

    /// A REST call; the JSON body parsed (`Null` when empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let host = self.server.addr.to_string();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let (status, _, raw) = protocol_tests::client::http(&host, &req).await.unwrap();
        let json = if raw.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {raw:?}"))
        };
        (status, json)
    }
}
