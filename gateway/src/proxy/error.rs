//! The one place where a failure becomes a status code and an error body.

use crate::upstream::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Why the gateway answered a request itself instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request line too long")]
    UriTooLong,
    #[error("no route matches this request")]
    NoRoute,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("upstream `{upstream}` has no available endpoint")]
    NoEndpoint { upstream: String },
    #[error("upstream `{upstream}` ({endpoint}) refused or failed the connection")]
    UpstreamConnect { upstream: String, endpoint: String },
    #[error("upstream `{upstream}` ({endpoint}) did not accept the connection in time")]
    UpstreamConnectTimeout { upstream: String, endpoint: String },
    #[error("upstream `{upstream}` ({endpoint}) did not answer in time")]
    UpstreamTimeout { upstream: String, endpoint: String },
    #[error("upstream `{upstream}` did not answer within the request timeout")]
    UpstreamRequestTimeout { upstream: String },
    /// The circuit breaker's limit: answered at once, nothing sent.
    #[error("upstream overflow: `{upstream}` is at its {limit} limit")]
    UpstreamOverflow {
        upstream: String,
        limit: &'static str,
    },
    #[error("plugin `{plugin}` failed ({kind})")]
    Plugin {
        plugin: String,
        kind: &'static str,
        status: StatusCode,
    },
    #[error("response body larger than the plugins' buffer of {limit} bytes")]
    ResponseBodyTooLarge { limit: usize },
    #[error("response body could not be read: {0}")]
    ResponseBody(String),
    #[error("upstream `{upstream}` ({endpoint}) failed: {reason}")]
    UpstreamProtocol {
        upstream: String,
        endpoint: String,
        reason: String,
    },
}

impl ProxyError {
    /// A fail-closed plugin failure; the details went to the log.
    pub fn plugin(f: crate::plugin::ChainFailure) -> ProxyError {
        ProxyError::Plugin {
            plugin: f.plugin.to_string(),
            kind: f.error.kind(),
            status: f.status,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Plugin { status, .. } => *status,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoEndpoint { .. } | ProxyError::UpstreamOverflow { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::ResponseBodyTooLarge { .. }
            | ProxyError::ResponseBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamRequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The metric label of an upstream failure, if this is one.
    pub fn upstream_kind(&self) -> Option<(&str, &'static str)> {
        match self {
            ProxyError::NoEndpoint { upstream } => Some((upstream, "no_endpoint")),
            ProxyError::UpstreamConnect { upstream, .. } => Some((upstream, "connect")),
            ProxyError::UpstreamConnectTimeout { upstream, .. } => {
                Some((upstream, "connect_timeout"))
            }
            ProxyError::UpstreamTimeout { upstream, .. } => Some((upstream, "timeout")),
            ProxyError::UpstreamRequestTimeout { upstream } => Some((upstream, "request_timeout")),
            ProxyError::UpstreamOverflow { upstream, .. } => Some((upstream, "overflow")),
            ProxyError::UpstreamProtocol { upstream, .. } => Some((upstream, "protocol")),
            _ => None,
        }
    }

    /// A small JSON body naming the error and the request id. Client errors
    /// close an HTTP/1 connection whose framing can no longer be trusted.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.to_string(),
            "status": status.as_u16(),
            "request_id": request_id,
        })
        .to_string();
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::BodyTooLarge { .. } | ProxyError::BodyTimeout
        ) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
