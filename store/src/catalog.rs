//! A short-lived read cache of tenants and base models for the submit
//! path, which reads both on every submit. This store's own writes clear
//! it at once; writes by another replica on the same database show within
//! [`CATALOG_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use finpool_domain::{BaseModel, Tenant};

use crate::{Store, StoreError};

/// How stale a cached tenant or model list may be.
pub const CATALOG_TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Catalog {
    tenants: Mutex<HashMap<String, (Instant, Tenant)>>,
    models: Mutex<Option<(Instant, Arc<Vec<BaseModel>>)>>,
}

impl Catalog {
    pub(crate) fn clear(&self) {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.models.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Store {
    /// As [`Store::get_tenant`], from the catalog cache when fresh.
    pub async fn get_tenant_cached(&self, id: &str) -> Result<Tenant, StoreError> {
        let catalog = &self.inner.catalog;
        if let Some((at, t)) = catalog
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            && at.elapsed() < CATALOG_TTL
        {
            return Ok(t.clone());
        }
        let tenant = self.get_tenant(id).await?;
        catalog
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), (Instant::now(), tenant.clone()));
        Ok(tenant)
    }

    /// As [`Store::list_models`], from the catalog cache when fresh.
    pub async fn list_models_cached(&self) -> Result<Arc<Vec<BaseModel>>, StoreError> {
        let catalog = &self.inner.catalog;
        if let Some((at, models)) = &*catalog.models.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < CATALOG_TTL
        {
            return Ok(models.clone());
        }
        let models = Arc::new(self.list_models().await?);
        *catalog.models.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), models.clone()));
        Ok(models)
    }
}
