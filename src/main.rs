//! The `fawkes` command.

use clap::{Args, Parser, Subcommand};
use fawkes::apps::chat::ChatConfig;
use fawkes::apps::collections::CollectionsConfig;
use fawkes::apps::{self, accounts, AppLimits, AppState};
use fawkes::store::{Store, DEFAULT_DATABASE_URL};
use fawkes::{CheckOrigin, Config, Endpoint, Limits, Server};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fawkes", version, about = "A Phoenix Channels server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the sockets (mounted at /socket and /community).
    Serve(ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(DbArgs),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Args, Clone)]
struct DbArgs {
    /// A SQLite file path (created if missing) or a postgres:// URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user; prints its first API token, alone on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// Make the user a community member at once.
        #[arg(long)]
        community_member: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token for a user; prints it alone on the last line.
    Create {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token; a running server closes its sockets within a second.
    Revoke {
        token: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Longest post or comment, in characters.
    #[arg(long, env = "FAWKES_MAX_POST_LENGTH", default_value_t = AppLimits::default().max_post_length)]
    max_post_length: usize,
    /// Longest chat message, in characters.
    #[arg(long, env = "FAWKES_CHAT_MAX_BODY", default_value_t = ChatConfig::default().max_body)]
    chat_max_body: usize,
    /// Chat messages one user may send per rate window.
    #[arg(long, env = "FAWKES_CHAT_RATE_COUNT", default_value_t = ChatConfig::default().rate_count)]
    chat_rate_count: usize,
    /// The chat rate window, in seconds.
    #[arg(long, env = "FAWKES_CHAT_RATE_WINDOW", default_value_t = ChatConfig::default().rate_window.as_secs())]
    chat_rate_window: u64,
    /// Changes kept per collection for `since` replay.
    #[arg(long, env = "FAWKES_COLLECTION_LOG_SIZE", default_value_t = CollectionsConfig::default().log_size)]
    collection_log_size: i64,
    /// Largest collection a `collection:<name>` join answers in full.
    #[arg(long, env = "FAWKES_COLLECTION_JOIN_LIMIT", default_value_t = CollectionsConfig::default().join_limit)]
    collection_join_limit: i64,
    /// Collections whose reads and joins need a valid token, comma-separated.
    #[arg(long, env = "FAWKES_PRIVATE_COLLECTIONS", value_delimiter = ',')]
    private_collections: Vec<String>,
    #[arg(long, env = "FAWKES_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "FAWKES_PORT", default_value_t = 4000)]
    port: u16,
    /// Worker threads (default: one per core).
    #[arg(long, env = "FAWKES_WORKERS")]
    workers: Option<usize>,
    /// Largest client WebSocket message, in bytes (closed with 1009 above it).
    #[arg(long, env = "FAWKES_MAX_FRAME_SIZE", default_value_t = Limits::default().max_frame_size)]
    max_frame_size: usize,
    /// Channels one socket may join at once.
    #[arg(long, env = "FAWKES_MAX_CHANNELS", default_value_t = Limits::default().max_channels)]
    max_channels: usize,
    /// Frames queued for one client before it is closed as too slow (1013).
    #[arg(long, env = "FAWKES_MAX_QUEUE", default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Seconds without a frame from a client before its socket is closed.
    #[arg(long, env = "FAWKES_IDLE_TIMEOUT", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Messages per second one socket may send (reads slow down beyond it); 0 for no limit.
    #[arg(long, env = "FAWKES_MAX_MESSAGES_PER_SECOND", default_value_t = Limits::default().max_messages_per_second)]
    max_messages_per_second: u32,
    /// Allowed origins, comma-separated (e.g. `https://example.com,//*.example.org`); unset: any.
    #[arg(long, env = "FAWKES_CHECK_ORIGIN", value_delimiter = ',')]
    check_origin: Vec<String>,
    /// Seconds a LongPoll GET waits for messages before answering 204 (keep it under phoenix.js's 20 s).
    #[arg(long, env = "FAWKES_LONGPOLL_WINDOW", default_value_t = Config::default().longpoll_window.as_secs())]
    longpoll_window: u64,
    /// Key that signs LongPoll session tokens; a random one per process when unset.
    #[arg(long, env = "FAWKES_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, env = "FAWKES_SHUTDOWN_TIMEOUT", default_value_t = Config::default().shutdown_timeout.as_secs())]
    shutdown_timeout: u64,
}

impl ServeArgs {
    fn config(&self) -> Config {
        Config {
            limits: Limits {
                max_frame_size: self.max_frame_size,
                max_channels: self.max_channels,
                max_queue: self.max_queue.max(1),
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
                max_messages_per_second: self.max_messages_per_second,
                ..Limits::default()
            },
            check_origin: if self.check_origin.is_empty() {
                CheckOrigin::Off
            } else {
                CheckOrigin::Allow(self.check_origin.clone())
            },
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            longpoll_window: Duration::from_secs(self.longpoll_window.clamp(1, 19)),
            secret_key: self.secret_key.clone(),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Serve(args) => actix_web::rt::System::new()
            .block_on(serve(args))
            .map_err(|e| e.to_string()),
        Command::Migrate(db) => {
            open(&db).map(|_| println!("database {} is up to date", db.database_url))
        }
        Command::Users(UsersCommand::Create {
            name,
            community_member,
            db,
        }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            let (user, token) = accounts::create_user(&mut c, &name, community_member)
                .map_err(|e| e.to_string())?;
            println!("created user {} (id {})", user.name, user.id);
            println!("{token}");
            Ok(())
        }),
        Command::Tokens(TokensCommand::Create { user, db }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            let token = accounts::create_token(&mut c, &user).map_err(|e| e.to_string())?;
            println!("created a token for {user}");
            println!("{token}");
            Ok(())
        }),
        Command::Tokens(TokensCommand::Revoke { token, db }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            if accounts::revoke_token(&mut c, &token).map_err(|e| e.to_string())? {
                println!("revoked");
                Ok(())
            } else {
                Err("no such live token".into())
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fawkes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(db: &DbArgs) -> Result<Store, String> {
    Store::open(&db.database_url).map_err(|e| format!("{}: {e}", db.database_url))
}

async fn serve(args: ServeArgs) -> std::io::Result<()> {
    let store = open(&args.db).map_err(std::io::Error::other)?;
    let endpoint = Endpoint::new(args.config());
    let mut state = AppState::new(
        store,
        endpoint.clone(),
        AppLimits {
            max_post_length: args.max_post_length,
        },
        CollectionsConfig {
            log_size: args.collection_log_size.max(1),
            join_limit: args.collection_join_limit,
            private: args.private_collections.clone(),
        },
    );
    state.chat = ChatConfig {
        max_body: args.chat_max_body,
        rate_count: args.chat_rate_count.max(1),
        rate_window: Duration::from_secs(args.chat_rate_window.max(1)),
        ..ChatConfig::default()
    };
    let state = actix_web::web::Data::new(state);
    accounts::watch_revocations(state.clone());
    let socket = apps::socket(state.clone());
    let mut server = Server::new(endpoint)
        .socket("/socket", socket.clone())
        .socket("/community", socket)
        .routes(move |cfg| apps::routes(cfg, state.clone()));
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    let running = server.bind((args.host.as_str(), args.port))?;
    println!(
        "fawkes listening on http://{addr} (database {db}; sockets at ws://{addr}/socket and ws://{addr}/community)",
        addr = running.local_addr(),
        db = args.db.database_url,
    );
    running.run().await
}
