use std::sync::Arc;

use finpool_domain::Inventory;

/// The pool's nodes and cards, as discovered (NVML, a pool file, node
/// labels).
pub trait InventorySource: Send + Sync + 'static {
    fn inventory(&self) -> Arc<Inventory>;
}

/// A fixed inventory.
impl InventorySource for Arc<Inventory> {
    fn inventory(&self) -> Arc<Inventory> {
        self.clone()
    }
}
