//! Creating an S3 bucket, for `auto_create = true` (OpenDAL reads and writes objects but does
//! not create buckets). The request is signed with the same AWS credential chain and SigV4
//! signer OpenDAL's S3 service uses, and sent through OpenDAL's HTTP transport.

use std::time::Duration;

use bytes::Bytes;
use opendal::{Buffer, HttpTransporter};
use reqsign_aws_v4::{DefaultCredentialProvider, RequestSigner};
use reqsign_core::{Context, OsEnv, Signer};
use reqsign_file_read_tokio::TokioFileRead;

use hpcc_core::config::{Backend, RemoteConfig};

use super::RemoteError;

/// What an S3 `CreateBucket` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The bucket was made.
    Made,
    /// It existed already, owned by these credentials.
    Existed,
}

/// Creates `bucket` at `endpoint` (default: AWS for `region`) unless it exists, within
/// `timeout`.
pub async fn create_bucket(
    store: &str,
    endpoint: Option<&str>,
    bucket: &str,
    region: &str,
    virtual_host_style: bool,
    timeout: Duration,
) -> Result<Created, RemoteError> {
    let failed = |message: String| RemoteError::Config {
        store: store.to_owned(),
        message: format!("creating bucket {bucket}: {message}"),
    };
    let endpoint = endpoint
        .map(|endpoint| endpoint.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let url = if virtual_host_style {
        let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", &endpoint));
        format!("{scheme}://{bucket}.{host}/")
    } else {
        format!("{endpoint}/{bucket}")
    };
    // Outside us-east-1 the region must be named in the body.
    let body = if region == "us-east-1" {
        Bytes::new()
    } else {
        Bytes::from(format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        ))
    };
    opendal::install_default();
    let context = Context::new()
        .with_file_read(TokioFileRead)
        .with_env(OsEnv)
        .with_http_send(HttpTransporter::default());
    let signer = Signer::new(
        context,
        DefaultCredentialProvider::new(),
        RequestSigner::new("s3", region),
    );
    let request = http::Request::put(&url)
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(())
        .map_err(|error| failed(format!("bad URL {url}: {error}")))?;
    let (mut parts, ()) = request.into_parts();
    let send = async {
        signer
            .sign(&mut parts, None)
            .await
            .map_err(|error| failed(format!("signing: {error}")))?;
        let request = http::Request::from_parts(parts, Buffer::from(body));
        let response = HttpTransporter::default()
            .send(request)
            .await
            .map_err(|error| failed(format!("{error}")))?;
        let status = response.status();
        let text = String::from_utf8_lossy(&response.into_body().to_bytes()).into_owned();
        if status.is_success() {
            Ok(Created::Made)
        } else if status == http::StatusCode::CONFLICT && text.contains("BucketAlreadyOwnedByYou") {
            Ok(Created::Existed)
        } else {
            let excerpt: String = text.chars().take(300).collect();
            Err(failed(format!("{status}: {excerpt}")))
        }
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| RemoteError::Timeout {
            store: store.to_owned(),
            operation: "create bucket",
            path: bucket.to_owned(),
            after: timeout,
        })?
}

/// Creates the buckets of the S3 stores in `config` (itself, or a cluster's members) that
/// have `auto_create`, before anything is written to them: each bucket's name and what its
/// creation came to. A failure is for the caller to report; the store is used as it is, and
/// its calls then fail and are counted.
pub async fn create_configured_buckets(
    config: &RemoteConfig,
) -> Vec<(String, Result<Created, RemoteError>)> {
    let mut outcomes = Vec::new();
    for store in buckets_to_create(config) {
        let Backend::S3 {
            bucket,
            endpoint,
            region,
            virtual_host_style,
            ..
        } = &store.backend
        else {
            continue;
        };
        let region = region.as_deref().unwrap_or("us-east-1");
        let timeout = Duration::from_millis(store.options.write_timeout_ms);
        let outcome = create_bucket(
            &store.display_name(),
            endpoint.as_deref(),
            bucket,
            region,
            *virtual_host_style,
            timeout,
        )
        .await;
        outcomes.push((bucket.clone(), outcome));
    }
    outcomes
}

/// The S3 stores of `config` (itself, or a cluster's members) that have `auto_create`.
fn buckets_to_create(config: &RemoteConfig) -> Vec<&RemoteConfig> {
    match &config.backend {
        Backend::S3 {
            auto_create: true, ..
        } => vec![config],
        Backend::Cluster { endpoints, .. } => {
            endpoints.iter().flat_map(buckets_to_create).collect()
        }
        _ => Vec::new(),
    }
}
