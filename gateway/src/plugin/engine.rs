//! The wasmtime engine: one per process, with every sandbox limit that is
//! engine-wide set here (stack, pooling slots, epoch interruption), an epoch
//! ticker thread, and the on-disk compile cache.

use super::bindings::FilterPre;
use super::state::PluginState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);
/// The largest linear memory any plugin may have (per-plugin caps are lower).
pub const MAX_MEMORY_BYTES: usize = 256 << 20;
/// The wasm stack cap, engine-wide.
pub const MAX_STACK_BYTES: usize = 512 << 10;
/// Plugin instances that can exist at once by default (`plugin_instance_slots`).
pub const DEFAULT_INSTANCE_SLOTS: u32 = 2_000;
/// The most `plugin_instance_slots` may be: every slot reserves address
/// space for a linear memory (4 GiB plus guard pages), and x86-64 gives a
/// process 128 TiB of it.
pub const MAX_INSTANCE_SLOTS: u32 = 10_000;

pub struct PluginEngine {
    pub engine: Engine,
    linker: Linker<PluginState>,
    /// Compiled components by path and content hash: a reload with an
    /// unchanged plugin does not compile again.
    compiled: Mutex<HashMap<(PathBuf, u64), Component>>,
}

impl PluginEngine {
    /// `slots`: how many plugin instances can exist at once, across all
    /// plugins (each has one linear memory; a component instance has a few
    /// core instances and tables, hence the larger counts for those).
    pub fn new(cache_dir: Option<&Path>, slots: u32) -> wasmtime::Result<Arc<PluginEngine>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_STACK_BYTES);
        config.wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots.min(1_000))
            .max_memory_size(MAX_MEMORY_BYTES)
            .max_memories_per_module(1)
            .max_tables_per_module(4);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = cache_dir {
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(dir);
            match wasmtime::Cache::new(cc) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "plugin compile cache disabled")
                }
            }
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        direct_wasi_io(&mut linker)?;
        super::bindings::Filter::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
        }))
    }

    /// Compiles (or finds already compiled) the component at `path` and
    /// links it: every import must be one the host provides.
    pub fn prepare(&self, path: &Path) -> Result<FilterPre<PluginState>, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = (path.to_path_buf(), hash(&bytes));
        let cached = self.compiled.lock().ok().and_then(|c| c.get(&key).cloned());
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, &bytes).map_err(|e| {
                    format!("{} is not a loadable component: {e:#}", path.display())
                })?;
                if let Ok(mut map) = self.compiled.lock() {
                    map.retain(|(p, _), _| p != path);
                    map.insert(key, c.clone());
                }
                c
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!(
                "{} cannot be linked: {e:#}{}",
                path.display(),
                version_hint(&e)
            )
        })?;
        FilterPre::new(pre).map_err(|e| {
            format!(
                "{} does not export the wasmgate filter world: {e:#}{}",
                path.display(),
                version_hint(&e)
            )
        })
    }
}

/// The version of the WIT package this gateway hosts (`wit/plugin.wit`).
pub const WIT_VERSION: &str = "0.3.0";

/// When a component does not fit because it was built against another
/// version of the plugin interface, says so.
fn version_hint(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("wasmgate:plugin/") && !text.contains(&format!("@{WIT_VERSION}")) {
        format!(
            " (this gateway hosts wasmgate:plugin@{WIT_VERSION}: rebuild the plugin \
             against it, with the wasmgate-plugin-sdk crate of this release)"
        )
    } else {
        String::new()
    }
}

/// A plugin tried to wait (sleep, or block on a stream that is not ready).
#[derive(Debug, thiserror::Error)]
#[error("the plugin tried to wait, which plugins may not do")]
pub struct WouldWait;

/// The `wasi:io` functions wasmtime-wasi defines as async, redefined as
/// direct calls: a plugin built with `std` imports them (its stdio goes
/// through them) and one async import makes wasmtime enter every call of
/// the plugin on a fiber. A plugin's streams are the empty stdin and the
/// sink stdout/stderr of its `WasiCtx`, so each of these completes at once;
/// one that would have to wait (a plugin sleeping on a clock pollable)
/// traps instead, as a plugin may not wait.
fn direct_wasi_io(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use futures_util::FutureExt;
    use wasmtime::component::{Resource, ResourceType};
    use wasmtime_wasi::p2::bindings::io::poll::HostPollable;
    use wasmtime_wasi::p2::bindings::io::streams::{
        self, Host as _, HostInputStream, HostOutputStream,
    };
    use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
    fn would_wait() -> wasmtime::Error {
        wasmtime::Error::new(WouldWait)
    }
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store, (p,): (Resource<DynPollable>,)| {
            let table = &mut store.data_mut().table;
            HostPollable::block(table, p)
                .now_or_never()
                .unwrap_or_else(|| Err(would_wait()))
        },
    )?;
    let mut io = linker.instance("wasi:io/streams@0.2.12")?;
    io.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut store, (s,): (Resource<DynOutputStream>,)| {
            let table = &mut store.data_mut().table;
            let flushed = HostOutputStream::blocking_flush(table, s)
                .now_or_never()
                .ok_or_else(would_wait)?;
            match flushed {
                Ok(()) => Ok((Ok::<(), streams::StreamError>(()),)),
                Err(e) => Ok((Err(table.convert_stream_error(e)?),)),
            }
        },
    )?;
    io.resource(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut store, rep| {
            let table = &mut store.data_mut().table;
            HostOutputStream::drop(table, Resource::new_own(rep))
                .now_or_never()
                .unwrap_or_else(|| Err(would_wait()))
        },
    )?;
    io.resource(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut store, rep| {
            let table = &mut store.data_mut().table;
            HostInputStream::drop(table, Resource::new_own(rep))
                .now_or_never()
                .unwrap_or_else(|| Err(would_wait()))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component that imports `name` as an instance with one function,
    /// `log: func()`.
    fn importing(name: &str) -> Vec<u8> {
        use wasm_encoder::{
            Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection,
            ComponentValType, InstanceType,
        };
        let mut instance = InstanceType::new();
        instance
            .ty()
            .function()
            .params(std::iter::empty::<(&str, ComponentValType)>())
            .result(None);
        instance.export("log", ComponentTypeRef::Func(0));
        let mut types = ComponentTypeSection::new();
        types.instance(&instance);
        let mut imports = ComponentImportSection::new();
        imports.import(name, ComponentTypeRef::Instance(0));
        let mut component = Component::new();
        component.section(&types).section(&imports);
        component.finish()
    }

    fn link(name: &str) -> String {
        let engine = match PluginEngine::new(None, 4) {
            Ok(engine) => engine,
            Err(e) => panic!("no engine: {e:#}"),
        };
        let path = std::env::temp_dir().join(format!(
            "wasmgate-link-{}-{}.wasm",
            std::process::id(),
            name.replace(['/', ':', '@'], "-")
        ));
        if let Err(e) = std::fs::write(&path, importing(name)) {
            panic!("cannot write {}: {e}", path.display());
        }
        let result = engine.prepare(&path);
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(_) => panic!("{name} linked"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_plugin_built_for_another_interface_version_is_told_to_rebuild() {
        let e = link("wasmgate:plugin/host@0.1.0");
        assert!(e.contains("cannot be linked"), "{e}");
        assert!(e.contains("wasmgate:plugin/host@0.1.0"), "{e}");
        assert!(
            e.contains("this gateway hosts wasmgate:plugin@0.3.0: rebuild the plugin"),
            "{e}"
        );
        // Other link failures get no such advice.
        let e = link("example:elsewhere/thing@1.0.0");
        assert!(e.contains("cannot be linked"), "{e}");
        assert!(!e.contains("rebuild"), "{e}");
    }

    #[test]
    fn the_hosted_version_is_the_one_in_wit() {
        let wit = include_str!("../../../wit/plugin.wit");
        assert!(wit.contains(&format!("package wasmgate:plugin@{WIT_VERSION};")));
    }
}
