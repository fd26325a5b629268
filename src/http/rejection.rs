//! Why a request is refused, and what to tell the client: the one error type of the HTTP
//! layer (a leaf, so every parser module can return it without importing its parent).

/// Why a request is refused, and what to tell the client. `message` is for a human and never
/// contains client-supplied header values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// The Anthropic error type: `invalid_request_error`, `authentication_error`, ...
    pub error_type: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(status: u16, error_type: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            error_type,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Rejection {
        Rejection::new(400, "invalid_request_error", message)
    }
}
