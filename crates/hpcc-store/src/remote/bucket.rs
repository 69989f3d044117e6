//! Creating an S3 bucket, for `auto_create = true` (OpenDAL reads and writes objects but does
//! not create buckets). The request is signed with the same AWS credential chain and SigV4
//! signer OpenDAL's S3 service uses, and sent through OpenDAL's HTTP transport.

use std::time::Duration;

use bytes::Bytes;
use opendal::{Buffer, HttpTransporter};
use reqsign_aws_v4::{DefaultCredentialProvider, RequestSigner};
use reqsign_core::{Context, OsEnv, Signer};
use reqsign_file_read_tokio::TokioFileRead;

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
