//! Host bindings generated from `wit/plugin.wit`. Private to the plugin
//! host: the rest of the gateway sees only `plugin::*` types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "filter",
    imports: {
        "wasmgate:plugin/host.http-call": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "wasmgate:plugin/types.reply": super::state::Reply,
    },
});
