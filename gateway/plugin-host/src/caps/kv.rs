//! `kv`: the plugin-scoped key-value store. Validates sizes, then calls
//! the gateway's [`HostServices`](crate::HostServices) (durable there) with
//! the plugin's name as scope. Time spent in the service is host time, not
//! guest CPU time.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::kv::{self, Entry, KvError};
use crate::services::{KvEntry, ServiceError};
use crate::state::HostState;

use super::host_time;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Most entries one scan returns.
pub const MAX_SCAN: u32 = 1000;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    kv::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        Err(KvError::TooLarge)
    } else {
        Ok(())
    }
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        Err(KvError::TooLarge)
    } else {
        Ok(())
    }
}

fn map_err(e: ServiceError) -> KvError {
    match e {
        ServiceError::QuotaExceeded => KvError::QuotaExceeded,
        ServiceError::NotACounter => KvError::NotACounter,
        other => KvError::Unavailable(other.to_string()),
    }
}

fn entry(e: KvEntry) -> Entry {
    Entry {
        value: e.value,
        version: e.version,
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Entry>, KvError> {
        check_key(&key)?;
        host_time(self, |s| s.plugin.services.kv_get(&s.plugin.name, &key))
            .map(|o| o.map(entry))
            .map_err(map_err)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<u64, KvError> {
        check_key(&key)?;
        check_value(&value)?;
        host_time(self, |s| {
            s.plugin
                .services
                .kv_set(&s.plugin.name, &key, &value, ttl_ms)
        })
        .map_err(map_err)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected_version: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, KvError> {
        check_key(&key)?;
        check_value(&value)?;
        host_time(self, |s| {
            s.plugin.services.kv_compare_and_swap(
                &s.plugin.name,
                &key,
                expected_version,
                &value,
                ttl_ms,
            )
        })
        .map_err(map_err)
    }

    fn delete(&mut self, key: String) -> Result<bool, KvError> {
        check_key(&key)?;
        host_time(self, |s| s.plugin.services.kv_delete(&s.plugin.name, &key)).map_err(map_err)
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        check_key(&key)?;
        host_time(self, |s| {
            s.plugin
                .services
                .kv_increment(&s.plugin.name, &key, delta, ttl_ms)
        })
        .map_err(map_err)
    }

    fn scan_prefix(&mut self, prefix: String, limit: u32) -> Result<Vec<(String, Entry)>, KvError> {
        check_key(&prefix)?;
        let limit = limit.min(MAX_SCAN) as usize;
        host_time(self, |s| {
            s.plugin
                .services
                .kv_scan_prefix(&s.plugin.name, &prefix, limit)
        })
        .map(|v| v.into_iter().map(|(k, e)| (k, entry(e))).collect())
        .map_err(map_err)
    }
}
