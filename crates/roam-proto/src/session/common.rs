//! The frames both sessions treat alike in every connected state: keep-alives, and the
//! peer's Error and Goodbye.

use crate::frame::{Frame, WorkerId};
use crate::session::event::Event;

/// What a common frame does to the session.
pub(crate) enum Common {
    /// Nothing.
    Stay,
    /// Abandons the transfer in progress: back to Ready.
    Abort,
    /// Ends the connection.
    Close,
}

/// The event and effect of a frame valid in every connected state, or `None` for the
/// others. `moving` is the worker of the transfer in progress, if any.
pub(crate) fn common_frame(frame: &Frame, moving: Option<WorkerId>) -> Option<(Event<'_>, Common)> {
    Some(match frame {
        Frame::Ping { nonce } => (Event::Ping { nonce: *nonce }, Common::Stay),
        Frame::Pong { nonce } => (Event::Pong { nonce: *nonce }, Common::Stay),
        Frame::Goodbye { reason } => (Event::Goodbye { reason }, Common::Close),
        Frame::Error {
            code,
            worker,
            message,
        } => {
            let effect = match worker {
                None => Common::Close,
                Some(worker) if moving == Some(*worker) => Common::Abort,
                Some(_) => Common::Stay,
            };
            let event = Event::PeerError {
                code: *code,
                worker: *worker,
                message,
            };
            (event, effect)
        }
        _ => return None,
    })
}
