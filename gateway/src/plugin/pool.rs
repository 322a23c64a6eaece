//! Instances of one plugin with one config: checked out exclusively for a
//! phase, reused afterwards, discarded after a trap, a limit, or
//! `max_instance_uses` calls. `isolation = "per-request"` makes a fresh
//! instance for every call instead.

use super::bindings::{wasmgate::plugin::types, Filter, FilterPre};
use super::engine::{PluginEngine, EPOCH_TICK};
use super::state::{PluginState, RequestRes, ResponseRes};
use super::{
    Isolation, Outbound, Phases, PluginError, PluginMeta, PluginReply, PluginRequest,
    PluginResponse, Verdict,
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::Resource;
use wasmtime::{Store, StoreLimitsBuilder, Trap};

struct Instance {
    store: Store<PluginState>,
    filter: Filter,
    uses: u64,
    /// What this instance's `configure` asked for.
    phases: Phases,
}

pub struct InstancePool {
    pre: FilterPre<PluginState>,
    engine: Arc<PluginEngine>,
    pub meta: Arc<PluginMeta>,
    config: String,
    outbound: Arc<dyn Outbound>,
    isolation: Isolation,
    idle: Mutex<Vec<Instance>>,
    /// The phases the plugin declared with this config (from the first
    /// instance; every instance with the same config must agree).
    pub phases: Phases,
}

/// Idle instances kept per pool; more are created under load and dropped
/// when returned beyond this.
const MAX_IDLE: usize = 64;

impl InstancePool {
    /// Creates the pool and one instance, whose `configure` must accept the
    /// config: a plugin that rejects its config fails the config load.
    pub async fn new(
        engine: Arc<PluginEngine>,
        pre: FilterPre<PluginState>,
        meta: Arc<PluginMeta>,
        config: String,
        outbound: Arc<dyn Outbound>,
        isolation: Isolation,
    ) -> Result<Arc<InstancePool>, PluginError> {
        let mut pool = InstancePool {
            pre,
            engine,
            meta,
            config,
            outbound,
            isolation,
            idle: Mutex::new(Vec::new()),
            phases: Phases::default(),
        };
        let first = pool.instantiate().await?;
        pool.phases = first.phases;
        pool.checkin(first);
        Ok(Arc::new(pool))
    }

    async fn instantiate(&self) -> Result<Instance, PluginError> {
        let limits = &self.meta.limits;
        let state = PluginState {
            table: wasmtime::component::ResourceTable::new(),
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(32)
                .tables(32)
                .table_elements(100_000)
                .trap_on_grow_failure(true)
                .build(),
            meta: self.meta.clone(),
            outbound: self.outbound.clone(),
            request_id: String::new(),
            output_exceeded: false,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.cpu));
        let filter = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(&e, &store))?;
        store.set_epoch_deadline(ticks(limits.cpu));
        let configured = filter
            .call_configure(&mut store, &self.config)
            .await
            .map_err(|e| classify(&e, &store))?;
        let phases = configured.map_err(PluginError::Rejected)?;
        self.meta.metrics.instances(&self.meta.name, 1);
        Ok(Instance {
            store,
            filter,
            uses: 0,
            phases: Phases {
                request_headers: phases.contains(types::Phases::REQUEST_HEADERS),
                response_headers: phases.contains(types::Phases::RESPONSE_HEADERS),
                request_body: phases.contains(types::Phases::REQUEST_BODY),
                response_body: phases.contains(types::Phases::RESPONSE_BODY),
            },
        })
    }

    async fn checkout(&self) -> Result<Instance, PluginError> {
        if self.isolation == Isolation::Reuse {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            if let Some(i) = idle {
                return Ok(i);
            }
        }
        self.instantiate().await
    }

    fn checkin(&self, mut inst: Instance) {
        inst.uses += 1;
        let keep =
            self.isolation == Isolation::Reuse && inst.uses < self.meta.limits.max_instance_uses;
        if keep {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(inst);
                    return;
                }
            }
        }
        self.meta.metrics.instances(&self.meta.name, -1);
    }

    fn discard(&self, inst: Instance) {
        drop(inst);
        self.meta.metrics.instances(&self.meta.name, -1);
    }

    /// Runs the request-headers phase, or with `body` the request-body
    /// phase. The request always comes back, so a fail-open policy can
    /// carry on with it.
    pub async fn on_request(
        &self,
        req: PluginRequest,
        request_id: &str,
        body: Option<&[u8]>,
    ) -> (PluginRequest, Result<Verdict, PluginError>) {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (req, Err(e)),
        };
        let started = Instant::now();
        prepare_call(&mut inst, request_id, self.meta.limits.cpu);
        let rep = lend(&mut inst, RequestRes(req));
        // Lent to the guest as a borrow: passing the owning handle would
        // leave one store handle behind per call.
        let lent = Resource::new_borrow(rep);
        let outcome = match body {
            None => inst
                .filter
                .call_on_request(&mut inst.store, lent)
                .await
                .map(Raw::from),
            Some(b) => (inst.filter)
                .call_on_request_body(&mut inst.store, lent, b)
                .await
                .map(Raw::from),
        };
        let req = reclaim::<RequestRes>(&mut inst, rep).0;
        let result = self.finish(inst, outcome, started);
        (req, result)
    }

    /// Runs the response-headers phase, or with `body` the response-body
    /// phase.
    pub async fn on_response(
        &self,
        resp: PluginResponse,
        request_id: &str,
        body: Option<&[u8]>,
    ) -> (PluginResponse, Result<Verdict, PluginError>) {
        let mut inst = match self.checkout().await {
            Ok(i) => i,
            Err(e) => return (resp, Err(e)),
        };
        let started = Instant::now();
        prepare_call(&mut inst, request_id, self.meta.limits.cpu);
        let rep = lend(&mut inst, ResponseRes(resp));
        let lent = Resource::new_borrow(rep);
        let outcome = match body {
            None => inst
                .filter
                .call_on_response(&mut inst.store, lent)
                .await
                .map(Raw::from),
            Some(b) => (inst.filter)
                .call_on_response_body(&mut inst.store, lent, b)
                .await
                .map(Raw::from),
        };
        let resp = reclaim::<ResponseRes>(&mut inst, rep).0;
        let result = self.finish(inst, outcome, started);
        (resp, result)
    }

    fn finish(
        &self,
        inst: Instance,
        outcome: wasmtime::Result<Raw>,
        started: Instant,
    ) -> Result<Verdict, PluginError> {
        self.meta.metrics.call(&self.meta.name, started.elapsed());
        let limits = &self.meta.limits;
        let result = match outcome {
            Err(e) => Err(classify(&e, &inst.store)),
            Ok(_) if inst.store.data().output_exceeded => Err(PluginError::OutputTooLarge),
            Ok(Raw::Continue) => Ok(Verdict::Continue),
            Ok(Raw::Replace(b)) if b.len() > limits.max_body_bytes => {
                Err(PluginError::OutputTooLarge)
            }
            Ok(Raw::Replace(b)) => Ok(Verdict::Replace(Bytes::from(b))),
            Ok(Raw::Respond(r)) => reply(r, limits.max_output_bytes).map(Verdict::Respond),
        };
        match &result {
            Ok(_) | Err(PluginError::Rejected(_)) => self.checkin(inst),
            Err(_) => self.discard(inst),
        }
        result
    }
}

/// A phase's result as the guest returned it, before validation.
enum Raw {
    Continue,
    Replace(Vec<u8>),
    Respond(types::Response),
}

impl From<types::Action> for Raw {
    fn from(a: types::Action) -> Raw {
        match a {
            types::Action::Continue => Raw::Continue,
            types::Action::Respond(r) => Raw::Respond(r),
        }
    }
}

impl From<types::BodyAction> for Raw {
    fn from(a: types::BodyAction) -> Raw {
        match a {
            types::BodyAction::Continue => Raw::Continue,
            types::BodyAction::Replace(b) => Raw::Replace(b),
            types::BodyAction::Respond(r) => Raw::Respond(r),
        }
    }
}

/// Puts a head into the store's resource table for the guest to borrow.
fn lend<T: Send + 'static>(inst: &mut Instance, head: T) -> u32 {
    match inst.store.data_mut().table.push(head) {
        Ok(r) => r.rep(),
        Err(e) => unreachable_table(e),
    }
}

/// Takes a lent head back out of the resource table.
fn reclaim<T: 'static>(inst: &mut Instance, rep: u32) -> T {
    match inst
        .store
        .data_mut()
        .table
        .delete(Resource::<T>::new_own(rep))
    {
        Ok(head) => head,
        Err(e) => unreachable_table(e),
    }
}

fn prepare_call(inst: &mut Instance, request_id: &str, cpu: std::time::Duration) {
    let data = inst.store.data_mut();
    data.request_id.clear();
    data.request_id.push_str(request_id);
    inst.store.set_epoch_deadline(ticks(cpu));
}

/// The resource table of a fresh store cannot be full or hold a foreign
/// handle; if it ever did, failing the one request beats a panic.
fn unreachable_table(e: wasmtime::component::ResourceTableError) -> ! {
    tracing::error!(error = %e, "plugin resource table failure");
    std::process::abort()
}

fn ticks(cpu: std::time::Duration) -> u64 {
    (cpu.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

fn reply(r: types::Response, max: usize) -> Result<PluginReply, PluginError> {
    let size = r.body.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max {
        return Err(PluginError::OutputTooLarge);
    }
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or(PluginError::Invalid(format!("invalid status {}", r.status)))?;
    let mut headers = HeaderMap::new();
    for (k, v) in r.headers {
        let n = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| PluginError::Invalid(format!("invalid header name `{k}`")))?;
        let v = http::HeaderValue::from_bytes(&v)
            .map_err(|_| PluginError::Invalid(format!("invalid value for header `{k}`")))?;
        headers.append(n, v);
    }
    Ok(PluginReply {
        status,
        headers,
        body: Bytes::from(r.body),
    })
}

/// Names what went wrong in a failed call.
fn classify(e: &wasmtime::Error, store: &Store<PluginState>) -> PluginError {
    if store.data().output_exceeded {
        return PluginError::OutputTooLarge;
    }
    let text = format!("{e:#}");
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Trap {
            kind: "deadline",
            detail: text,
        },
        Some(Trap::StackOverflow) => PluginError::Trap {
            kind: "stack",
            detail: text,
        },
        Some(Trap::UnreachableCodeReached) => PluginError::Trap {
            kind: "unreachable",
            detail: text,
        },
        Some(Trap::MemoryOutOfBounds) => PluginError::Trap {
            kind: "memory_access",
            detail: text,
        },
        Some(_) => PluginError::Trap {
            kind: "trap",
            detail: text,
        },
        None if text.contains("memory") && (text.contains("grow") || text.contains("limit")) => {
            PluginError::Trap {
                kind: "memory",
                detail: text,
            }
        }
        None => PluginError::Trap {
            kind: "error",
            detail: text,
        },
    }
}
