//! Peer identities: a client certificate that chains to the CA must also be valid for one of
//! `internal-tls.allowed-peer-names` (its DNS or IP subject alternative names, wildcards as in
//! server certificates). The check runs inside the handshake, in the client-certificate
//! verifier, so a refused peer gets a TLS alert (`bad_certificate`) and no request of it is
//! ever read. The router's side — the processor's server certificate valid for
//! `internal-tls.server-name` or the endpoint's host — is rustls's own server verification
//! (`super::connect`).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Whether `cert` (DER, the peer's leaf) is valid for one of `allowed`; an empty list allows
/// every certificate.
pub fn check_peer_name(
    cert: &CertificateDer<'_>,
    allowed: &[ServerName<'static>],
) -> Result<(), rustls::Error> {
    if allowed.is_empty() {
        return Ok(());
    }
    let leaf = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if allowed
        .iter()
        .any(|name| leaf.verify_is_valid_for_subject_name(name).is_ok())
    {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }
}

/// A client-certificate verifier that checks the chain (the wrapped verifier) and then the
/// peer's name ([`check_peer_name`]).
#[derive(Debug)]
pub struct NamedPeers {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl NamedPeers {
    /// `inner` with the name check on top (none when `allowed` is empty).
    pub fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        allowed: Vec<ServerName<'static>>,
    ) -> Arc<dyn ClientCertVerifier> {
        if allowed.is_empty() {
            return inner;
        }
        Arc::new(Self { inner, allowed })
    }
}

impl ClientCertVerifier for NamedPeers {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer_name(end_entity, &self.allowed).inspect_err(|_| {
            tracing::warn!(
                allowed = ?self.allowed,
                "refused a client certificate of the CA that is valid for none of internal-tls.allowed-peer-names"
            );
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
