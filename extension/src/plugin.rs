//! What every plugin kind offers the server: its registry name, routes and a `call` handler.
//!
//! This mirrors osquery's `Plugin::call(PluginRequest, PluginResponse)` and `routeInfo()`
//! (osquery `osquery/core/plugins/plugin.h`) and the broadcast the extension registers with
//! (`ExtensionRegistry` in osquery.thrift).

use crate::thrift::server::Dispatch;
use crate::thrift::wire::{ExtensionRegistry, ExtensionResponse, StringMap};

/// The answers every plugin gives; they are the protocol's, re-exported for the plugins.
pub use crate::thrift::wire::{failure, success};

/// A plugin served by this extension.
pub trait Plugin: Send + Sync {
    /// `table`, `logger`, ...
    fn registry(&self) -> &'static str;
    /// The registry item name (table name, logger name).
    fn name(&self) -> &str;
    /// The route information broadcast at registration.
    fn routes(&self) -> Vec<StringMap>;
    /// Handles one `Extension.call`.
    fn call(&self, request: &StringMap) -> ExtensionResponse;
}

/// The plugins of this extension, looked up by registry and item.
pub struct Plugins {
    /// Every plugin, in registration order.
    plugins: Vec<Box<dyn Plugin>>,
}

impl Plugins {
    pub fn new(plugins: Vec<Box<dyn Plugin>>) -> Self {
        Plugins { plugins }
    }

    /// The registry sent with `registerExtension`.
    pub fn broadcast(&self) -> ExtensionRegistry {
        let mut reg = ExtensionRegistry::new();
        for p in &self.plugins {
            reg.entry(p.registry().to_string())
                .or_default()
                .insert(p.name().to_string(), p.routes());
        }
        reg
    }
}

impl Dispatch for Plugins {
    fn call(&self, registry: &str, item: &str, request: &StringMap) -> ExtensionResponse {
        match self
            .plugins
            .iter()
            .find(|p| p.registry() == registry && p.name() == item)
        {
            Some(p) => p.call(request),
            None => failure(format!(
                "log_sensor extension has no {registry} plugin named {item:?}"
            )),
        }
    }
}
