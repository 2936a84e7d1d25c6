//! What can go wrong talking to a Cairn node, phrased as what the caller can do.

/// Everything that can go wrong talking to a Cairn node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status. `code` is the stable machine-readable
    /// code of its JSON error body (empty when the body was not a Cairn error, e.g. a
    /// proxy's page), `message` the human-readable explanation (or the raw body).
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The request failed below HTTP (connect, reset, timeout). For a write, its
    /// outcome is unknown: it may or may not have been applied.
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered, but not in a form this client understands.
    #[error("cannot decode response: {0}")]
    Decode(String),
    /// The key cannot be expressed in a URL path (`.` and `..` are normalised away by
    /// every URL parser); nothing was sent.
    #[error("key {0:?} cannot be addressed in a URL path; use a batch")]
    UnaddressableKey(Vec<u8>),
    /// The token holds bytes an HTTP header cannot carry (a newline, say); nothing
    /// was sent. The token itself is not repeated here.
    #[error("the token cannot be sent in an HTTP header (it holds control characters)")]
    BadToken,
    /// The CA certificate given to trust could not be used; nothing was sent.
    #[error("the CA certificate: {0}")]
    BadCa(String),
}

impl Error {
    /// The server's error code, when the server answered with a Cairn error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when a conditional write was refused because its precondition did not
    /// hold (nothing was written).
    pub fn is_precondition_failed(&self) -> bool {
        self.code() == Some("precondition_failed")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
