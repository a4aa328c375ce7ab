//! Something backed up as one file rather than from instances: an API's export (Ops
//! Manager's `installation.zip`). The orchestration stores it as an artifact of its own
//! (`orchestrate::export`); this is what it asks of the source ([`Exporter`]), and of the
//! destination an export is imported back into ([`Importer`], `orchestrate::import`).

use crate::transport::Writer;
use async_trait::async_trait;

#[async_trait]
pub trait Exporter: Send + Sync {
    /// Names the artifact: `<name>_<timestamp>` (`opsman`).
    fn deployment_name(&self) -> &str;
    /// The file's name inside the artifact's tar (`installation.zip`).
    fn file_name(&self) -> &str;
    /// Where the export comes from, without secrets, for the log and `lockstep.json`.
    fn location(&self) -> String;
    /// Starts the export: its size is known before its first byte.
    async fn start(&self) -> anyhow::Result<Box<dyn ExportStream + '_>>;
}

#[async_trait]
pub trait ExportStream: Send {
    /// The export's size in bytes, as announced.
    fn size(&self) -> u64;
    /// Copies the whole export into `out` as it arrives, calling `progress` with the bytes
    /// so far; an export that ends short of its size, or is cut, is an error.
    async fn copy_to(self: Box<Self>, out: Writer<'_>, progress: &mut (dyn FnMut(u64) + Send)) -> anyhow::Result<u64>;
}

/// The bytes of an export on their way to an [`Importer`], as they are read from the store.
/// An `Err` item means the stored export is damaged: the importer must abort what it was
/// sending, so the destination never takes a partial or altered file.
pub type ImportBody = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

#[async_trait]
pub trait Importer: Send + Sync {
    /// Where the import goes, without secrets, for the log.
    fn location(&self) -> String;
    /// Refuses, saying why, when the destination cannot take an import (it is configured
    /// already, or not reachable). Sends nothing.
    async fn check_unconfigured(&self) -> anyhow::Result<()>;
    /// Sends the file `file_name` of `size` bytes, read from `body` as it arrives.
    async fn send(&self, file_name: &str, size: u64, body: ImportBody) -> anyhow::Result<()>;
    /// Waits until the destination has taken the import in and is ready for use.
    async fn wait_ready(&self, progress: &(dyn Fn(String) + Send + Sync)) -> anyhow::Result<()>;
}
