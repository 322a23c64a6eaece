//! The key-value store plugins reach through `kv-*` host calls: in-process
//! (dashmap) and namespaced per plugin. Behind a trait so that a shared
//! backend (Redis) can replace it for cluster-wide state.

use dashmap::DashMap;
use std::time::{Duration, Instant};

pub trait Kv: Send + Sync {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>);
    fn delete(&self, key: &str);
    /// Adds `delta` atomically; a missing or expired key counts as 0 and
    /// then gets `ttl`.
    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64;
}

enum Value {
    Bytes(Vec<u8>),
    Int(i64),
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The in-process store. Expired entries are dropped when touched, and by a
/// sweep every `SWEEP_EVERY` writes so that unread keys do not pile up.
#[derive(Default)]
pub struct MemoryKv {
    map: DashMap<String, Entry>,
    writes: std::sync::atomic::AtomicU64,
}

const SWEEP_EVERY: u64 = 4096;

impl MemoryKv {
    fn wrote(&self) {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.map.retain(|_, e| e.live(now));
        }
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let e = self.map.get(key)?;
        if !e.live(Instant::now()) {
            return None;
        }
        Some(match &e.value {
            Value::Bytes(b) => b.clone(),
            Value::Int(i) => i.to_string().into_bytes(),
        })
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let expires = ttl.map(|t| Instant::now() + t);
        self.map.insert(
            key.to_string(),
            Entry {
                value: Value::Bytes(value),
                expires,
            },
        );
        self.wrote();
    }

    fn delete(&self, key: &str) {
        self.map.remove(key);
    }

    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let now = Instant::now();
        let mut entry = self.map.entry(key.to_string()).or_insert_with(|| Entry {
            value: Value::Int(0),
            expires: ttl.map(|t| now + t),
        });
        if !entry.live(now) {
            *entry = Entry {
                value: Value::Int(0),
                expires: ttl.map(|t| now + t),
            };
        }
        let current = match &entry.value {
            Value::Int(i) => *i,
            Value::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        };
        let next = current.saturating_add(delta);
        entry.value = Value::Int(next);
        drop(entry);
        self.wrote();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_is_atomic_across_threads_and_ttl_expires() {
        let kv = std::sync::Arc::new(MemoryKv::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        kv.incr("n", 1, None);
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        assert_eq!(kv.incr("n", 0, None), 4000);
        kv.set("t", b"x".to_vec(), Some(Duration::ZERO));
        assert_eq!(kv.get("t"), None);
        assert_eq!(kv.incr("t", 5, None), 5);
    }
}
