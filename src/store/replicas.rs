//! Replicas: one stream written to several stores at once (`--store` given more than
//! once). The data is read from the instance once; every byte is offered to every store,
//! each through its own bounded writer, so memory stays bounded whatever the number of
//! replicas (a slow store slows the stream; it never makes it buffer).
//!
//! A store that fails (at preflight, or while writing any object) is dropped from the
//! rest of the run: it receives no further object and, above all, no commit marker, so it
//! never shows a committed artifact that lacks a file. The run goes on while at least
//! `min_stores` stores remain; [`Store::warnings`] then says which copies are missing.
//! Reads use the first store that has the object.

use super::{NotFound, ObjectInfo, ObjectWriter, Store};
use anyhow::anyhow;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

struct Shared {
    names: Vec<String>,
    min: usize,
    /// Store index -> why it was dropped.
    failed: Mutex<BTreeMap<usize, String>>,
}

impl Shared {
    fn fail(&self, i: usize, why: String) {
        self.failed.lock().unwrap().entry(i).or_insert(why);
    }
    fn is_failed(&self, i: usize) -> bool {
        self.failed.lock().unwrap().contains_key(&i)
    }
    fn too_few(&self, live: usize) -> anyhow::Error {
        let failed = self.failed.lock().unwrap();
        let reasons: Vec<String> = failed.iter().map(|(i, why)| format!("{}: {why}", self.names[*i])).collect();
        anyhow!(
            "only {live} of {} stores can take the backup, and at least {} must (--min-stores):\n  {}",
            self.names.len(),
            self.min,
            reasons.join("\n  ")
        )
    }
}

pub struct ReplicaStore {
    stores: Vec<Box<dyn Store>>,
    shared: Arc<Shared>,
    /// Lists answered by a later store because the ones before it failed.
    list_fallbacks: Mutex<Vec<String>>,
}

impl ReplicaStore {
    /// `min_stores` copies must succeed (1 to the number of stores).
    pub fn new(stores: Vec<Box<dyn Store>>, min_stores: usize) -> anyhow::Result<Self> {
        if stores.is_empty() {
            anyhow::bail!("no store given");
        }
        if min_stores == 0 || min_stores > stores.len() {
            anyhow::bail!("--min-stores {min_stores} must be between 1 and the number of stores ({})", stores.len());
        }
        let names = stores.iter().map(|s| s.describe()).collect();
        Ok(ReplicaStore {
            stores,
            shared: Arc::new(Shared { names, min: min_stores, failed: Mutex::new(BTreeMap::new()) }),
            list_fallbacks: Mutex::new(Vec::new()),
        })
    }

    fn live(&self) -> Vec<usize> {
        (0..self.stores.len()).filter(|&i| !self.shared.is_failed(i)).collect()
    }

    /// Stores dropped so far, with the reason.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.shared.failed.lock().unwrap().iter().map(|(i, w)| (self.shared.names[*i].clone(), w.clone())).collect()
    }
}

#[async_trait]
impl Store for ReplicaStore {
    fn describe(&self) -> String {
        if self.stores.len() == 1 {
            return self.shared.names[0].clone();
        }
        format!("{} replicas ({})", self.stores.len(), self.shared.names.join(", "))
    }

    async fn preflight(&self) -> anyhow::Result<()> {
        let results = futures::future::join_all(self.stores.iter().map(|s| s.preflight())).await;
        for (i, r) in results.into_iter().enumerate() {
            if let Err(e) = r {
                self.shared.fail(i, format!("{e:#}"));
            }
        }
        let live = self.live().len();
        if live < self.shared.min {
            if self.stores.len() == 1 {
                let why = self.shared.failed.lock().unwrap().values().next().cloned().unwrap_or_default();
                return Err(anyhow!(why));
            }
            return Err(self.shared.too_few(live));
        }
        Ok(())
    }

    async fn check_writable(&self, prefix: &str) -> anyhow::Result<()> {
        for i in self.live() {
            self.stores[i].check_writable(prefix).await?;
        }
        Ok(())
    }

    fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .failed()
            .into_iter()
            .map(|(name, why)| format!("the copy in {name} is missing: that store failed ({why})"))
            .collect();
        w.extend(self.list_fallbacks.lock().unwrap().iter().cloned());
        w
    }

    async fn create(&self, key: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.create_sized(key, None).await
    }

    /// Created in every live store, or in none: a store that already holds the key undoes
    /// the copies made before it; a store that fails is dropped as for any write.
    async fn put_if_absent(&self, key: &str, data: &[u8]) -> anyhow::Result<bool> {
        let mut created = Vec::new();
        for i in self.live() {
            match self.stores[i].put_if_absent(key, data).await {
                Ok(true) => created.push(i),
                Ok(false) => {
                    for j in created {
                        let _ = self.stores[j].delete(key).await;
                    }
                    return Ok(false);
                }
                Err(e) => self.shared.fail(i, format!("{e:#}")),
            }
        }
        let live = self.live().len();
        if live < self.shared.min {
            return Err(self.shared.too_few(live));
        }
        Ok(true)
    }

    async fn create_sized(&self, key: &str, size_hint: Option<u64>) -> anyhow::Result<Box<dyn ObjectWriter>> {
        let live = self.live();
        let results = futures::future::join_all(live.iter().map(|&i| self.stores[i].create_sized(key, size_hint))).await;
        let mut writers = Vec::new();
        for (&i, r) in live.iter().zip(results) {
            match r {
                Ok(w) => writers.push(Slot { index: i, writer: Some(w), offset: 0, shut: false }),
                Err(e) => self.shared.fail(i, format!("{e:#}")),
            }
        }
        if writers.len() < self.shared.min {
            for s in writers {
                if let Some(w) = s.writer {
                    w.abort().await;
                }
            }
            return Err(if self.stores.len() == 1 { anyhow!(self.failed().pop().map(|f| f.1).unwrap_or_default()) } else { self.shared.too_few(0) });
        }
        if writers.len() == 1 && self.stores.len() == 1 {
            // One store: no fan-out needed.
            return Ok(writers.pop().unwrap().writer.unwrap());
        }
        Ok(Box::new(FanOut { slots: writers, buf: Vec::new(), shared: self.shared.clone(), dead: Vec::new() }))
    }

    async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
        let mut errors = Vec::new();
        for s in &self.stores {
            match s.open(key).await {
                Ok(r) => return Ok(r),
                Err(e) if e.downcast_ref::<NotFound>().is_some() => {}
                Err(e) => errors.push(format!("{}: {e:#}", s.describe())),
            }
        }
        if errors.is_empty() {
            return Err(NotFound { key: key.to_string(), store: self.describe() }.into());
        }
        Err(anyhow!("{key} could not be read from any store:\n  {}", errors.join("\n  ")))
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let mut errors = Vec::new();
        for (i, s) in self.stores.iter().enumerate() {
            if self.shared.is_failed(i) && i + 1 < self.stores.len() {
                continue;
            }
            match s.list(prefix).await {
                Ok(l) => {
                    // Listing a replica because the stores before it failed is not silent:
                    // a missing primary bucket must not pass unnoticed.
                    if !errors.is_empty() {
                        self.list_fallbacks.lock().unwrap().push(format!(
                            "listed {} instead: {}",
                            s.describe(),
                            errors.join("; ")
                        ));
                    }
                    return Ok(l);
                }
                Err(e) => errors.push(format!("{} could not be listed: {e:#}", s.describe())),
            }
        }
        Err(anyhow!("no store could be listed:\n  {}", errors.join("\n  ")))
    }

    /// Deletes from every store; a store already known to have failed is tried but its
    /// errors do not count.
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let results = futures::future::join_all(self.stores.iter().map(|s| s.delete(key))).await;
        for (i, r) in results.into_iter().enumerate() {
            if let Err(e) = r
                && !self.shared.is_failed(i)
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// In every copy; an error is returned unless that copy already failed this run.
    async fn abort_open_uploads(&self, prefix: &str, keep: &(dyn for<'k> Fn(&'k str) -> bool + Send + Sync)) -> anyhow::Result<usize> {
        let results = futures::future::join_all(self.stores.iter().map(|s| s.abort_open_uploads(prefix, keep))).await;
        let mut aborted = 0;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(n) => aborted += n,
                Err(e) if !self.shared.is_failed(i) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(aborted)
    }
}

struct Slot {
    index: usize,
    writer: Option<Box<dyn ObjectWriter>>,
    /// How much of the shared buffer this writer has taken.
    offset: usize,
    shut: bool,
}

/// Writes every byte to every live writer. A chunk is copied once into `buf` and handed
/// to each writer from its own offset; the next chunk is accepted when all have it.
struct FanOut {
    slots: Vec<Slot>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Writers that failed, to abort.
    dead: Vec<Box<dyn ObjectWriter>>,
}

const CHUNK: usize = 256 * 1024;

impl FanOut {
    fn drop_slot(&mut self, pos: usize, why: String) {
        let slot = self.slots.remove(pos);
        self.shared.fail(slot.index, why);
        if let Some(w) = slot.writer {
            self.dead.push(w);
        }
    }

    fn check_enough(&self) -> io::Result<()> {
        if self.slots.len() < self.shared.min {
            return Err(io::Error::other(format!("{:#}", self.shared.too_few(self.slots.len()))));
        }
        Ok(())
    }

    /// Hands `buf` to every writer; Ready when all have all of it.
    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut pending = false;
        let mut i = 0;
        while i < self.slots.len() {
            let mut failed = None;
            {
                let slot = &mut self.slots[i];
                let w = slot.writer.as_mut().expect("live slot");
                while slot.offset < self.buf.len() {
                    match Pin::new(&mut **w).poll_write(cx, &self.buf[slot.offset..]) {
                        Poll::Ready(Ok(0)) => {
                            failed = Some("the store accepted no more bytes".to_string());
                            break;
                        }
                        Poll::Ready(Ok(n)) => slot.offset += n,
                        Poll::Ready(Err(e)) => {
                            failed = Some(e.to_string());
                            break;
                        }
                        Poll::Pending => {
                            pending = true;
                            break;
                        }
                    }
                }
            }
            match failed {
                Some(why) => self.drop_slot(i, why),
                None => i += 1,
            }
        }
        self.check_enough()?;
        if pending {
            return Poll::Pending;
        }
        self.buf.clear();
        for s in &mut self.slots {
            s.offset = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FanOut {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        let n = data.len().min(CHUNK);
        this.buf.extend_from_slice(&data[..n]);
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        this.poll_every_slot(cx, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        this.poll_every_slot(cx, true)
    }
}

impl FanOut {
    /// Flushes (or shuts down) every live store's writer; a writer that fails drops its
    /// store. Ready once every remaining writer is, and enough stores remain.
    fn poll_every_slot(&mut self, cx: &mut TaskContext<'_>, shutdown: bool) -> Poll<io::Result<()>> {
        let mut pending = false;
        let mut i = 0;
        while i < self.slots.len() {
            if shutdown && self.slots[i].shut {
                i += 1;
                continue;
            }
            let w = Pin::new(&mut **self.slots[i].writer.as_mut().expect("live slot"));
            let polled = if shutdown { w.poll_shutdown(cx) } else { w.poll_flush(cx) };
            match polled {
                Poll::Ready(Ok(())) => {
                    if shutdown {
                        self.slots[i].shut = true;
                    }
                    i += 1;
                }
                Poll::Ready(Err(e)) => self.drop_slot(i, e.to_string()),
                Poll::Pending => {
                    pending = true;
                    i += 1;
                }
            }
        }
        self.check_enough()?;
        if pending { Poll::Pending } else { Poll::Ready(Ok(())) }
    }
}

#[async_trait]
impl ObjectWriter for FanOut {
    async fn commit(mut self: Box<Self>) -> anyhow::Result<u64> {
        for w in self.dead.drain(..) {
            w.abort().await;
        }
        let slots = std::mem::take(&mut self.slots);
        let results =
            futures::future::join_all(slots.into_iter().map(|mut s| async move { (s.index, s.writer.take().unwrap().commit().await) }))
                .await;
        let mut size = None;
        let mut ok = 0;
        for (i, r) in results {
            match r {
                Ok(n) => {
                    ok += 1;
                    size = Some(n);
                }
                Err(e) => self.shared.fail(i, format!("{e:#}")),
            }
        }
        if ok < self.shared.min {
            return Err(self.shared.too_few(ok));
        }
        Ok(size.unwrap_or(0))
    }

    async fn abort(mut self: Box<Self>) {
        let mut all: Vec<Box<dyn ObjectWriter>> = self.dead.drain(..).collect();
        all.extend(self.slots.drain(..).filter_map(|mut s| s.writer.take()));
        futures::future::join_all(all.into_iter().map(|w| w.abort())).await;
    }
}
