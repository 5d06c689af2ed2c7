//! The Redis server a node links to: the one place its client is built from `--redis-url`
//! (`redis://`, or `rediss://` for TLS; a user and password in the URL) and `--redis-ca-file`,
//! the URL as logs and errors show it (password masked), and which failures to reach it are a
//! node's own to fix rather than to wait out.
//!
//! TLS is the redis crate's own, on rustls with the ring provider as the rest of the server:
//! with a CA file only its CAs are trusted (as `curl --cacert`), without one the system's roots.

use redis::{ErrorKind, RedisError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a node reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisServer {
    /// Opens connections (their Debug output masks the password).
    pub client: redis::Client,
    /// The URL with its password masked: the only form logs and errors show.
    pub shown: String,
    /// The `--redis-ca-file`, if any: said in a TLS failure.
    ca_file: Option<PathBuf>,
}

impl RedisServer {
    /// The client of `url`, trusting the CAs of `ca_file` (PEM) for `rediss://` if given.
    /// Nothing is connected yet; a URL the client cannot take or a CA file without a
    /// certificate is an error here.
    pub fn open(url: &str, ca_file: Option<&Path>) -> Result<RedisServer, String> {
        let shown = mask_password(url);
        // The schemes the redis crate speaks TLS on.
        let tls = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "rediss" | "valkeys"));
        let client = match ca_file {
            None => redis::Client::open(url),
            Some(path) if tls => {
                let pem = read_ca_file(path)?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            Some(_) => {
                return Err(format!(
                    "--redis-ca-file is for TLS, but --redis-url {shown} is not rediss://"
                ))
            }
        }
        .map_err(|e| format!("--redis-url {shown}: {e}"))?;
        if tls {
            // The redis crate builds its TLS settings with the process's default provider;
            // ring's, as everywhere else here, whatever else the dependencies enable. Once
            // installed, the later calls change nothing.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Ok(RedisServer {
            client,
            shown,
            ca_file: ca_file.map(Path::to_owned),
        })
    }

    /// Why a failure to connect cannot pass by waiting: the server's certificate does not
    /// verify (or TLS cannot be spoken with it), it refuses the URL's credentials, or their user
    /// lacks a permission. `None` for what may pass: Redis down, unreachable or slow. A node
    /// refuses to start on the first kind.
    pub fn refusal(&self, e: &RedisError) -> Option<String> {
        if let Some(tls) = tls_failure(e) {
            let trusted = match &self.ca_file {
                Some(f) => format!("trusting only the CAs of {}", f.display()),
                None => "trusting the system's root certificates; a private CA's certificate \
                         needs --redis-ca-file"
                    .to_owned(),
            };
            return Some(format!("TLS: {tls} ({trusted})"));
        }
        let credentials = e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"));
        if credentials {
            return Some(format!(
                "the user or password of --redis-url was refused: {e}"
            ));
        }
        if e.code() == Some("NOPERM") {
            return Some(format!(
                "the user of --redis-url may not do what the link does (SUBSCRIBE and PUBLISH \
                 on the cluster's channels): {e}"
            ));
        }
        (e.kind() == ErrorKind::InvalidClientConfig).then(|| e.to_string())
    }
}

/// The PEM of a CA file, checked to hold at least one certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("--redis-ca-file {}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(&e))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(bad(&"no certificate in it"));
    }
    Ok(pem)
}

/// `url` with the password of its user info as `***` (`rediss://user:***@host:port`). A URL
/// that does not parse is not shown at all: where its password is cannot be told.
pub fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(a URL that does not parse, not shown)".to_owned(),
    }
}

/// A rustls error under `e`: its I/O error wraps one when the handshake failed. The redis crate
/// keeps its cause behind an `Arc`, which `source()` does not see through, hence the downcasts.
fn tls_failure(e: &RedisError) -> Option<String> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let source = std::error::Error::source(e)?;
    let inner: &(dyn std::error::Error + 'static) = match source.downcast_ref::<Shared>() {
        Some(shared) => &**shared,
        None => source,
    };
    let cause = match inner.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref()?,
        None => inner,
    };
    if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if cause.is::<rustls::pki_types::InvalidDnsNameError>() {
        return Some(format!(
            "the host is no name a certificate can be for: {cause}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("rediss://:secret@127.0.0.1:6380"),
            "rediss://:***@127.0.0.1:6380"
        );
        assert_eq!(
            mask_password("redis://app:s3cr%40t@redis.internal:6379/2"),
            "redis://app:***@redis.internal:6379/2"
        );
        assert_eq!(
            mask_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            mask_password("redis//:secret@nowhere"),
            "(a URL that does not parse, not shown)"
        );
    }

    #[test]
    fn a_ca_file_is_for_tls_urls() {
        let dir = std::env::temp_dir().join(format!("fawkes-redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = RedisServer::open("redis://:pw@127.0.0.1:6379", Some(&empty)).unwrap_err();
        assert_eq!(
            err,
            "--redis-ca-file is for TLS, but --redis-url redis://:***@127.0.0.1:6379 is not rediss://"
        );
        let err = RedisServer::open("rediss://:pw@127.0.0.1:6379", Some(&empty)).unwrap_err();
        assert_eq!(
            err,
            format!("--redis-ca-file {}: no certificate in it", empty.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
