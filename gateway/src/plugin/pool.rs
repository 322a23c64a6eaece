//! Instances of one plugin with one config: checked out exclusively for a
//! phase, reused afterwards, discarded after a trap, a limit, or
//! `max_instance_uses` calls. `isolation = "per-request"` makes a fresh
//! instance for every call instead.

use super::bindings::{wasmgate::plugin::types, FilterPre};
use super::engine::{PluginEngine, WouldWait, EPOCH_TICK};
use super::state::{header_pair, Lending, OutsidePhase, PluginState, Reply};
use super::{
    Isolation, Outbound, Phases, PluginError, PluginMeta, PluginReply, PluginRequest,
    PluginResponse, Verdict,
};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, StatusCode};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::{
    ComponentNamedList, Func, InstancePre, Lift, Lower, Resource, TypedFunc,
};
use wasmtime::{Store, StoreLimitsBuilder, Trap};

pub(super) struct Instance {
    store: Store<PluginState>,
    exports: Exports,
    uses: u64,
    /// What this instance's `configure` asked for.
    phases: Phases,
}

/// The phase exports of one instance, looked up once.
pub(super) struct Exports {
    on_request: TypedFunc<(), (types::Action,)>,
    on_response: TypedFunc<(), (types::Action,)>,
    /// Typed per call: their `list<u8>` parameter is borrowed.
    on_request_body: Func,
    on_response_body: Func,
}

pub struct InstancePool {
    pre: InstancePre<PluginState>,
    engine: Arc<PluginEngine>,
    pub meta: Arc<PluginMeta>,
    config: String,
    outbound: Arc<dyn Outbound>,
    isolation: Isolation,
    /// Boxed: a call moves its instance out of here, through the call
    /// and back, and a pointer is cheaper to move than the instance.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Instance>>>,
    /// The phases the plugin declared with this config (from the first
    /// instance; every instance with the same config must agree).
    pub phases: Phases,
    /// Whether the plugin can be called directly on the worker thread:
    /// true unless it imports an async host function (`http-call`), which
    /// needs a fiber to suspend on.
    pub blocking: bool,
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
            pre: pre.instance_pre().clone(),
            engine,
            meta,
            config,
            outbound,
            isolation,
            idle: Mutex::new(Vec::new()),
            phases: Phases::default(),
            blocking: true,
        };
        // wasmtime refuses a direct instantiation when the plugin imports
        // an async host function; such a plugin is entered on a fiber.
        let first = match pool.instantiate::<Blocking>().now_or_never() {
            Some(Ok(first)) => first,
            Some(Err(PluginError::Rejected(why))) => return Err(PluginError::Rejected(why)),
            _ => {
                pool.blocking = false;
                pool.instantiate::<OnFiber>().await?
            }
        };
        pool.phases = first.phases;
        pool.checkin(first);
        Ok(Arc::new(pool))
    }

    async fn instantiate<M: Mode>(&self) -> Result<Box<Instance>, PluginError> {
        let limits = &self.meta.limits;
        let state = PluginState {
            request: Box::new(PluginRequest::placeholder()),
            response: PluginResponse::placeholder(),
            lending: Lending::None,
            live_replies: 0,
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
            call_started: Instant::now(),
            waited: std::time::Duration::ZERO,
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(deadline_reached);
        store.set_epoch_deadline(ticks(limits.cpu));
        let instance = M::instantiate(&self.pre, &mut store)
            .await
            .map_err(|e| classify(&e, &store))?;
        let exports = Exports::new(&instance, &mut store).map_err(|e| classify(&e, &store))?;
        let configure = instance
            .get_typed_func::<(&str,), (Result<types::Phases, String>,)>(&mut store, "configure")
            .map_err(|e| classify(&e, &store))?;
        store.data_mut().call_started = Instant::now();
        store.set_epoch_deadline(ticks(limits.cpu));
        let (configured,) = M::call(configure, &mut store, (self.config.as_str(),))
            .await
            .map_err(|e| classify(&e, &store))?;
        let phases = configured.map_err(PluginError::Rejected)?;
        self.meta.metrics.instances(&self.meta.name, 1);
        Ok(Box::new(Instance {
            store,
            exports,
            uses: 0,
            phases: Phases {
                request_headers: phases.contains(types::Phases::REQUEST_HEADERS),
                response_headers: phases.contains(types::Phases::RESPONSE_HEADERS),
                request_body: phases.contains(types::Phases::REQUEST_BODY),
                response_body: phases.contains(types::Phases::RESPONSE_BODY),
            },
        }))
    }

    async fn checkout<M: Mode>(&self) -> Result<Box<Instance>, PluginError> {
        if self.isolation == Isolation::Reuse {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            if let Some(i) = idle {
                return Ok(i);
            }
        }
        self.instantiate::<M>().await
    }

    fn checkin(&self, mut inst: Box<Instance>) {
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

    fn discard(&self, inst: Box<Instance>) {
        drop(inst);
        self.meta.metrics.instances(&self.meta.name, -1);
    }

    /// One phase of this plugin on `head`, changed in place: the head
    /// phase, or with `body` the body phase. The head always comes back,
    /// so a fail-open policy can carry on with it.
    pub(super) async fn call<H: Lent>(
        &self,
        head: &mut H,
        request_id: &str,
        body: Option<&[u8]>,
    ) -> Result<Verdict, PluginError> {
        if self.blocking {
            self.call_blocking(head, request_id, body)
        } else {
            self.call_in::<H, OnFiber>(head, request_id, body).await
        }
    }

    /// Like [`call`](Self::call) for a `blocking` plugin, without a
    /// future: the call runs on this thread, bounded by the CPU deadline.
    pub(super) fn call_blocking<H: Lent>(
        &self,
        head: &mut H,
        request_id: &str,
        body: Option<&[u8]>,
    ) -> Result<Verdict, PluginError> {
        // Every step of a blocking call is ready at once.
        self.call_in::<H, Blocking>(head, request_id, body)
            .now_or_never()
            .unwrap_or_else(|| {
                Err(PluginError::Trap {
                    kind: "error",
                    detail: "a blocking plugin call did not complete".into(),
                })
            })
    }

    async fn call_in<H: Lent, M: Mode>(
        &self,
        head: &mut H,
        request_id: &str,
        body: Option<&[u8]>,
    ) -> Result<Verdict, PluginError> {
        let mut inst = self.checkout::<M>().await?;
        let started = Instant::now();
        prepare_call(&mut inst, request_id, self.meta.limits.cpu, started);
        H::lend(inst.store.data_mut(), head);
        let outcome = match body {
            None => M::call(H::head_export(&inst.exports), &mut inst.store, ())
                .await
                .map(|(a,)| Raw::from(a)),
            Some(b) => {
                let f = H::body_export(&inst.exports);
                match f.typed::<(&[u8],), (types::BodyAction,)>(&inst.store) {
                    Ok(f) => M::call(f, &mut inst.store, (b,))
                        .await
                        .map(|(a,)| Raw::from(a)),
                    Err(e) => Err(e),
                }
            }
        };
        H::take_back(inst.store.data_mut(), head);
        self.finish(inst, outcome, started)
    }

    fn finish(
        &self,
        mut inst: Box<Instance>,
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
            Ok(Raw::Respond(r)) => match inst.store.data_mut().take_reply(r) {
                Ok(r) => reply(r).map(Verdict::Respond),
                Err(e) => Err(PluginError::Invalid(format!("{e:#}"))),
            },
        };
        match &result {
            Ok(_) | Err(PluginError::Rejected(_)) => self.checkin(inst),
            Err(_) => self.discard(inst),
        }
        result
    }
}

impl Exports {
    fn new(
        instance: &wasmtime::component::Instance,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Exports> {
        let func = |store: &mut Store<PluginState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| wasmtime::format_err!("no export `{name}`"))
        };
        Ok(Exports {
            on_request: instance.get_typed_func(&mut *store, "on-request")?,
            on_response: instance.get_typed_func(&mut *store, "on-response")?,
            on_request_body: func(store, "on-request-body")?,
            on_response_body: func(store, "on-response-body")?,
        })
    }
}

/// How the host enters a plugin: directly on the worker thread, or on a
/// fiber, which wasmtime needs for plugins that import async host
/// functions. Both trap at the CPU deadline; neither yields.
trait Mode {
    fn instantiate(
        pre: &InstancePre<PluginState>,
        store: &mut Store<PluginState>,
    ) -> impl Future<Output = wasmtime::Result<wasmtime::component::Instance>> + Send;
    fn call<P, R>(
        f: TypedFunc<P, R>,
        store: &mut Store<PluginState>,
        params: P,
    ) -> impl Future<Output = wasmtime::Result<R>> + Send
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static;
}

/// Direct calls: the futures are ready when made.
struct Blocking;

impl Mode for Blocking {
    fn instantiate(
        pre: &InstancePre<PluginState>,
        store: &mut Store<PluginState>,
    ) -> impl Future<Output = wasmtime::Result<wasmtime::component::Instance>> + Send {
        std::future::ready(pre.instantiate(store))
    }
    fn call<P, R>(
        f: TypedFunc<P, R>,
        store: &mut Store<PluginState>,
        params: P,
    ) -> impl Future<Output = wasmtime::Result<R>> + Send
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        std::future::ready(f.call(store, params))
    }
}

/// Calls on a fiber, for plugins with async imports.
struct OnFiber;

impl Mode for OnFiber {
    fn instantiate(
        pre: &InstancePre<PluginState>,
        store: &mut Store<PluginState>,
    ) -> impl Future<Output = wasmtime::Result<wasmtime::component::Instance>> + Send {
        pre.instantiate_async(store)
    }
    async fn call<P, R>(
        f: TypedFunc<P, R>,
        store: &mut Store<PluginState>,
        params: P,
    ) -> wasmtime::Result<R>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        f.call_async(store, params).await
    }
}

/// A head lent to a plugin for a call: the request's or the response's. It
/// is swapped into the instance's state for the call (where the WIT
/// `request` or `response` functions reach it) and back out after it, so a
/// call allocates nothing for the head.
pub(super) trait Lent: Sized + Send + 'static {
    /// The head's place in the state.
    fn held(state: &mut PluginState) -> &mut Self;
    /// Which head the state holds while it is lent.
    const LENDING: Lending;
    fn head_export(e: &Exports) -> TypedFunc<(), (types::Action,)>;
    fn body_export(e: &Exports) -> &Func;

    /// Swaps `head` into the state for a call.
    fn lend(state: &mut PluginState, head: &mut Self) {
        std::mem::swap(Self::held(state), head);
        state.lending = Self::LENDING;
    }

    /// Swaps it back after the call.
    fn take_back(state: &mut PluginState, head: &mut Self) {
        state.lending = Lending::None;
        std::mem::swap(Self::held(state), head);
    }
}

impl Lent for Box<PluginRequest> {
    fn held(state: &mut PluginState) -> &mut Self {
        &mut state.request
    }
    const LENDING: Lending = Lending::Request;
    fn head_export(e: &Exports) -> TypedFunc<(), (types::Action,)> {
        e.on_request
    }
    fn body_export(e: &Exports) -> &Func {
        &e.on_request_body
    }
}

impl Lent for PluginResponse {
    fn held(state: &mut PluginState) -> &mut Self {
        &mut state.response
    }
    const LENDING: Lending = Lending::Response;
    fn head_export(e: &Exports) -> TypedFunc<(), (types::Action,)> {
        e.on_response
    }
    fn body_export(e: &Exports) -> &Func {
        &e.on_response_body
    }
}

/// A phase's result as the guest returned it, before validation.
enum Raw {
    Continue,
    Replace(Vec<u8>),
    Respond(Resource<Reply>),
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

fn prepare_call(inst: &mut Instance, request_id: &str, cpu: std::time::Duration, started: Instant) {
    let data = inst.store.data_mut();
    data.request_id.clear();
    data.request_id.push_str(request_id);
    data.call_started = started;
    data.waited = std::time::Duration::ZERO;
    inst.store.set_epoch_deadline(ticks(cpu));
}

/// The epoch deadline of a call passed. The epochs count wall-clock time,
/// so a call that spent part of it waiting for an outbound `http-call`
/// (suspended on its fiber) gets that part back; otherwise it has used its
/// `cpu_limit` and traps.
fn deadline_reached(
    store: wasmtime::StoreContextMut<'_, PluginState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    let s = store.data();
    let used = s.call_started.elapsed().saturating_sub(s.waited);
    Ok(match s.meta.limits.cpu.checked_sub(used) {
        Some(left) if !left.is_zero() => wasmtime::UpdateDeadline::Continue(ticks(left)),
        _ => wasmtime::UpdateDeadline::Interrupt,
    })
}

fn ticks(cpu: std::time::Duration) -> u64 {
    (cpu.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// A plugin's reply, checked (its size was, when it was made).
fn reply(r: Reply) -> Result<PluginReply, PluginError> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or(PluginError::Invalid(format!("invalid status {}", r.status)))?;
    let mut headers = HeaderMap::new();
    for (k, v) in r.headers {
        let (n, v) = header_pair(&k, v).map_err(PluginError::Invalid)?;
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
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return PluginError::Capacity(text);
    }
    if e.downcast_ref::<WouldWait>().is_some() {
        return PluginError::Trap {
            kind: "wait",
            detail: text,
        };
    }
    if e.downcast_ref::<OutsidePhase>().is_some() {
        return PluginError::Trap {
            kind: "phase",
            detail: text,
        };
    }
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
