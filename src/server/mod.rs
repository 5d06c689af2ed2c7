//! HTTP wiring: mounts sockets on an HTTP/1 server (plain, or TLS through rustls for `wss://`
//! and `https://`), raises the descriptor limit, and shuts down gracefully on SIGTERM/SIGINT
//! (sockets closed with 1001 so clients reconnect elsewhere); `/metrics` and the timing of
//! every request ([`exposition`]).
//!
//! The server is actix-http's HTTP/1 service with an actix-web `App` as its service (REST,
//! LongPoll, and what is not a WebSocket upgrade) and an upgrade handler that takes each
//! WebSocket's socket from the dispatcher ([`websocket::upgrade`]), so that an idle WebSocket
//! does not keep the dispatcher's two 8 KiB buffers. It is set up as actix-web's `HttpServer`
//! sets up its own (same timeouts, backlog, TCP_NODELAY, TLS acceptor).

pub mod exposition;

use crate::endpoint::{Endpoint, Socket};
use crate::transport::{longpoll, websocket, Mount};
use actix_http::HttpService;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::{web, App, HttpResponse};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// actix-web's `HttpServer` defaults, kept.
const BACKLOG: i32 = 1024;
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Routes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// A server under construction: an endpoint, its socket mounts and any extra HTTP routes.
pub struct Server {
    endpoint: Endpoint,
    mounts: Vec<(String, Socket)>,
    routes: Vec<Routes>,
    workers: Option<usize>,
    blocking_threads: usize,
    tls: Option<rustls::ServerConfig>,
}

/// Threads each worker may run blocking work on, unless [`Server::blocking_threads`] says.
pub const DEFAULT_BLOCKING_THREADS: usize = 16;

/// A TLS configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1), on rustls with the ring provider.
pub fn tls_config(cert: &Path, key: &Path) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, e: rustls::pki_types::pem::Error| {
        std::io::Error::other(format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e))?;
    if certs.is_empty() {
        return Err(std::io::Error::other(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))
}

/// Socket definitions bound to an endpoint, each with its LongPoll sessions. Build them once
/// and share them among workers: a LongPoll session must be found whichever worker a request
/// lands on.
pub fn mounts(
    endpoint: &Endpoint,
    sockets: &[(String, Socket)],
) -> Vec<(String, web::Data<Mount>)> {
    sockets
        .iter()
        .map(|(path, socket)| {
            let mount = Mount {
                endpoint: endpoint.clone(),
                socket: socket.clone(),
                sessions: Arc::new(longpoll::Sessions::new(
                    endpoint.config().secret_key.as_deref(),
                )),
            };
            (path.trim_end_matches('/').to_owned(), web::Data::new(mount))
        })
        .collect()
}

/// Registers `<path>/websocket` and `<path>/longpoll` for each mount. Use it to put Fawkes
/// sockets into an actix-web `App` of your own; [`Server`] does this for you.
pub fn configure_sockets(cfg: &mut web::ServiceConfig, mounts: &[(String, web::Data<Mount>)]) {
    for (base, mount) in mounts {
        if mount.socket.websocket {
            cfg.service(
                web::resource(format!("{base}/websocket"))
                    .app_data(mount.clone())
                    .route(web::get().to(websocket::handle))
                    // Phoenix answers any other method with 400 and an empty body.
                    .default_service(web::to(HttpResponse::BadRequest)),
            );
        }
        if !mount.socket.longpoll {
            continue;
        }
        let body_limit = web::PayloadConfig::new(mount.endpoint.config().limits.max_longpoll_body);
        cfg.service(
            web::resource(format!("{base}/longpoll"))
                .app_data(mount.clone())
                .app_data(body_limit)
                .route(web::get().to(longpoll::get))
                .route(web::post().to(longpoll::post))
                .route(web::method(actix_web::http::Method::OPTIONS).to(longpoll::options))
                .default_service(web::to(longpoll::other)),
        );
    }
}

impl Server {
    pub fn new(endpoint: Endpoint) -> Server {
        Server {
            endpoint,
            mounts: Vec::new(),
            routes: Vec::new(),
            workers: None,
            blocking_threads: DEFAULT_BLOCKING_THREADS,
            tls: None,
        }
    }

    /// Serves TLS only (`wss://`, `https://`), with this configuration (see [`tls_config`]).
    pub fn tls(mut self, config: rustls::ServerConfig) -> Server {
        self.tls = Some(config);
        self
    }

    /// Mounts a socket at `path` (`/socket` serves `/socket/websocket`).
    pub fn socket(mut self, path: &str, socket: Socket) -> Server {
        self.mounts.push((path.to_owned(), socket));
        self
    }

    /// Adds HTTP routes of the app's own (a REST API, say).
    pub fn routes(mut self, f: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static) -> Server {
        self.routes.push(Arc::new(f));
        self
    }

    /// Worker threads (default: one per core).
    pub fn workers(mut self, n: usize) -> Server {
        self.workers = Some(n);
        self
    }

    /// Threads each worker may run blocking work on (the store's database calls, through
    /// `web::block`); work past it waits its turn without a thread. Default
    /// [`DEFAULT_BLOCKING_THREADS`]; actix's own is 512 shared out over the workers, and a burst
    /// of sign-ins then left hundreds of threads, each with its stack and its allocator cache,
    /// waiting for a few pooled connections.
    pub fn blocking_threads(mut self, n: usize) -> Server {
        self.blocking_threads = n.max(1);
        self
    }

    /// Binds the listening socket. Call from within an actix system.
    pub fn bind(self, addr: impl ToSocketAddrs) -> std::io::Result<Running> {
        raise_fd_limit();
        let Server {
            endpoint,
            mounts,
            routes,
            workers,
            blocking_threads,
            tls,
        } = self;
        let mounts = Arc::new(self::mounts(&endpoint, &mounts));
        let mut builder = actix_server::Server::build()
            .backlog(BACKLOG as u32)
            .disable_signals()
            .shutdown_timeout(endpoint.config().shutdown_timeout.as_secs().max(1))
            .worker_max_blocking_threads(blocking_threads);
        if let Some(n) = workers {
            builder = builder.workers(n);
        }
        let shutdown = builder.graceful_shutdown_signal();
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for addr in addr.to_socket_addrs()? {
            let listener = listen(addr)?;
            let local = listener.local_addr()?;
            listeners.push(socket2::Socket::from(listener.try_clone()?));
            addrs.push(local);
            let (ep, mounts, routes, shutdown) = (
                endpoint.clone(),
                mounts.clone(),
                routes.clone(),
                shutdown.clone(),
            );
            // The same service for plain TCP and TLS; only the socket type differs.
            macro_rules! http_service {
                () => {{
                    // Runs on each worker thread as it starts: give it its broadcast inbox.
                    ep.pubsub().register_worker();
                    let app = {
                        let (mounts, routes) = (mounts.clone(), routes.clone());
                        move || app(&mounts, &routes)
                    };
                    let ws_mounts = Rc::new((*mounts).clone());
                    let make_app = app.clone();
                    // Upgrade requests for other paths still reach the app: one instance of
                    // it per worker for them.
                    let upgrade = fn_factory(move || {
                        let mounts = ws_mounts.clone();
                        let app = make_app().into_factory().new_service(AppConfig::default());
                        async move {
                            let app = Rc::new(app.await.map_err(|_| "the app failed to start")?);
                            Ok::<_, &'static str>(fn_service(move |(req, framed)| {
                                websocket::upgrade(mounts.clone(), app.clone(), req, framed)
                            }))
                        }
                    });
                    let shutdown = shutdown.clone();
                    HttpService::build()
                        .graceful_shutdown_signal(move || {
                            let signal = shutdown.clone();
                            async move { signal.notified().await }
                        })
                        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                        .h1_allow_half_closed(true)
                        .local_addr(local)
                        // Frames are small and latency matters; queued frames are already
                        // written together.
                        .tcp_nodelay(true)
                        .upgrade(upgrade)
                        .finish(map_config(
                            app()
                                .into_factory()
                                .map_err(|e: actix_web::Error| e.error_response()),
                            |_| AppConfig::default(),
                        ))
                }};
            }
            builder = match &tls {
                Some(config) => {
                    let config = config.clone();
                    builder.listen("fawkes-tls", listener, move || {
                        http_service!().rustls_0_23(config.clone())
                    })?
                }
                None => builder.listen("fawkes", listener, move || http_service!().tcp())?,
            };
        }
        Ok(Running {
            addrs,
            listeners: Arc::new(listeners),
            server: builder.run(),
            endpoint,
        })
    }
}

/// The actix-web app of one worker: the socket mounts and the app's own routes.
fn app(
    mounts: &[(String, web::Data<Mount>)],
    routes: &[Routes],
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (mounts, routes) = (mounts.to_vec(), routes.to_vec());
    App::new()
        .wrap(actix_web::middleware::from_fn(exposition::observe_http))
        .configure(move |cfg| {
            configure_sockets(cfg, &mounts);
            for r in &routes {
                r(cfg);
            }
        })
}

/// A listening socket as actix-web's `HttpServer` makes it (address reuse, its backlog).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A bound server.
pub struct Running {
    addrs: Vec<SocketAddr>,
    /// The listening sockets (the same sockets as actix's, by other descriptors), to stop
    /// listening the moment a stop begins.
    listeners: Arc<Vec<socket2::Socket>>,
    server: actix_server::Server,
    endpoint: Endpoint,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops the server gracefully: sockets get 1001, then workers stop.
    pub fn handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
            listeners: self.listeners.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    /// Serves until stopped; SIGTERM or SIGINT stops it gracefully.
    pub async fn run(self) -> std::io::Result<()> {
        let stop = self.handle();
        crate::task::spawn(async move {
            wait_for_signal().await;
            stop.stop().await;
        });
        self.server.await
    }
}

/// Stops a running server.
#[derive(Clone)]
pub struct StopHandle {
    server: actix_server::ServerHandle,
    listeners: Arc<Vec<socket2::Socket>>,
    endpoint: Endpoint,
}

impl StopHandle {
    /// Stops accepting, then closes every socket with 1001 (clients reconnect, to another
    /// node), waits for them within the grace period, then stops the workers.
    pub async fn stop(&self) {
        // First, so that clients told to go away cannot come straight back to this node.
        self.server.pause().await;
        // A paused listener still completes handshakes into its backlog (and drops SYNs once
        // that is full, which clients retry only after a second): a reconnect storm would wait
        // there until the process exits. Shutting the sockets' read side takes them out of
        // LISTEN on Linux, so a connect is refused at once and the client's backoff retries
        // it against the next process.
        for l in self.listeners.iter() {
            let _ = l.shutdown(std::net::Shutdown::Read);
        }
        log::info!(
            "shutting down: no longer accepting; closing {} connections with 1001",
            self.endpoint.connection_count()
        );
        self.endpoint.shutdown_connections();
        // Give the close frames a moment to be written before workers stop.
        let deadline = std::time::Instant::now() + self.endpoint.config().shutdown_timeout;
        while self.endpoint.connection_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.server.stop(true).await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
    }
}

/// Raises the soft limit on open files to the hard limit: each connection is a descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let soft = lim.rlim_cur;
        if soft < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("could not raise the open files limit from {soft}");
                return;
            }
        }
        log::info!(
            "open files limit: soft {} (was {soft}), hard {}",
            lim.rlim_cur,
            lim.rlim_max
        );
    }
}
