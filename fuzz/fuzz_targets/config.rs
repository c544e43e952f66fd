//! Config files: any text is a config that builds into settings, or an error naming
//! what is wrong — never a panic (`Config::from_toml` then `Config::build`, the path
//! `edgesync serve --config` takes).
#![no_main]
use edgesync::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let mut config = match Config::from_toml(text) {
            Ok(c) => c,
            Err(message) => {
                assert!(!message.is_empty());
                return;
            }
        };
        // As from a file: build errors then carry the key's line.
        config.source = Some(text.into());
        match config.build() {
            Ok(settings) => {
                let _ = settings.limits();
                // The settings say what the file says: no value wraps on the way.
                let store = settings.store_options();
                assert_eq!(
                    Some(store.cache_bytes),
                    config.store.cache_mb.checked_mul(1 << 20),
                    "store.cache_mb = {}",
                    config.store.cache_mb
                );
                let _ = settings.redacted_toml();
            }
            Err(ConfigError::Invalid { key, line, message }) => {
                assert!(!key.is_empty() && !message.is_empty());
                if let Some(line) = line {
                    assert!(
                        line >= 1 && line <= text.matches('\n').count() + 1,
                        "line {line}"
                    );
                }
            }
            Err(e) => panic!("build reported a non-validation error: {e}"),
        }
    });
});
