//! Hook families and hooks: the names the host, its errors, metrics and
//! config use for the contract's exported functions.

use std::fmt;

/// A hook family: one exported interface of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `lifecycle` (`init`).
    Lifecycle,
    /// `auth-hooks` (`on-connect`, `on-subscribe`, `on-disconnect`).
    Auth,
    /// `message-hooks` (`on-message`, `on-batch`).
    Message,
    /// `storage-hooks` (`on-write`).
    Storage,
    /// `timer-hooks` (`on-timer`).
    Timer,
}

impl Family {
    /// Every family, in contract order.
    pub const ALL: [Family; 5] = [
        Family::Lifecycle,
        Family::Auth,
        Family::Message,
        Family::Storage,
        Family::Timer,
    ];

    /// The exported interface name, without package and version.
    pub fn interface(self) -> &'static str {
        match self {
            Family::Lifecycle => "lifecycle",
            Family::Auth => "auth-hooks",
            Family::Message => "message-hooks",
            Family::Storage => "storage-hooks",
            Family::Timer => "timer-hooks",
        }
    }

    /// The family whose interface is `name` (e.g. `edgesync:plugin/auth-hooks@0.1.0`).
    pub fn from_export_name(name: &str) -> Option<Family> {
        let rest = name.strip_prefix("edgesync:plugin/")?;
        let iface = rest.split('@').next()?;
        Family::ALL.into_iter().find(|f| f.interface() == iface)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// One hook (exported function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `lifecycle.init`
    Init,
    /// `auth-hooks.on-connect`
    OnConnect,
    /// `auth-hooks.on-subscribe`
    OnSubscribe,
    /// `auth-hooks.on-disconnect`
    OnDisconnect,
    /// `message-hooks.on-message`
    OnMessage,
    /// `message-hooks.on-batch`
    OnBatch,
    /// `storage-hooks.on-write`
    OnWrite,
    /// `timer-hooks.on-timer`
    OnTimer,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 8] = [
        Hook::Init,
        Hook::OnConnect,
        Hook::OnSubscribe,
        Hook::OnDisconnect,
        Hook::OnMessage,
        Hook::OnBatch,
        Hook::OnWrite,
        Hook::OnTimer,
    ];

    /// The family the hook belongs to.
    pub fn family(self) -> Family {
        match self {
            Hook::Init => Family::Lifecycle,
            Hook::OnConnect | Hook::OnSubscribe | Hook::OnDisconnect => Family::Auth,
            Hook::OnMessage | Hook::OnBatch => Family::Message,
            Hook::OnWrite => Family::Storage,
            Hook::OnTimer => Family::Timer,
        }
    }

    /// The WIT function name; also the `hook` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::OnConnect => "on-connect",
            Hook::OnSubscribe => "on-subscribe",
            Hook::OnDisconnect => "on-disconnect",
            Hook::OnMessage => "on-message",
            Hook::OnBatch => "on-batch",
            Hook::OnWrite => "on-write",
            Hook::OnTimer => "on-timer",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of families a component exports.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Exports(u8);

impl Exports {
    /// No family.
    pub const NONE: Exports = Exports(0);

    /// Whether `family` is exported.
    pub fn contains(self, family: Family) -> bool {
        self.0 & family.bit() != 0
    }

    /// Adds `family`.
    pub fn insert(&mut self, family: Family) {
        self.0 |= family.bit();
    }

    /// The exported families, in contract order.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl fmt::Debug for Exports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Exports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Family::interface).collect();
        f.write_str(&names.join(", "))
    }
}

impl FromIterator<Family> for Exports {
    fn from_iter<I: IntoIterator<Item = Family>>(iter: I) -> Self {
        let mut e = Exports::NONE;
        for f in iter {
            e.insert(f);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_map_to_families() {
        assert_eq!(
            Family::from_export_name("edgesync:plugin/message-hooks@0.1.0"),
            Some(Family::Message)
        );
        assert_eq!(Family::from_export_name("edgesync:plugin/kv@0.1.0"), None);
        assert_eq!(Family::from_export_name("other:pkg/auth-hooks"), None);
        let e: Exports = [Family::Auth, Family::Lifecycle].into_iter().collect();
        assert!(e.contains(Family::Auth) && !e.contains(Family::Message));
        assert_eq!(e.to_string(), "lifecycle, auth-hooks");
    }
}
