//! A platform: an API that knows a BOSH director and the products it deployed (Ops
//! Manager), and so what one platform backup takes: the API's export, the director, each
//! chosen product's deployment. The orchestration (`orchestrate::platform`) asks for these
//! parts through this module's types only; how they were discovered stays at the edge
//! (`target::opsman::platform`).

use super::export::Exporter;
use super::Target;
use async_trait::async_trait;

#[async_trait]
pub trait Platform: Send + Sync {
    /// Where the platform is described (Ops Manager's URL), without secrets: recorded in
    /// the platform record.
    fn location(&self) -> String;
    /// What is changing the platform now (Ops Manager applying changes), if anything: a
    /// backup must not start then, and one during which it started is suspect.
    async fn changing(&self) -> anyhow::Result<Option<String>>;
}

/// One chosen product: its type (`cf`) and its deployment's target.
pub struct ProductPart<'a> {
    pub kind: String,
    pub target: &'a dyn Target,
}

/// Everything one platform backup takes, in the order it is taken.
pub struct PlatformParts<'a> {
    pub source: &'a dyn Platform,
    /// The API's own export (Ops Manager's installation).
    pub export: &'a dyn Exporter,
    /// The director VM, over SSH.
    pub director: &'a dyn Target,
    pub products: Vec<ProductPart<'a>>,
}
