//! The HTTPS client the `oauth2` crate sends its requests with: ureq 2 on
//! our own native-tls connector, which trusts the system roots plus the
//! account's extra CA (ureq 3's native-tls roots are either the system's or
//! a given list, never both), every step bounded by the account's timeout,
//! no redirects (a token request is never re-sent elsewhere).

use crate::tls_connectors;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// Token responses are small; a larger body is not one.
const LARGEST_RESPONSE: u64 = 1024 * 1024;

pub struct HttpsClient {
    agent: ureq::Agent,
    /// The last request that got no answer (the device-code loop of the
    /// `oauth2` crate swallows it and backs off; we report it).
    pub unanswered: std::cell::RefCell<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

impl HttpsClient {
    pub fn new(extra_ca_pem: Option<&str>, timeout: Duration) -> Result<HttpsClient, HttpError> {
        let connector = tls_connectors::trusting(extra_ca_pem).map_err(|error| HttpError(error.to_string()))?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(connector))
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            // The whole request too: an answer trickling in byte by byte must end.
            .timeout(timeout * 3)
            .redirects(0)
            .build();
        Ok(HttpsClient { agent, unanswered: Default::default() })
    }
}

impl oauth2::SyncHttpClient for HttpsClient {
    type Error = HttpError;

    fn call(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let uri = request.uri().to_string();
        if !uri.starts_with("https://") {
            return Err(HttpError("only https:// token endpoints are used (secrets travel in the request)".to_owned()));
        }
        let mut call = self.agent.request(request.method().as_str(), &uri);
        for (name, value) in request.headers() {
            let value = value.to_str().map_err(|_| HttpError(format!("header {name} is not text")))?;
            call = call.set(name.as_str(), value);
        }
        let response = match call.send_bytes(request.body()) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            // The transport error names the URL and what failed; no body.
            Err(ureq::Error::Transport(transport)) => {
                *self.unanswered.borrow_mut() = Some(transport.to_string());
                return Err(HttpError(transport.to_string()));
            }
        };
        let mut builder = oauth2::http::Response::builder().status(response.status());
        for name in response.headers_names() {
            if let Some(value) = response.header(&name) {
                builder = builder.header(name.as_str(), value);
            }
        }
        let mut body = Vec::new();
        response
            .into_reader()
            .take(LARGEST_RESPONSE)
            .read_to_end(&mut body)
            .map_err(|error| HttpError(format!("reading the answer: {error}")))?;
        builder.body(body).map_err(|error| HttpError(error.to_string()))
    }
}
