//! What can go wrong for a client.

/// A worker handle's operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// cannot connect to {url}: {reason}
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The node.
        url: String,
        /// Why.
        reason: String,
    },
    /// lost the connection to {url}: {reason}
    #[error("lost the connection to {url}: {reason}")]
    Lost {
        /// The node.
        url: String,
        /// Why.
        reason: String,
    },
    /// {url} broke the protocol: {reason}
    #[error("{url} broke the protocol: {reason}")]
    Protocol {
        /// The node.
        url: String,
        /// What it did.
        reason: String,
    },
    /// {url} refused ({code}): {message}
    #[error("{url} refused ({code}): {message}")]
    Refused {
        /// The node.
        url: String,
        /// The error code it sent.
        code: String,
        /// Its message.
        message: String,
    },
    /// the worker failed handling message {seq}: {reason}
    #[error("the worker failed handling message {seq}: {reason}")]
    WorkerFailed {
        /// The message.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// the local worker could not run: {0}
    #[error("the local worker could not run: {0}")]
    Local(String),
    /// the worker's state did not arrive whole: {0}
    #[error("the worker's state did not arrive whole: {0}")]
    State(String),
    /// {cause}; the worker cannot be recovered: the client holds no snapshot of it with every message since
    #[error("{cause}; the worker cannot be recovered: the client holds no snapshot of it with every message since")]
    Unrecoverable {
        /// What happened to the node.
        cause: String,
    },
    /// {0}
    #[error("{0}")]
    Usage(String),
}
