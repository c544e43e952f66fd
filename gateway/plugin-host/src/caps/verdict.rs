//! `verdict`: the data of an `on-message` verdict (`message-action` in the
//! WIT). The guest sets the replacement or the reason during the call and
//! returns a plain enum, so the hottest call's result needs no lifting of
//! strings and no post-return call into the guest. Always granted.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::types::{Message, MessageAction, MessageVerdict};
use crate::bindings::verdict;
use crate::caps::log::truncate;
use crate::state::HostState;

/// Longest reject reason kept (bytes); longer ones are cut on a character
/// boundary.
pub(crate) const MAX_REASON: usize = 1024;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    verdict::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// What the guest set during the current `on-message`.
#[derive(Default)]
pub(crate) struct VerdictData {
    replacement: Option<Message>,
    reason: Option<String>,
}

impl VerdictData {
    /// Forgets what an earlier call (or another hook) set.
    pub(crate) fn clear(&mut self) {
        if self.replacement.is_some() || self.reason.is_some() {
            *self = VerdictData::default();
        }
    }

    /// The verdict for `action`, taking the data set during the call.
    ///
    /// # Errors
    /// `replace` without a replacement: the guest broke the contract.
    pub(crate) fn verdict(&mut self, action: MessageAction) -> Result<MessageVerdict, String> {
        Ok(match action {
            MessageAction::Pass => MessageVerdict::Pass,
            MessageAction::Drop => MessageVerdict::Drop,
            MessageAction::Reject => MessageVerdict::Reject(
                self.reason
                    .take()
                    .unwrap_or_else(|| "rejected by a plugin".to_string()),
            ),
            MessageAction::Replace => {
                MessageVerdict::Replace(self.replacement.take().ok_or(
                    "on-message returned `replace` without calling verdict.set-replacement",
                )?)
            }
        })
    }
}

impl verdict::Host for HostState {
    fn set_replacement(&mut self, msg: Message) {
        self.verdict.replacement = Some(msg);
    }

    fn set_reason(&mut self, reason: String) {
        let reason = match truncate(&reason, MAX_REASON) {
            r if r.len() == reason.len() => reason,
            r => r.to_string(),
        };
        self.verdict.reason = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_take_their_data_once() {
        let mut d = VerdictData::default();
        assert_eq!(d.verdict(MessageAction::Pass), Ok(MessageVerdict::Pass));
        assert_eq!(d.verdict(MessageAction::Drop), Ok(MessageVerdict::Drop));
        assert_eq!(
            d.verdict(MessageAction::Reject),
            Ok(MessageVerdict::Reject("rejected by a plugin".into()))
        );
        assert!(d.verdict(MessageAction::Replace).is_err());
        let m = Message {
            topic: "t".into(),
            headers: Vec::new(),
            payload: b"x".to_vec(),
        };
        d.replacement = Some(m.clone());
        d.reason = Some("no".into());
        assert_eq!(
            d.verdict(MessageAction::Replace),
            Ok(MessageVerdict::Replace(m))
        );
        assert_eq!(
            d.verdict(MessageAction::Reject),
            Ok(MessageVerdict::Reject("no".into()))
        );
        assert!(d.verdict(MessageAction::Replace).is_err(), "taken once");
        d.reason = Some("stale".into());
        d.clear();
        assert_eq!(
            d.verdict(MessageAction::Reject),
            Ok(MessageVerdict::Reject("rejected by a plugin".into()))
        );
    }
}
