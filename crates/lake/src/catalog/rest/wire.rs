//! The REST catalog's JSON replies, as floe reads them: `/v1/config`, load-table (with its
//! vended storage credentials) and the namespace and table listings. Fields floe does not use
//! are ignored; missing optional ones take their defaults.

use std::collections::HashMap;

use iceberg::spec::TableMetadata;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct ConfigResponse {
    #[serde(default)]
    pub(super) defaults: HashMap<String, String>,
    #[serde(default)]
    pub(super) overrides: HashMap<String, String>,
}

#[derive(Deserialize)]
pub(super) struct LoadTableResponse {
    #[serde(rename = "metadata-location")]
    pub(super) metadata_location: Option<String>,
    pub(super) metadata: TableMetadata,
    #[serde(default)]
    pub(super) config: HashMap<String, String>,
    #[serde(rename = "storage-credentials", default)]
    pub(super) storage_credentials: Vec<StorageCredential>,
}

#[derive(Deserialize)]
pub(super) struct StorageCredential {
    pub(super) prefix: String,
    #[serde(default)]
    pub(super) config: HashMap<String, String>,
}

impl LoadTableResponse {
    /// The vended credential for `location`: the storage credential of the longest prefix
    /// that holds it, else the one in `config`.
    pub(super) fn credential_for(
        &self,
        location: &str,
    ) -> Option<(String, HashMap<String, String>)> {
        let location = location.trim_end_matches('/');
        self.storage_credentials
            .iter()
            .filter(|c| location.starts_with(c.prefix.trim_end_matches('/')))
            .max_by_key(|c| c.prefix.len())
            .map(|c| (c.prefix.clone(), c.config.clone()))
            .or_else(|| {
                self.config
                    .contains_key("s3.access-key-id")
                    .then(|| (location.to_string(), self.config.clone()))
            })
    }
}

#[derive(Deserialize)]
pub(super) struct ListNamespacesResponse {
    #[serde(default)]
    pub(super) namespaces: Vec<Vec<String>>,
    #[serde(rename = "next-page-token", default)]
    pub(super) next_page_token: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct TableIdentifier {
    pub(super) namespace: Vec<String>,
    pub(super) name: String,
}

#[derive(Deserialize)]
pub(super) struct ListTablesResponse {
    #[serde(default)]
    pub(super) identifiers: Vec<TableIdentifier>,
    #[serde(rename = "next-page-token", default)]
    pub(super) next_page_token: Option<String>,
}

impl ConfigResponse {
    /// The server's setting `key`: its override, else its default.
    pub(super) fn setting(&self, key: &str) -> Option<String> {
        self.overrides
            .get(key)
            .or_else(|| self.defaults.get(key))
            .cloned()
    }
}
