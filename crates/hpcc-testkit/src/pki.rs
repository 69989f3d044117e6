//! A throwaway certificate authority and a server certificate it signed for `localhost` and
//! 127.0.0.1, for the tests that run servers over TLS (the scheduler and workers, the IdP).

/// A CA and a loopback server certificate.
pub struct Pki {
    /// The CA's certificate, PEM: what clients are told to trust.
    pub ca_pem: String,
    /// The server's certificate, PEM.
    pub cert_pem: String,
    /// The server's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The server's certificate, DER.
    pub cert_der: Vec<u8>,
    /// The server's private key, DER (PKCS#8).
    pub key_der: Vec<u8>,
}

impl Pki {
    /// A new CA named `name` and a certificate for loopback signed by it.
    pub fn new(name: &str) -> Result<Pki, String> {
        let text = |error: rcgen::Error| format!("making the test CA {name}: {error}");
        let ca_key = rcgen::KeyPair::generate().map_err(text)?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(text)?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("hpcc test CA {name}"));
        let ca_cert = ca.self_signed(&ca_key).map_err(text)?;
        let key = rcgen::KeyPair::generate().map_err(text)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(text)?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(text)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// A rustls server configuration presenting this certificate.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .map_err(|error| error.to_string())?;
        Ok(std::sync::Arc::new(config))
    }
}
