//! What a failed REST request means: [`RestFailure`] from the HTTP status or the transport
//! error, and the one-line detail of the server's error response. Details are redacted: no
//! secret reaches a message.

use reqwest::StatusCode;
use serde_json::Value;

use crate::Error;
use crate::catalog::redact_text;

/// What a failed REST request tells about the catalog's state and what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestFailure {
    /// 409: another writer changed the table first, or what is created exists.
    Conflict,
    /// 404: no such table or namespace.
    NotFound,
    /// 401 or 403: the credentials are wrong, expired or lack a privilege.
    Unauthorized,
    /// Another 4xx: the request is wrong for this server.
    BadRequest,
    /// 429: the server refused the request for now (nothing applied).
    RateLimited,
    /// 503: the server or a proxy in front of it is unavailable.
    Unavailable,
    /// 500, 502, 504 and other 5xx: the server (or a gateway) failed; a commit may have been
    /// applied.
    ServerError,
    /// The request was sent but no (whole) reply came: a timeout or a cut connection.
    NoReply,
    /// The server could not be reached: nothing was sent.
    NotSent,
}

impl RestFailure {
    /// What a reply with `status` means.
    pub(super) fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            409 => Self::Conflict,
            404 => Self::NotFound,
            401 | 403 | 419 => Self::Unauthorized,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            500..=599 => Self::ServerError,
            _ => Self::BadRequest,
        }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(self, Self::NotFound | Self::Unauthorized | Self::BadRequest)
    }

    /// Whether a commit that failed this way may nevertheless have been applied.
    pub(super) fn commit_may_have_landed(self) -> bool {
        matches!(self, Self::Unavailable | Self::ServerError | Self::NoReply)
    }
}

/// An Iceberg REST error response (`{"error": {"message", "type", "code"}}`) or an OAuth2
/// one (`{"error": "invalid_client", "error_description": …}`), as one line.
pub(super) fn error_detail(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let what = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::Object(e)) => {
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            match e.get("type").and_then(Value::as_str) {
                Some(t) => format!("{t}: {message}"),
                None => message.to_string(),
            }
        }
        Some(Value::String(code)) => {
            let desc = parsed
                .as_ref()
                .and_then(|v| v.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{code} {desc}").trim().to_string()
        }
        _ => {
            let t = text.trim();
            let mut end = t.len().min(300);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_string()
        }
    };
    let reason = status.canonical_reason().unwrap_or("");
    if what.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {} {reason}: {}", status.as_u16(), redact_text(&what))
    }
}

/// What a transport error means: nothing sent when the connection (or the request) could
/// not be made, else no reply.
pub(super) fn transport_failure(e: &reqwest::Error) -> RestFailure {
    if e.is_connect() || e.is_builder() {
        RestFailure::NotSent
    } else {
        RestFailure::NoReply
    }
}

/// The transport error with its causes (reqwest's own message is only "error sending
/// request").
pub(super) fn transport_detail(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    redact_text(&parts.join(": "))
}

/// The error of a failed request to catalog `label` while `context`.
pub(super) fn rest_error(
    label: &str,
    context: &str,
    failure: RestFailure,
    status: Option<u16>,
    detail: String,
) -> Error {
    Error::Rest {
        catalog: label.to_string(),
        context: context.to_string(),
        failure,
        status,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_say_what_a_failure_means() {
        assert_eq!(RestFailure::of(StatusCode::CONFLICT), RestFailure::Conflict);
        assert_eq!(
            RestFailure::of(StatusCode::BAD_GATEWAY),
            RestFailure::ServerError
        );
        assert_eq!(
            RestFailure::of(StatusCode::SERVICE_UNAVAILABLE),
            RestFailure::Unavailable
        );
        assert_eq!(
            RestFailure::of(StatusCode::FORBIDDEN),
            RestFailure::Unauthorized
        );
        assert_eq!(
            RestFailure::of(StatusCode::UNPROCESSABLE_ENTITY),
            RestFailure::BadRequest
        );
        for f in [
            RestFailure::ServerError,
            RestFailure::Unavailable,
            RestFailure::NoReply,
        ] {
            assert!(f.commit_may_have_landed() && f.is_transient(), "{f:?}");
        }
        for f in [
            RestFailure::Conflict,
            RestFailure::RateLimited,
            RestFailure::NotSent,
        ] {
            assert!(!f.commit_may_have_landed() && f.is_transient(), "{f:?}");
        }
        assert!(!RestFailure::Unauthorized.is_transient());
        let detail = error_detail(
            StatusCode::CONFLICT,
            br#"{"error": {"message": "Requirement failed: branch main has changed", "type": "CommitFailedException", "code": 409}}"#,
        );
        assert_eq!(
            detail,
            "HTTP 409 Conflict: CommitFailedException: Requirement failed: branch main has changed"
        );
        let detail = error_detail(
            StatusCode::UNAUTHORIZED,
            br#"{"error": "invalid_client", "error_description": "bad secret token=abc"}"#,
        );
        assert_eq!(
            detail,
            "HTTP 401 Unauthorized: invalid_client bad secret token=***"
        );
    }
}
