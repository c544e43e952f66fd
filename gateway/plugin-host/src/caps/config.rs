//! `config`: read the plugin's config table by dotted key path.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::config;
use crate::state::HostState;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    config::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// The value at `key` (`a.b.c`): strings as is, other values as JSON.
pub(crate) fn lookup(config: &serde_json::Value, key: &str) -> Option<String> {
    let mut v = config;
    for segment in key.split('.') {
        v = v.as_object()?.get(segment)?;
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        lookup(&self.version.config, &key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_lookup() {
        let c = serde_json::json!({"a": {"b": 3, "s": "x"}, "t": [1]});
        assert_eq!(lookup(&c, "a.b").as_deref(), Some("3"));
        assert_eq!(lookup(&c, "a.s").as_deref(), Some("x"));
        assert_eq!(lookup(&c, "t").as_deref(), Some("[1]"));
        assert_eq!(lookup(&c, "a.b.c"), None);
        assert_eq!(lookup(&c, "nope"), None);
    }
}
