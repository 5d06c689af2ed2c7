//! How backends are reached over `https://`: rustls on the ring provider (as the server's own
//! TLS), trusting the system's root certificates, or with `--backend-ca-file` that file's CAs
//! only (an app's private CA: then nothing else is trusted for its backends, as `curl
//! --cacert` does). A certificate that does not verify fails the request as unreachable.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// The TLS settings of every backend request. `https`: whether any backend is reached over
/// https (else the roots are not loaded: no request will use them).
pub fn client_config(ca_file: Option<&Path>, https: bool) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        let bad = |e: rustls::pki_types::pem::Error| format!("{}: {e}", path.display());
        for cert in CertificateDer::pem_file_iter(path).map_err(bad)? {
            roots
                .add(cert.map_err(bad)?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
    } else if https {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            log::warn!("system root certificates: {e}");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "https backends: no system root certificates found; give the backends' CA \
                 with --backend-ca-file"
                    .into(),
            );
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // Requests are HTTP/1.1 over kept-alive connections, as to http backends.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
