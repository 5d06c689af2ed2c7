//! The `fawkes` command.

use clap::{Args, Parser, Subcommand};
use fawkes::apps::chat::ChatConfig;
use fawkes::apps::collections::rules::RuleBook;
use fawkes::apps::collections::CollectionsConfig;
use fawkes::apps::proxy::{self, config::BackendLimits};
use fawkes::apps::realtime::{self, Realtime, RealtimeLimits, RealtimeRules};
use fawkes::apps::server_api::{ServerApi, ServerApiLimits};
use fawkes::apps::{self, accounts, AppLimits, AppState};
use fawkes::auth::{jwt, phoenix_token, JwtConfig, JwtVerifier, PhoenixTokens, Subject, Verifiers};
use fawkes::history::{History, HistoryConfig, Retention};
use fawkes::store::{Store, DEFAULT_DATABASE_URL};
use fawkes::{CheckOrigin, Config, Endpoint, Limits, Server};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "fawkes", version, about = "A Phoenix Channels server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A TOML file whose keys are these flags' long names (default: ./fawkes.toml if present).
    /// Flags and environment variables override it.
    #[arg(long, global = true, env = "FAWKES_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text or as JSON objects, one a line.
    #[arg(long, global = true, env = "FAWKES_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the sockets (mounted at /socket and /community).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    Migrate(DbArgs),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Show collection settings.
    #[command(subcommand)]
    Collections(CollectionsCommand),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Keys and tokens for Supabase clients, signed with the project's JWT secret.
    #[command(subcommand)]
    Supabase(SupabaseCommand),
}

#[derive(Subcommand)]
enum SupabaseCommand {
    /// Print an anon key and a service_role key (`SUPABASE_ANON_KEY=…`,
    /// `SUPABASE_SERVICE_ROLE_KEY=…`), what `createClient(url, key)` takes.
    Keys {
        /// Seconds the keys stay valid (ten years by default, as a project's keys).
        #[arg(long, default_value_t = 10 * 365 * 24 * 3600)]
        ttl: i64,
        #[command(flatten)]
        secret: SupabaseSecretArgs,
    },
    /// Print a user's access token (as Supabase Auth signs one), alone on the last line.
    Token {
        /// The user's id (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// The `role` claim.
        #[arg(long, default_value = "authenticated")]
        role: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[command(flatten)]
        secret: SupabaseSecretArgs,
    },
}

/// The Supabase project's JWT secret.
#[derive(Args, Clone)]
struct SupabaseSecretArgs {
    /// The project's JWT secret (HS256): serves Supabase Realtime's `realtime:*` channels at
    /// /realtime/v1 and on /socket to clients whose `apikey` it signed. Off without it.
    #[arg(long, env = "FAWKES_SUPABASE_JWT_SECRET", hide_env_values = true)]
    supabase_jwt_secret: Option<String>,
    /// A file holding the JWT secret (instead of the flag).
    #[arg(
        long,
        env = "FAWKES_SUPABASE_JWT_SECRET_FILE",
        conflicts_with = "supabase_jwt_secret"
    )]
    supabase_jwt_secret_file: Option<PathBuf>,
}

impl SupabaseSecretArgs {
    fn keys(&self) -> Result<Option<fawkes::auth::supabase::ProjectKeys>, String> {
        secret(&self.supabase_jwt_secret, &self.supabase_jwt_secret_file)?
            .map(|s| fawkes::auth::supabase::ProjectKeys::new(s.as_bytes()))
            .transpose()
    }

    /// The keys, or an error saying how to give them.
    fn required(&self) -> Result<fawkes::auth::supabase::ProjectKeys, String> {
        self.keys()?.ok_or_else(|| {
            "give the project's JWT secret: --supabase-jwt-secret, --supabase-jwt-secret-file or FAWKES_SUPABASE_JWT_SECRET".into()
        })
    }
}

/// Supabase Realtime: the secret, limits and private-channel rules.
#[derive(Args, Clone)]
struct SupabaseArgs {
    #[command(flatten)]
    secret: SupabaseSecretArgs,
    /// Largest Supabase broadcast or presence payload, in bytes.
    #[arg(long, env = "FAWKES_REALTIME_MAX_PAYLOAD_BYTES", default_value_t = RealtimeLimits::default().max_payload_bytes)]
    realtime_max_payload_bytes: usize,
    /// Events one socket may send per second on its `realtime:*` channels (past it the channel
    /// closes with "Too many messages per second"); 0 for no limit.
    #[arg(long, env = "FAWKES_REALTIME_EVENTS_PER_SECOND", default_value_t = RealtimeLimits::default().events_per_second)]
    realtime_events_per_second: u32,
    /// Messages one REST broadcast (`/realtime/v1/api/broadcast`) may carry (429 above it).
    #[arg(long, env = "FAWKES_REALTIME_MAX_REST_MESSAGES", default_value_t = RealtimeLimits::default().max_rest_messages)]
    realtime_max_rest_messages: usize,
    /// Largest REST broadcast body, in bytes (413 above it).
    #[arg(long, env = "FAWKES_REALTIME_MAX_REST_BODY_BYTES", default_value_t = RealtimeLimits::default().max_rest_body_bytes)]
    realtime_max_rest_body_bytes: usize,
    /// Memory one `match`/`imatch` filter of `postgres_changes` may compile to, in bytes (a
    /// pattern past it is refused naming it).
    #[arg(long, env = "FAWKES_REALTIME_MAX_FILTER_PATTERN_BYTES", default_value_t = RealtimeLimits::default().max_filter_pattern_bytes)]
    realtime_max_filter_pattern_bytes: usize,
    /// A TOML or JSON file mapping channel-name patterns (`*` any run, `{sub}` the token's
    /// subject) to who may read, write and track presence on private channels: public,
    /// authenticated, service_role or a list of roles. First match in file order; no match
    /// refuses.
    #[arg(long, env = "FAWKES_REALTIME_RULES")]
    realtime_rules: Option<PathBuf>,
    /// Capture the changes of these tables of the (PostgreSQL) database, `schema.table` with
    /// `*` wildcards, comma-separated: supabase-js `postgres_changes` then follow them. Needs
    /// wal_level = logical, a role that may replicate, and wal2json.
    #[arg(long, env = "FAWKES_CDC_TABLES", value_delimiter = ',')]
    cdc_tables: Vec<String>,
    /// The logical replication slot change capture creates and keeps.
    #[arg(long, env = "FAWKES_CDC_SLOT", default_value_t = fawkes::store::cdc::CdcConfig::default().slot)]
    cdc_slot: String,
    /// Milliseconds between reads of an empty slot.
    #[arg(long, env = "FAWKES_CDC_POLL_MS", default_value_t = fawkes::store::cdc::CdcConfig::default().poll.as_millis() as u64)]
    cdc_poll_ms: u64,
    /// Changes read from the slot at most per batch (a transaction comes whole).
    #[arg(long, env = "FAWKES_CDC_BATCH", default_value_t = fawkes::store::cdc::CdcConfig::default().batch)]
    cdc_batch: i64,
    /// WAL the slot may hold back, in bytes (a long open transaction holds it too), before it is
    /// dropped and made again, its followers told; 0: no bound.
    #[arg(long, env = "FAWKES_CDC_MAX_LAG_BYTES", default_value_t = fawkes::store::cdc::CdcConfig::default().max_lag_bytes)]
    cdc_max_lag_bytes: i64,
}

impl SupabaseArgs {
    /// Change capture's settings, if tables are named.
    fn cdc(&self, database_url: &str) -> Result<Option<fawkes::store::cdc::CdcConfig>, String> {
        if self.cdc_tables.is_empty() {
            return Ok(None);
        }
        fawkes::store::cdc::check_tables(&self.cdc_tables)?;
        if !database_url.starts_with("postgres") {
            return Err("--cdc-tables needs a PostgreSQL --database-url".into());
        }
        if self.secret.keys()?.is_none() {
            return Err(
                "--cdc-tables needs --supabase-jwt-secret (its clients follow the changes)".into(),
            );
        }
        Ok(Some(fawkes::store::cdc::CdcConfig {
            slot: self.cdc_slot.clone(),
            tables: self.cdc_tables.clone(),
            poll: Duration::from_millis(self.cdc_poll_ms.max(1)),
            batch: self.cdc_batch.max(1),
            max_lag_bytes: self.cdc_max_lag_bytes.max(0),
        }))
    }

    fn realtime(&self) -> Result<Option<Realtime>, String> {
        let Some(keys) = self.secret.keys()? else {
            if self.realtime_rules.is_some() {
                return Err("--realtime-rules needs --supabase-jwt-secret".into());
            }
            return Ok(None);
        };
        let rules = match &self.realtime_rules {
            Some(path) => RealtimeRules::load(path)?,
            None => RealtimeRules::default(),
        };
        let limits = RealtimeLimits {
            max_payload_bytes: self.realtime_max_payload_bytes,
            events_per_second: self.realtime_events_per_second,
            max_rest_messages: self.realtime_max_rest_messages.max(1),
            max_rest_body_bytes: self.realtime_max_rest_body_bytes,
            max_filter_pattern_bytes: self.realtime_max_filter_pattern_bytes,
        };
        Ok(Some(Realtime::new(keys, limits, rules)))
    }
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective `serve` configuration (flags, environment, config file, defaults),
    /// each value with where it came from; secrets masked.
    Print(Box<ServeArgs>),
}

#[derive(Subcommand)]
enum CollectionsCommand {
    /// Print who may list, view, create, update and delete the records of each collection.
    Rules {
        #[command(flatten)]
        rules: RulesArgs,
    },
}

#[derive(Args, Clone)]
struct RulesArgs {
    /// A TOML or JSON file mapping collection names (or `*`, every other collection) to rules
    /// for list, view, create, update and delete: public, auth, owner or admin. Unset actions
    /// keep the defaults (list/view public, create auth, update/delete owner).
    #[arg(long, env = "FAWKES_COLLECTION_RULES")]
    collection_rules: Option<PathBuf>,
}

impl RulesArgs {
    fn book(&self) -> Result<RuleBook, String> {
        match &self.collection_rules {
            Some(path) => RuleBook::load(path),
            None => Ok(RuleBook::default()),
        }
    }
}

/// Reads a secret given inline or in a file (one trailing newline dropped).
fn secret(inline: &Option<String>, file: &Option<PathBuf>) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| {
                Some(
                    s.strip_suffix('\n')
                        .unwrap_or(&s)
                        .trim_end_matches('\r')
                        .to_owned(),
                )
            })
            .map_err(|e| format!("{}: {e}", path.display())),
        (None, None) => Ok(None),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Phoenix.Token settings: the Phoenix app's secret_key_base and the salt its sockets use.
#[derive(Args, Clone)]
struct PhoenixTokenArgs {
    /// The Phoenix app's secret_key_base: its Phoenix.Tokens then sign users in.
    #[arg(long, env = "FAWKES_PHOENIX_SECRET_KEY_BASE", hide_env_values = true)]
    phoenix_secret_key_base: Option<String>,
    /// A file holding the secret_key_base (instead of the flag).
    #[arg(
        long,
        env = "FAWKES_PHOENIX_SECRET_KEY_BASE_FILE",
        conflicts_with = "phoenix_secret_key_base"
    )]
    phoenix_secret_key_base_file: Option<PathBuf>,
    /// The salt the app signs socket tokens with.
    #[arg(long, env = "FAWKES_PHOENIX_TOKEN_SALT", default_value = "user socket")]
    phoenix_token_salt: String,
}

impl PhoenixTokenArgs {
    fn tokens(&self, max_age: Option<i64>) -> Result<Option<PhoenixTokens>, String> {
        let base = secret(
            &self.phoenix_secret_key_base,
            &self.phoenix_secret_key_base_file,
        )?;
        match base.as_deref().map(str::len) {
            // Anyone could sign with an empty key.
            Some(0) => return Err("the Phoenix secret_key_base is empty".into()),
            Some(n) if n < 64 => {
                log::warn!("the Phoenix secret_key_base has {n} bytes; Phoenix asks for 64 or more")
            }
            _ => {}
        }
        Ok(base.map(|b| PhoenixTokens::new(&b, &self.phoenix_token_salt, max_age)))
    }
}

/// Sign-in with tokens minted elsewhere.
#[derive(Args, Clone)]
struct AuthArgs {
    #[command(flatten)]
    phoenix: PhoenixTokenArgs,
    /// Seconds a Phoenix.Token stays valid after signing. Unset: the max age the token carries,
    /// as Phoenix.Token.verify does (86,400 unless the app signed it with another).
    #[arg(long, env = "FAWKES_PHOENIX_TOKEN_MAX_AGE")]
    phoenix_token_max_age: Option<i64>,
    /// Accept JWTs signed with HS256 and this secret.
    #[arg(long, env = "FAWKES_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// A file holding the HS256 secret (instead of the flag).
    #[arg(
        long,
        env = "FAWKES_JWT_HS256_SECRET_FILE",
        conflicts_with = "jwt_hs256_secret"
    )]
    jwt_hs256_secret_file: Option<PathBuf>,
    /// Accept JWTs signed with RS256, checked with this PEM public key file.
    #[arg(long, env = "FAWKES_JWT_RS256_PUBLIC_KEY")]
    jwt_rs256_public_key: Option<PathBuf>,
    /// Seconds of clock skew allowed on a JWT's `exp`.
    #[arg(long, env = "FAWKES_JWT_LEEWAY", default_value_t = jwt::DEFAULT_LEEWAY)]
    jwt_leeway: u64,
    /// Required `iss` of JWTs.
    #[arg(long, env = "FAWKES_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of JWTs.
    #[arg(long, env = "FAWKES_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

impl AuthArgs {
    fn verifiers(&self) -> Result<Verifiers, String> {
        let phoenix = self.phoenix.tokens(self.phoenix_token_max_age)?;
        let hs256 = secret(&self.jwt_hs256_secret, &self.jwt_hs256_secret_file)?;
        let rs256 = self
            .jwt_rs256_public_key
            .as_deref()
            .map(read_file)
            .transpose()?;
        let jwt = if hs256.is_some() || rs256.is_some() {
            Some(JwtVerifier::new(JwtConfig {
                hs256_secret: hs256.map(String::into_bytes),
                rs256_public_key: rs256,
                leeway: self.jwt_leeway,
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
            })?)
        } else {
            None
        };
        Ok(Verifiers { phoenix, jwt })
    }
}

/// The server API (`/api/server/...`), which the app's own backend calls.
#[derive(Args, Clone)]
struct ServerApiArgs {
    /// Serve the server API (`/api/server/...`: broadcast, disconnect, presence, topics) to
    /// callers sending `Authorization: Bearer <this key>`. Off (404) without it.
    #[arg(long, env = "FAWKES_SERVER_API_KEY", hide_env_values = true)]
    server_api_key: Option<String>,
    /// A file holding the server API key (instead of the flag).
    #[arg(
        long,
        env = "FAWKES_SERVER_API_KEY_FILE",
        conflicts_with = "server_api_key"
    )]
    server_api_key_file: Option<PathBuf>,
    /// Largest server API request body, in bytes (413 above it).
    #[arg(long, env = "FAWKES_SERVER_API_MAX_BODY_BYTES", default_value_t = ServerApiLimits::default().max_body_bytes)]
    server_api_max_body_bytes: usize,
    /// Most broadcasts one `POST /api/server/broadcast` may carry (422 above it).
    #[arg(long, env = "FAWKES_SERVER_API_MAX_BROADCASTS", default_value_t = ServerApiLimits::default().max_broadcasts)]
    server_api_max_broadcasts: usize,
}

impl ServerApiArgs {
    /// The server API, when a key is given.
    fn api(&self, endpoint: &Endpoint) -> Result<Option<ServerApi>, String> {
        let Some(key) = secret(&self.server_api_key, &self.server_api_key_file)? else {
            return Ok(None);
        };
        match key.len() {
            // Anyone could send an empty key.
            0 => return Err("the server API key is empty".into()),
            n if n < 16 => log::warn!("the server API key has {n} bytes; give it 32 or more"),
            _ => {}
        }
        let limits = ServerApiLimits {
            max_body_bytes: self.server_api_max_body_bytes,
            max_broadcasts: self.server_api_max_broadcasts.max(1),
        };
        Ok(Some(ServerApi::new(endpoint.clone(), &key, limits)))
    }
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
        /// Make the user an admin (passes every collection rule).
        #[arg(long)]
        admin: bool,
        /// The id the user's own app knows them by: Phoenix.Tokens and JWTs naming it sign
        /// them in.
        #[arg(long)]
        external_id: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Give an existing user the id their own app knows them by (Phoenix.Token data, JWT `sub`).
    SetExternalId {
        #[arg(long)]
        name: String,
        #[arg(long)]
        external_id: String,
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
    /// Mint a Phoenix.Token for a user, as the Phoenix app would; prints it alone on the last
    /// line. It names the user's external id (as an integer when it is one); a user without
    /// one is refused.
    Phoenix {
        #[arg(long)]
        user: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = phoenix_token::DEFAULT_MAX_AGE)]
        max_age: i64,
        #[command(flatten)]
        phoenix: PhoenixTokenArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token; a running server closes its sockets within a second.
    Revoke {
        /// API tokens are URL-safe base64: one may start with `-`.
        #[arg(allow_hyphen_values = true)]
        token: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Channels proxied to the app's HTTP backend: one declared here, more as `[[channels]]` in
/// the config file; and the bounds every backend is held to.
#[derive(Args, Clone)]
struct ProxyArgs {
    /// Declare a channel proxied to the app's backend: a topic (`lobby`) or a prefix ending in
    /// `*` (`room:*`). More in the config file as `[[channels]]`.
    #[arg(long, env = "FAWKES_CHANNEL_TOPIC")]
    channel_topic: Option<String>,
    /// Where its joins go (POST, JSON); unset: every join is accepted.
    #[arg(long, env = "FAWKES_CHANNEL_JOIN_URL", requires = "channel_topic")]
    channel_join_url: Option<String>,
    /// Where its client events go; unset: pushes are refused.
    #[arg(long, env = "FAWKES_CHANNEL_PUSH_URL", requires = "channel_topic")]
    channel_push_url: Option<String>,
    /// Where its leaves and closes are told (fire and forget).
    #[arg(long, env = "FAWKES_CHANNEL_LEAVE_URL", requires = "channel_topic")]
    channel_leave_url: Option<String>,
    /// Milliseconds one of its requests may take, queue wait included.
    #[arg(long, env = "FAWKES_CHANNEL_TIMEOUT_MS", default_value_t = proxy::config::DEFAULT_TIMEOUT_MS)]
    channel_timeout_ms: u64,
    /// Asked at every socket connect (WebSocket or LongPoll; POST, JSON `{event: "connect",
    /// params, user, socket_id, node}`): its `reply` allows (`ok`) or refuses (403), its
    /// `assigns` start every channel of the socket. No usable answer: refused (500).
    #[arg(long, env = "FAWKES_CONNECT_URL")]
    connect_url: Option<String>,
    /// Milliseconds the connect_url request may take, queue wait included.
    #[arg(long, env = "FAWKES_CONNECT_TIMEOUT_MS", default_value_t = proxy::config::DEFAULT_TIMEOUT_MS)]
    connect_timeout_ms: u64,
    /// Signs requests to backends (`x-fawkes-signature: sha256=<hex HMAC-SHA256(body)>`);
    /// required once a channel or a connect_url is declared.
    #[arg(long, env = "FAWKES_BACKEND_SECRET", hide_env_values = true)]
    backend_secret: Option<String>,
    /// A file holding the backend secret (instead of the flag).
    #[arg(
        long,
        env = "FAWKES_BACKEND_SECRET_FILE",
        conflicts_with = "backend_secret"
    )]
    backend_secret_file: Option<PathBuf>,
    /// A PEM file of the CAs that https backends' certificates must chain to (an app's private
    /// CA), instead of the system's root certificates.
    #[arg(long, env = "FAWKES_BACKEND_CA_FILE")]
    backend_ca_file: Option<PathBuf>,
    /// Requests in flight at once to one backend (one origin, `http(s)://host:port`).
    #[arg(long, env = "FAWKES_BACKEND_MAX_CONCURRENCY", default_value_t = BackendLimits::default().max_concurrency)]
    backend_max_concurrency: usize,
    /// Requests waiting for a free slot of one backend; one more fails at once.
    #[arg(long, env = "FAWKES_BACKEND_MAX_QUEUE", default_value_t = BackendLimits::default().max_queue)]
    backend_max_queue: usize,
    /// Largest backend answer read, in bytes; a longer one fails (`bad backend answer`).
    #[arg(long, env = "FAWKES_BACKEND_MAX_BODY_BYTES", default_value_t = BackendLimits::default().max_body_bytes)]
    backend_max_body_bytes: usize,
    /// Failures in a row (timeouts, unreachable, 5xx) that open a backend's circuit.
    #[arg(long, env = "FAWKES_BACKEND_CIRCUIT_FAILURES", default_value_t = BackendLimits::default().circuit_failures)]
    backend_circuit_failures: u32,
    /// Milliseconds an open circuit fails requests at once before one tries the backend again.
    #[arg(long, env = "FAWKES_BACKEND_CIRCUIT_OPEN_MS", default_value_t = BackendLimits::default().circuit_open.as_millis() as u64)]
    backend_circuit_open_ms: u64,
}

impl ProxyArgs {
    /// The declared channels (the file's, then the flags' one) and how to reach them.
    fn proxy(&self, tables: &[toml::Table], node: String) -> Result<proxy::Proxy, String> {
        let mut specs = tables
            .iter()
            .map(|t| proxy::config::ChannelSpec::from_toml(t.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(topic) = &self.channel_topic {
            specs.push(proxy::config::ChannelSpec {
                topic: topic.clone(),
                join_url: self.channel_join_url.clone(),
                push_url: self.channel_push_url.clone(),
                leave_url: self.channel_leave_url.clone(),
                timeout_ms: self.channel_timeout_ms,
            });
        }
        let settings = proxy::Settings {
            limits: BackendLimits {
                max_concurrency: self.backend_max_concurrency.max(1),
                max_queue: self.backend_max_queue,
                max_body_bytes: self.backend_max_body_bytes,
                circuit_failures: self.backend_circuit_failures.max(1),
                circuit_open: Duration::from_millis(self.backend_circuit_open_ms),
            },
            secret: secret(&self.backend_secret, &self.backend_secret_file)?,
            node,
            connect_url: self.connect_url.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            ca_file: self.backend_ca_file.clone(),
        };
        proxy::Proxy::new(specs, settings)
    }
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
    /// Largest `collection:<name>` join or reload reply, in bytes.
    #[arg(long, env = "FAWKES_COLLECTION_MAX_REPLY_BYTES", default_value_t = CollectionsConfig::default().max_reply_bytes)]
    collection_max_reply_bytes: usize,
    /// Largest voice signaling payload, in bytes.
    #[arg(long, env = "FAWKES_VOICE_MAX_SIGNAL_BYTES", default_value_t = ChatConfig::default().max_signal_bytes)]
    voice_max_signal_bytes: usize,
    /// Most members a chat room may have (each message records an event for every member).
    #[arg(long, env = "FAWKES_CHAT_MAX_ROOM_MEMBERS", default_value_t = ChatConfig::default().max_room_members)]
    chat_max_room_members: i64,
    /// LongPoll sessions alive at once (per mount); more are refused with 503.
    #[arg(long, env = "FAWKES_MAX_LONGPOLL_SESSIONS", default_value_t = Limits::default().max_longpoll_sessions)]
    max_longpoll_sessions: usize,
    /// New LongPoll sessions one client address may open per second; more get 429. 0: no
    /// limit (behind a proxy, every client has the proxy's address).
    #[arg(long, env = "FAWKES_MAX_LONGPOLL_OPENS_PER_IP", default_value_t = Limits::default().max_longpoll_opens_per_ip)]
    max_longpoll_opens_per_ip: u32,
    /// Longest topic a client may join, in bytes.
    #[arg(long, env = "FAWKES_MAX_TOPIC_BYTES", default_value_t = Limits::default().max_topic_bytes)]
    max_topic_bytes: usize,
    #[command(flatten)]
    rules: RulesArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    server_api: ServerApiArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    supabase: SupabaseArgs,
    /// Events kept per recorded topic (community:feed, channel:, thread:, user:) for replay.
    #[arg(long, env = "FAWKES_HISTORY_MAX_EVENTS", default_value_t = Retention::default().max_events)]
    history_max_events: i64,
    /// Seconds a recorded event is kept for replay.
    #[arg(long, env = "FAWKES_HISTORY_MAX_AGE", default_value_t = Retention::default().max_age.as_secs())]
    history_max_age: u64,
    /// Writes (REST, channel pushes) waiting or running at once; one more is refused at once
    /// with 503 rather than queued while the database is slow or down.
    #[arg(long, env = "FAWKES_MAX_PENDING_WRITES", default_value_t = fawkes::history::DEFAULT_MAX_PENDING_WRITES)]
    max_pending_writes: usize,
    /// Retention for topics with a prefix, `PREFIX=EVENTS/SECONDS` (e.g. `user:=200/3600`);
    /// repeat or separate with commas. The longest matching prefix wins.
    #[arg(long, env = "FAWKES_HISTORY_RETENTION", value_delimiter = ',', value_parser = HistoryConfig::parse_rule)]
    history_retention: Vec<(String, Retention)>,
    #[arg(long, env = "FAWKES_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "FAWKES_PORT", default_value_t = 4000)]
    port: u16,
    /// Worker threads (default: one per core).
    #[arg(long, env = "FAWKES_WORKERS")]
    workers: Option<usize>,
    /// Threads each worker may run database calls on at once; more wait their turn without a
    /// thread. The SQLite store has 4 pooled connections, the PostgreSQL one 16.
    #[arg(long, env = "FAWKES_BLOCKING_THREADS", default_value_t = fawkes::server::DEFAULT_BLOCKING_THREADS)]
    blocking_threads: usize,
    /// Largest client WebSocket message, in bytes (closed with 1009 above it).
    #[arg(long, env = "FAWKES_MAX_FRAME_SIZE", default_value_t = Limits::default().max_frame_size)]
    max_frame_size: usize,
    /// Frames one client WebSocket message may come in (closed with 1009 above it).
    #[arg(long, env = "FAWKES_MAX_FRAGMENTS", default_value_t = Limits::default().max_fragments)]
    max_fragments: usize,
    /// Channels one socket may join at once.
    #[arg(long, env = "FAWKES_MAX_CHANNELS", default_value_t = Limits::default().max_channels)]
    max_channels: usize,
    /// Frames queued for one client before it is closed as too slow (1013).
    #[arg(long, env = "FAWKES_MAX_QUEUE", default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Bytes queued for one client (and, apart, in its mailbox) before it is closed as too
    /// slow (1013).
    #[arg(long, env = "FAWKES_MAX_QUEUE_BYTES", default_value_t = Limits::default().max_queue_bytes)]
    max_queue_bytes: usize,
    /// Seconds without a frame from a client before its socket is closed.
    #[arg(long, env = "FAWKES_IDLE_TIMEOUT", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
    /// Frames per second one socket may send, a fragment or a ping counting as one (reads slow
    /// down beyond it); 0 for no limit.
    #[arg(long, env = "FAWKES_MAX_MESSAGES_PER_SECOND", default_value_t = Limits::default().max_messages_per_second)]
    max_messages_per_second: u32,
    /// Costly pushes (a database query, a large reply) one socket may make per second; 0 for no
    /// limit.
    #[arg(long, env = "FAWKES_MAX_COSTLY_PUSHES_PER_SECOND", default_value_t = Limits::default().max_costly_pushes_per_second)]
    max_costly_pushes_per_second: u32,
    /// Bytes of costly pushes' replies one socket may receive per second; 0 for no limit.
    #[arg(long, env = "FAWKES_MAX_COSTLY_REPLY_BYTES_PER_SECOND", default_value_t = Limits::default().max_costly_reply_bytes_per_second)]
    max_costly_reply_bytes_per_second: usize,
    /// Allowed origins, comma-separated (e.g. `https://example.com,//*.example.org`); unset: any.
    #[arg(long, env = "FAWKES_CHECK_ORIGIN", value_delimiter = ',')]
    check_origin: Vec<String>,
    /// Seconds a LongPoll GET waits for messages before answering 204 (keep it under phoenix.js's 20 s).
    #[arg(long, env = "FAWKES_LONGPOLL_WINDOW", default_value_t = Config::default().longpoll_window.as_secs())]
    longpoll_window: u64,
    /// Key that signs LongPoll session tokens; a random one per process when unset.
    #[arg(long, env = "FAWKES_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// A PEM certificate chain: serve TLS only (`wss://`, `https://`); needs --tls-key.
    #[arg(long, env = "FAWKES_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FAWKES_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    cluster: fawkes::cluster::ClusterArgs,
    /// Seconds shutdown waits for connections to close.
    #[arg(long, env = "FAWKES_SHUTDOWN_TIMEOUT", default_value_t = Config::default().shutdown_timeout.as_secs())]
    shutdown_timeout: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, a listener of their own (e.g.
    /// 127.0.0.1:9100). Off by default.
    #[arg(long, env = "FAWKES_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Require `Authorization: Bearer <token>` for /metrics. Without --metrics-addr, /metrics is
    /// then served on the main listener.
    #[arg(long, env = "FAWKES_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Let the demo pages create users with one click (POST /demo/users), and let any signed-in
    /// user move the café's orders. For trying Fawkes out, not for production.
    #[arg(long, env = "FAWKES_DEMO")]
    demo: bool,
    /// Most users --demo creates while the server runs.
    #[arg(long, env = "FAWKES_DEMO_MAX_USERS", default_value_t = 1000)]
    demo_max_users: usize,
    /// Milliseconds between two samples of the gauges the inspector charts (100 to 60,000); the
    /// last 15 minutes of samples are kept.
    #[arg(long, env = "FAWKES_INSPECTOR_SAMPLE_MS", default_value_t = fawkes::inspector::gauges::DEFAULT_PERIOD_MS,
          value_parser = clap::value_parser!(u64).range(fawkes::inspector::gauges::MIN_PERIOD_MS..=fawkes::inspector::gauges::MAX_PERIOD_MS))]
    inspector_sample_ms: u64,
}

impl ServeArgs {
    fn config(&self) -> Config {
        Config {
            limits: Limits {
                max_frame_size: self.max_frame_size,
                max_fragments: self.max_fragments.max(1),
                max_channels: self.max_channels,
                max_queue: self.max_queue.max(1),
                max_queue_bytes: self.max_queue_bytes.max(1),
                max_topic_bytes: self.max_topic_bytes,
                max_longpoll_sessions: self.max_longpoll_sessions,
                max_longpoll_opens_per_ip: self.max_longpoll_opens_per_ip,
                idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
                max_messages_per_second: self.max_messages_per_second,
                max_costly_pushes_per_second: self.max_costly_pushes_per_second,
                max_costly_reply_bytes_per_second: self.max_costly_reply_bytes_per_second,
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

/// Logs as text (env_logger's own format) or as one JSON object a line.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // The config file feeds the flags' environment variables before clap reads them.
    let args: Vec<String> = std::env::args().collect();
    let applied = match fawkes::config_file::locate(&args) {
        Some((path, asked)) if asked || path.exists() => {
            match fawkes::config_file::apply(&path, &Cli::command()) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("fawkes: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => Default::default(),
    };
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    if let Some(path) = &applied.path {
        log::info!("configuration file {}", path.display());
    }
    let result = match cli.command {
        Command::Config(ConfigCommand::Print(_)) => print_config(&matches, &applied),
        Command::Serve(args) => actix_web::rt::System::new()
            .block_on(serve(*args, &applied.channels))
            .map_err(|e| e.to_string()),
        Command::Migrate(db) => {
            open(&db).map(|_| println!("database {} is up to date", db.database_url))
        }
        Command::Users(UsersCommand::Create {
            name,
            community_member,
            admin,
            external_id,
            db,
        }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            let new = accounts::NewUser {
                name,
                community_member,
                admin,
                external_id,
            };
            let (user, token) = accounts::create(&mut c, &new).map_err(|e| e.to_string())?;
            println!("created user {} (id {})", user.name, user.id);
            println!("{token}");
            Ok(())
        }),
        Command::Users(UsersCommand::SetExternalId {
            name,
            external_id,
            db,
        }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            accounts::set_external_id(&mut c, &name, &external_id).map_err(|e| e.to_string())?;
            println!("{name} now has the external id {external_id}");
            Ok(())
        }),
        Command::Tokens(TokensCommand::Create { user, db }) => open(&db).and_then(|store| {
            let mut c = store.conn().map_err(|e| e.to_string())?;
            let token = accounts::create_token(&mut c, &user).map_err(|e| e.to_string())?;
            println!("created a token for {user}");
            println!("{token}");
            Ok(())
        }),
        Command::Tokens(TokensCommand::Phoenix {
            user,
            max_age,
            phoenix,
            db,
        }) => mint_phoenix_token(&user, max_age, &phoenix, &db),
        Command::Supabase(SupabaseCommand::Keys { ttl, secret }) => secret.required().map(|keys| {
            let now = unix_now();
            for (var, role) in [
                ("SUPABASE_ANON_KEY", "anon"),
                ("SUPABASE_SERVICE_ROLE_KEY", "service_role"),
            ] {
                let claims = serde_json::json!({
                    "iss": "supabase", "ref": "fawkes", "role": role, "iat": now, "exp": now + ttl,
                });
                println!("{var}={}", keys.sign(&claims));
            }
        }),
        Command::Supabase(SupabaseCommand::Token {
            sub,
            role,
            ttl,
            secret,
        }) => secret.required().map(|keys| {
            let now = unix_now();
            let claims = serde_json::json!({
                "aud": "authenticated", "iss": "supabase", "sub": sub, "role": role,
                "iat": now, "exp": now + ttl,
            });
            println!("{}", keys.sign(&claims));
        }),
        Command::Collections(CollectionsCommand::Rules { rules }) => rules.book().map(|book| {
            print!("{}", book.table());
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

fn mint_phoenix_token(
    name: &str,
    max_age: i64,
    phoenix: &PhoenixTokenArgs,
    db: &DbArgs,
) -> Result<(), String> {
    let tokens = phoenix.tokens(None)?.ok_or(
        "minting a Phoenix.Token needs the app's secret_key_base (--phoenix-secret-key-base)",
    )?;
    let store = open(db)?;
    let mut c = store.conn().map_err(|e| e.to_string())?;
    let user = accounts::user_by_name(&mut c, name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user named {name}"))?;
    // Tokens name users by external id only (see accounts::user_by_subject).
    let ext = accounts::external_id(&mut c, user.id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} has no external id: a Phoenix.Token names a user by external id only \
                 (give them one with `users create --external-id`, or sign in with an API token \
                 from `tokens create`)",
                user.name
            )
        })?;
    let data = ext.parse().map(Subject::Int).unwrap_or(Subject::Str(ext));
    let token = tokens.sign(&data, fawkes::store::now_ms(), max_age);
    println!(
        "a Phoenix.Token for {} (data {data}, valid {max_age} s)",
        user.name
    );
    println!("{token}");
    Ok(())
}

/// `fawkes config print`: every `serve` setting, its value and where it came from; then the
/// file's `[[channels]]`, as TOML that reads back (an invalid one is the error `serve` gives).
fn print_config(
    matches: &clap::ArgMatches,
    applied: &fawkes::config_file::Applied,
) -> Result<(), String> {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    let Some((_, sub)) = matches.subcommand() else {
        return Ok(());
    };
    let Some((_, args)) = sub.subcommand() else {
        return Ok(());
    };
    let channels = applied
        .channels
        .iter()
        .map(|t| proxy::config::ChannelSpec::from_toml(t.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let cmd = Cli::command();
    let print = cmd
        .find_subcommand("config")
        .and_then(|c| c.find_subcommand("print"))
        .expect("config print");
    let globals: Vec<clap::Arg> = cmd.get_arguments().cloned().collect();
    if let Some(path) = &applied.path {
        println!("# config file: {}", path.display());
    }
    for arg in print.get_arguments().chain(globals.iter()) {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "help" | "version") {
            continue;
        }
        let source = if globals.iter().any(|g| g.get_id() == arg.get_id()) {
            matches.value_source(id)
        } else {
            args.value_source(id)
        };
        let values: Vec<String> = if globals.iter().any(|g| g.get_id() == arg.get_id()) {
            matches.get_raw(id)
        } else {
            args.get_raw(id)
        }
        .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let from = match source {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => {
                if env.as_ref().is_some_and(|e| applied.set.contains(e)) {
                    "file"
                } else {
                    "env"
                }
            }
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let shown = if values.is_empty() {
            "(unset)".to_owned()
        } else if long == "redis-url" {
            // Where Redis is, without its password.
            fawkes::cluster::redis_server::mask_password(&values.join(","))
        } else if fawkes::config_file::is_secret(long, arg.is_hide_env_values_set()) {
            "***".to_owned()
        } else if long == "database-url" {
            fawkes::config_file::mask_url(&values.join(","))
        } else {
            values.join(",")
        };
        println!("{long} = {shown}  # {from}");
    }
    if !channels.is_empty() {
        println!("\n# declared channels  # file");
    }
    for spec in channels {
        print!("\n{}", spec.to_toml());
    }
    Ok(())
}

fn open(db: &DbArgs) -> Result<Store, String> {
    Store::open(&db.database_url).map_err(|e| format!("{}: {e}", db.database_url))
}

async fn serve(args: ServeArgs, channels: &[toml::Table]) -> std::io::Result<()> {
    use fawkes::apps::collections::rules::{Rule, Rules};
    use fawkes::server::exposition::MetricsConfig;
    let verifiers = args.auth.verifiers().map_err(std::io::Error::other)?;
    let mut rules = args.rules.book().map_err(std::io::Error::other)?;
    if args.demo {
        // The café's staff all move orders: any signed-in user, unless a rules file says else.
        rules.set_if_absent(
            "orders",
            Rules {
                update: Rule::Auth,
                delete: Rule::Auth,
                ..Rules::default()
            },
        );
    }
    let store = open(&args.db).map_err(std::io::Error::other)?;
    let endpoint = Endpoint::new(args.config());
    let server_api = (args
        .server_api
        .api(&endpoint)
        .map_err(std::io::Error::other)?)
    .map(actix_web::web::Data::new);
    let mut state = AppState::new(
        store,
        endpoint.clone(),
        AppLimits {
            max_post_length: args.max_post_length,
        },
        CollectionsConfig {
            log_size: args.collection_log_size.max(1),
            join_limit: args.collection_join_limit,
            max_reply_bytes: args.collection_max_reply_bytes,
            rules,
        },
    );
    state.chat = ChatConfig {
        max_body: args.chat_max_body,
        rate_count: args.chat_rate_count.max(1),
        rate_window: Duration::from_secs(args.chat_rate_window.max(1)),
        max_signal_bytes: args.voice_max_signal_bytes,
        max_room_members: args.chat_max_room_members.max(1),
        ..ChatConfig::default()
    };
    state.auth = verifiers;
    state.history = History::new(
        state.store.clone(),
        HistoryConfig {
            default: Retention {
                max_events: args.history_max_events.max(1),
                max_age: Duration::from_secs(args.history_max_age.max(1)),
            },
            by_prefix: args.history_retention.clone(),
        },
    )
    .with_max_pending_writes(args.max_pending_writes);
    state.history.sweep_every(Duration::from_secs(60));
    let cluster = args.cluster.config().map_err(std::io::Error::other)?;
    let node = cluster
        .as_ref()
        .map_or_else(fawkes::cluster::default_node_name, |c| c.node_name.clone());
    state.proxy = args
        .proxy
        .proxy(channels, node)
        .map_err(std::io::Error::other)?;
    for origin in state.proxy.backends() {
        log::info!("proxied channels: backend {origin}");
    }
    let cdc = (args.supabase)
        .cdc(&args.db.database_url)
        .map_err(std::io::Error::other)?;
    if let Some(c) = &cdc {
        // At start, so that a database that cannot capture stops `serve` with the reason.
        fawkes::store::cdc::prepare(&args.db.database_url, c).map_err(std::io::Error::other)?;
        fawkes::store::cdc::start(args.db.database_url.clone(), c.clone(), endpoint.clone());
    }
    let realtime = (args.supabase.realtime().map_err(std::io::Error::other)?).map(|mut r| {
        r.collection_rules = state.collections.rules.clone();
        if let Some(c) = cdc {
            r.cdc_tables = c.tables;
            r.row_security = Some(std::sync::Arc::new(
                fawkes::apps::realtime::rls::RowSecurity::new(state.store.clone()),
            ));
        }
        r.store = Some(state.store.clone());
        std::sync::Arc::new(r)
    });
    state.realtime = realtime.clone();
    let realtime_on = realtime.is_some();
    let cluster_config = cluster;
    let mut cluster = None;
    if let Some(c) = cluster_config {
        if !args.db.database_url.starts_with("postgres") {
            log::warn!("cluster: nodes on SQLite do not share their data; several nodes need one PostgreSQL database");
        }
        let key = (state.store.write(fawkes::history::cluster_key).await)
            .map_err(|e| std::io::Error::other(format!("reading the cluster key: {e}")))?;
        let recorded = fawkes::cluster::Recorded {
            prefixes: apps::RECORDED_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            change_log: std::sync::Arc::new(fawkes::history::ChangeLog(state.store.clone())),
            key: fawkes::cluster::SealKey::new(key),
        };
        // Before listening: a node whose Redis it cannot trust or sign in to does not start.
        cluster = Some(
            fawkes::cluster::Cluster::start(&endpoint, c, Some(recorded))
                .await
                .map_err(std::io::Error::other)?,
        );
    }
    let proxied = state.proxy.patterns();
    let state = actix_web::web::Data::new(state);
    accounts::watch_revocations(state.store.clone(), state.endpoint.clone());
    let socket = apps::socket(state.clone()).map_err(std::io::Error::other)?;
    let tls = args.tls_cert.is_some();
    let metrics = MetricsConfig {
        endpoint: endpoint.clone(),
        token: args.metrics_token.clone().filter(|t| !t.is_empty()),
    };
    if args.metrics_token.as_deref() == Some("") {
        return Err(std::io::Error::other("--metrics-token is empty"));
    }
    // Without a listener of its own, /metrics is only served behind a token.
    let metrics_on_main = args.metrics_addr.is_none() && metrics.token.is_some();
    let demo = actix_web::web::Data::new(
        fawkes::demo::DemoConfig::new(args.demo, args.demo_max_users).with_proxied(proxied),
    );
    let inspector = actix_web::web::Data::new(fawkes::inspector::Inspector::new(
        endpoint.clone(),
        tls,
        Duration::from_millis(args.inspector_sample_ms),
    ));
    let main_metrics = metrics.clone();
    let realtime_rest = realtime.as_ref().map(|r| {
        actix_web::web::Data::new(realtime::rest::Rest {
            realtime: r.clone(),
            endpoint: endpoint.clone(),
        })
    });
    let mut server = Server::new(endpoint)
        .socket("/socket", socket.clone())
        .socket("/community", socket);
    if let Some(r) = &realtime {
        server = server.socket(realtime::MOUNT, r.socket());
    }
    let mut server = server.routes(move |cfg| {
        if let Some(rest) = &realtime_rest {
            realtime::rest::routes(cfg, rest.clone());
        }
        apps::routes(cfg, state.clone());
        fawkes::demo::routes(cfg, demo.clone());
        fawkes::inspector::routes(cfg, inspector.clone());
        if let Some(api) = &server_api {
            apps::server_api::routes(cfg, api.clone());
        }
        if metrics_on_main {
            fawkes::server::exposition::routes(cfg, main_metrics.clone());
        }
    });
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    server = server.blocking_threads(args.blocking_threads);
    let (http, ws) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            server = server.tls(fawkes::server::tls_config(cert, key)?);
            ("https", "wss")
        }
        _ => ("http", "ws"),
    };
    let running = server.bind((args.host.as_str(), args.port))?;
    let metrics_url = match &args.metrics_addr {
        Some(addr) => {
            let config = metrics.clone();
            let http_server = actix_web::HttpServer::new(move || {
                let config = config.clone();
                actix_web::App::new()
                    .configure(move |cfg| fawkes::server::exposition::routes(cfg, config.clone()))
            })
            .workers(1)
            .disable_signals()
            .bind(addr.as_str())?;
            let bound = http_server.addrs()[0];
            actix_rt::spawn(http_server.run());
            format!("http://{bound}/metrics")
        }
        None if metrics_on_main => format!("{http}://{}/metrics", running.local_addr()),
        None => "off (give --metrics-addr or --metrics-token)".to_owned(),
    };
    // One write, errors ignored: whoever started us may stop reading after the first line.
    let supabase = match realtime_on {
        true => format!(
            "{http}://{}  (createClient's URL; keys: fawkes supabase keys)",
            running.local_addr()
        ),
        false => "off (give --supabase-jwt-secret)".to_owned(),
    };
    let banner = format!(
        "fawkes listening on {http}://{addr} (database {db}; sockets at {ws}://{addr}/socket and {ws}://{addr}/community)\n  \
         demo pages: {http}://{addr}/{demo}\n  \
         inspector:  {http}://{addr}/admin\n  \
         metrics:    {metrics_url}\n  \
         supabase:   {supabase}\n",
        addr = running.local_addr(),
        db = fawkes::config_file::mask_url(&args.db.database_url),
        demo = if args.demo { " (--demo: one-click users)" } else { "" },
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    let stopped = running.run().await;
    if let Some(c) = &cluster {
        c.leave().await;
    }
    stopped
}
