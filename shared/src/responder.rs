//! Answering CloudFormation: a custom resource's response is a JSON document PUT to the
//! presigned S3 URL its request carries (`ResponseURL`). One capability, so handlers can be
//! tested with a fake that records the answers.

use std::sync::OnceLock;

use async_trait::async_trait;
use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceResponse;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::error::{AwsError, ErrorKind};

/// One capability: deliver a response document to a request's `ResponseURL`.
#[async_trait]
pub trait Responder: Send + Sync {
    async fn respond(&self, url: &str, response: &CloudFormationCustomResourceResponse) -> Result<(), AwsError>;
}

pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// An HTTPS (and, for LocalStack, HTTP) client with hyper and rustls, trusting the machine's
/// root certificates.
pub(crate) fn https_client() -> Result<HttpsClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates on this machine: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// HTTPS (and, for LocalStack, HTTP) PUT with hyper and rustls. The client (and the TLS roots
/// it loads from the machine) is built on the first answer: most invocations never answer.
#[derive(Default)]
pub struct HttpResponder {
    client: OnceLock<Result<HttpsClient, String>>,
}

impl HttpResponder {
    fn client(&self) -> Result<&HttpsClient, AwsError> {
        let built = self.client.get_or_init(https_client);
        built.as_ref().map_err(|e| AwsError::new(ErrorKind::Other, "answering CloudFormation", e.clone()))
    }
}

/// Where a response goes, without the presigned query (its signature is a credential).
fn redacted(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[async_trait]
impl Responder for HttpResponder {
    async fn respond(&self, url: &str, response: &CloudFormationCustomResourceResponse) -> Result<(), AwsError> {
        let context = format!("answering CloudFormation at {}", redacted(url));
        let body = serde_json::to_vec(response).expect("responses serialize");
        let request = http::Request::put(url)
            // The presigned URL is signed without a content type; CloudFormation's own
            // helpers send an empty one.
            .header(http::header::CONTENT_TYPE, "")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| AwsError::new(ErrorKind::Validation, context.clone(), e.to_string()))?;
        let reply = self
            .client()?
            .request(request)
            .await
            .map_err(|e| AwsError::new(ErrorKind::Transient, context.clone(), e.to_string()))?;
        let status = reply.status();
        if status.is_success() {
            return Ok(());
        }
        let text = reply.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let detail = format!("HTTP {status}: {}", String::from_utf8_lossy(&text).chars().take(300).collect::<String>());
        // A server error may pass; a refusal (an expired or wrong URL) never will.
        let kind = if status.is_server_error() { ErrorKind::Transient } else { ErrorKind::Other };
        Err(AwsError::new(kind, context, detail))
    }
}
