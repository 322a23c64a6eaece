//! Instances of one plugin with one config: checked out exclusively for a
//! phase, reused afterwards, discarded after a trap, a limit, or
//! `max_instance_uses` calls. `isolation = "per-request"` makes a fresh
//! instance for every call instead.

use super::bindings::{wasmgate::plugin::types, FilterPre};
use super::engine::{PluginEngine, WouldWait, EPOCH_TICK};
use super::state::{header_pair, PluginState, RequestRes, ResponseRes};
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
    /// The table slots the request and response heads are lent through:
    /// a head is swapped into its slot for a call and back out after it,
    /// so a call allocates nothing for the head.
    request_slot: u32,
    response_slot: u32,
    uses: u64,
    /// What this instance's `configure` asked for.
    phases: Phases,
}

/// The phase exports of one instance, looked up once.
pub(super) struct Exports {
    on_request: TypedFunc<(Resource<RequestRes>,), (types::Action,)>,
    on_response: TypedFunc<(Resource<ResponseRes>,), (types::Action,)>,
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
        let request_slot = lend(
            &mut store,
            RequestRes(Box::new(PluginRequest::placeholder())),
        );
        let response_slot = lend(&mut store, ResponseRes(PluginResponse::placeholder()));
        self.meta.metrics.instances(&self.meta.name, 1);
        Ok(Box::new(Instance {
            store,
            exports,
            request_slot,
            response_slot,
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
        let slot = H::slot(&inst);
        H::swap(&mut inst.store, slot, head);
        let lent = Resource::<H::Res>::new_borrow(slot);
        let outcome = match body {
            None => M::call(H::head_export(&inst.exports), &mut inst.store, (lent,))
                .await
                .map(|(a,)| Raw::from(a)),
            Some(b) => {
                let f = H::body_export(&inst.exports);
                match f.typed::<(Resource<H::Res>, &[u8]), (types::BodyAction,)>(&inst.store) {
                    Ok(f) => M::call(f, &mut inst.store, (lent, b))
                        .await
                        .map(|(a,)| Raw::from(a)),
                    Err(e) => Err(e),
                }
            }
        };
        H::swap(&mut inst.store, slot, head);
        self.finish(inst, outcome, started)
    }

    fn finish(
        &self,
        inst: Box<Instance>,
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

/// A head lent to plugins through a table slot: the request's or the
/// response's.
pub(super) trait Lent: Sized + Send + 'static {
    /// The table entry the head is lent in.
    type Res: Send + 'static;
    fn slot(inst: &Instance) -> u32;
    /// The head inside its table entry.
    fn held(res: &mut Self::Res) -> &mut Self;
    fn head_export(e: &Exports) -> TypedFunc<(Resource<Self::Res>,), (types::Action,)>;
    fn body_export(e: &Exports) -> &Func;

    /// Swaps `head` with the one in the slot.
    fn swap(store: &mut Store<PluginState>, slot: u32, head: &mut Self) {
        let table = &mut store.data_mut().table;
        match table.get_mut(&Resource::<Self::Res>::new_own(slot)) {
            Ok(lent) => std::mem::swap(Self::held(lent), head),
            Err(e) => unreachable_table(e),
        }
    }
}

impl Lent for Box<PluginRequest> {
    type Res = RequestRes;
    fn slot(inst: &Instance) -> u32 {
        inst.request_slot
    }
    fn held(res: &mut RequestRes) -> &mut Self {
        &mut res.0
    }
    fn head_export(e: &Exports) -> TypedFunc<(Resource<RequestRes>,), (types::Action,)> {
        e.on_request
    }
    fn body_export(e: &Exports) -> &Func {
        &e.on_request_body
    }
}

impl Lent for PluginResponse {
    type Res = ResponseRes;
    fn slot(inst: &Instance) -> u32 {
        inst.response_slot
    }
    fn held(res: &mut ResponseRes) -> &mut Self {
        &mut res.0
    }
    fn head_export(e: &Exports) -> TypedFunc<(Resource<ResponseRes>,), (types::Action,)> {
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

/// Puts a head into the store's resource table, as the slot it is lent
/// through.
fn lend<T: Send + 'static>(store: &mut Store<PluginState>, head: T) -> u32 {
    match store.data_mut().table.push(head) {
        Ok(r) => r.rep(),
        Err(e) => unreachable_table(e),
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
