//! An artifact in a [`Store`]: writing its objects and committing it, opening and
//! verifying it, listing the committed ones.

use super::marker::{CommitMarker, StoredObject, MARKER_FILE};
use super::metadata::{BackupMetadata, METADATA_FILE};
use super::{parse_artifact_name, sha256_hex};
use super::tar_hash::{Checksums, TarHasher};
use crate::store::codec::{self, Codec, Identities};
use crate::store::metered::MeteredReader;
use crate::store::{self, NotFound, ObjectWriter, Store};
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;

/// Writes one artifact. Objects are recorded as they are committed; nothing is visible as
/// an artifact until [`ArtifactWriter::commit`] writes the marker.
pub struct ArtifactWriter<'s> {
    store: &'s dyn Store,
    name: String,
    objects: Mutex<BTreeMap<String, StoredObject>>,
    /// Every file this writer created or began, committed or not: what [`Self::discard`]
    /// may delete. Never anything else under the name, which may be another run's.
    touched: Mutex<std::collections::BTreeSet<String>>,
}

impl<'s> ArtifactWriter<'s> {
    pub fn new(store: &'s dyn Store, name: impl Into<String>) -> Self {
        ArtifactWriter { store, name: name.into(), objects: Mutex::new(BTreeMap::new()), touched: Mutex::default() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, file: &str) -> String {
        format!("{}/{}", self.name, file)
    }

    /// The key of `file`, noted as this writer's to delete on [`Self::discard`].
    fn touch(&self, file: &str) -> String {
        self.touched.lock().unwrap().insert(file.to_string());
        self.key(file)
    }

    pub async fn create(&self, file: &str) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.store.create(&self.touch(file)).await
    }

    /// [`ArtifactWriter::create`] with the number of bytes expected (see [`Store::create_sized`]).
    pub async fn create_sized(&self, file: &str, size_hint: Option<u64>) -> anyhow::Result<Box<dyn ObjectWriter>> {
        self.store.create_sized(&self.touch(file), size_hint).await
    }

    /// Notes a committed object for the marker.
    pub fn record(&self, file: &str, object: StoredObject) {
        self.objects.lock().unwrap().insert(file.to_string(), object);
    }

    pub async fn put(&self, file: &str, data: &[u8]) -> anyhow::Result<()> {
        let size = store::write_all(self.store, &self.touch(file), data).await?;
        self.record(file, StoredObject { size, sha256: sha256_hex(data) });
        Ok(())
    }

    pub fn objects(&self) -> BTreeMap<String, StoredObject> {
        self.objects.lock().unwrap().clone()
    }

    /// Writes `metadata`, checks that every object the marker will name is in the store with
    /// the size written, then writes the marker: after this the artifact exists. The check
    /// trusts the store, not this writer's memory: an object that vanished while the backup
    /// ran (a prune, a lifecycle rule, an operator) must not be committed as a good backup.
    pub async fn commit(&self, metadata: &BackupMetadata, mut marker: CommitMarker) -> anyhow::Result<()> {
        self.put(METADATA_FILE, metadata.to_yaml()?.as_bytes()).await?;
        marker.objects = self.objects();
        let prefix = format!("{}/", self.name);
        let present: BTreeMap<String, u64> =
            self.store.list(&prefix).await?.into_iter().map(|o| (o.key[prefix.len()..].to_string(), o.size)).collect();
        let mut problems = Vec::new();
        for (file, object) in &marker.objects {
            match present.get(file) {
                None => problems.push(format!("{file} is missing")),
                Some(&size) if size != object.size => problems.push(format!("{file} holds {size} bytes, {} were written", object.size)),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            bail!(
                "refusing to commit {}: {} in {} (removed or changed while the backup ran: a prune, a lifecycle rule?)",
                self.name,
                problems.join(", "),
                self.store.describe()
            );
        }
        store::write_all(self.store, &self.touch(MARKER_FILE), &marker.to_json()?).await?;
        Ok(())
    }

    /// Deletes whatever this writer stored: a failed backup leaves nothing half-written.
    /// Only its own files: an artifact of the same name from another run stays whole.
    pub async fn discard(&self) -> anyhow::Result<()> {
        let files: Vec<String> = self.touched.lock().unwrap().iter().cloned().collect();
        for file in files {
            self.store.delete(&self.key(&file)).await?;
        }
        Ok(())
    }

    /// Can this writer's objects be stored without writing through anything planted at
    /// its name (see [`Store::check_writable`])?
    pub async fn check_writable(&self) -> anyhow::Result<()> {
        self.store.check_writable(&format!("{}/", self.name)).await
    }

    /// Is anything stored under this writer's name already (another run's artifact)?
    pub async fn name_taken(&self) -> anyhow::Result<bool> {
        Ok(!self.store.list(&format!("{}/", self.name)).await?.is_empty())
    }
}

/// A committed artifact (or, when asked for, a bbr artifact without a marker).
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub name: String,
    pub marker: Option<CommitMarker>,
    pub metadata: BackupMetadata,
    /// How the tars are stored (plain for an artifact made by bbr).
    pub codec: Codec,
}

/// One tar file the metadata lists, with where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactEntry {
    /// `None` for a custom artifact (bbr's `backup_one_restore_all`).
    pub instance: Option<(String, String)>,
    /// Job name, or the custom artifact's name.
    pub name: String,
    /// bbr's file name (`web-0-nginx.tar`).
    pub file: String,
    /// The stored object's name (`web-0-nginx.tar.zst.age`; `file` when plain).
    pub stored: String,
    pub checksums: Checksums,
}

impl StoredArtifact {
    pub fn entries(&self) -> Vec<ArtifactEntry> {
        let mut out = Vec::new();
        for inst in &self.metadata.instances {
            for a in &inst.artifacts {
                let file = format!("{}-{}-{}.tar", inst.name, inst.index, a.name);
                out.push(ArtifactEntry {
                    instance: Some((inst.name.clone(), inst.index.clone())),
                    name: a.name.clone(),
                    stored: self.codec.stored_name(&file),
                    file,
                    checksums: a.checksums.clone(),
                });
            }
        }
        for c in &self.metadata.custom_artifacts {
            let file = format!("{}.tar", c.name);
            out.push(ArtifactEntry {
                instance: None,
                name: c.name.clone(),
                stored: self.codec.stored_name(&file),
                file,
                checksums: c.checksums.clone(),
            });
        }
        out
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
}

/// Opens an artifact. Without a marker it is refused, unless `accept_bbr` (restore from
/// a directory named on the command line): then a `metadata` file is enough.
pub async fn open(store: &dyn Store, name: &str, accept_bbr: bool) -> anyhow::Result<StoredArtifact> {
    let marker = match store::read_all(store, &format!("{name}/{MARKER_FILE}")).await {
        Ok(data) => Some(CommitMarker::from_json(&data).with_context(|| format!("artifact {name}"))?),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e.context(format!("reading {name}/{MARKER_FILE}"))),
    };
    let metadata = match store::read_all(store, &format!("{name}/{METADATA_FILE}")).await {
        Ok(data) => {
            // The metadata is what every file is checked against: a changed one (an edit, a
            // damaged object) would pass a damaged file, or blame the transfer for it.
            if let Some(recorded) = marker.as_ref().and_then(|m| m.objects.get(METADATA_FILE)) {
                let sha = sha256_hex(&data);
                if sha != recorded.sha256 {
                    bail!(
                        "artifact {name} is damaged: its metadata changed since it was written (sha256 {sha}; {MARKER_FILE} says {})",
                        recorded.sha256
                    );
                }
            }
            let text = String::from_utf8(data).map_err(|_| anyhow!("{name}/metadata is not UTF-8 text"))?;
            BackupMetadata::from_yaml(&text).with_context(|| format!("artifact {name}"))?
        }
        Err(e) if is_not_found(&e) => {
            if marker.is_some() {
                bail!("artifact {name} is damaged: it has {MARKER_FILE} but no metadata file");
            }
            bail!(
                "no backup artifact {name} in {}: it does not exist, or it is incomplete (no metadata and no {MARKER_FILE})",
                store.describe()
            );
        }
        Err(e) => return Err(e.context(format!("reading {name}/metadata"))),
    };
    if marker.is_none() && !accept_bbr {
        bail!("artifact {name} in {} is not committed (no {MARKER_FILE}): it is incomplete", store.describe());
    }
    let codec = match &marker {
        Some(m) => m.codec().with_context(|| format!("artifact {name}"))?,
        None => Codec::plain(),
    };
    Ok(StoredArtifact { name: name.to_string(), marker, metadata, codec })
}

/// What verification found wrong with one file of an artifact.
pub type Problems = Vec<String>;

/// Compares two checksum maps the way a person wants to read the difference.
pub fn compare_checksums(expected: &Checksums, actual: &Checksums) -> Problems {
    let mut problems = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => problems.push(format!("{path} is missing")),
            Some(got) if got != want => problems.push(format!("{path} has sha256 {got}, expected {want}")),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!("{path} is not in the metadata"));
    }
    problems
}

/// Re-reads one stored tar: checksums of its files and sha256/size of the stored bytes.
pub async fn hash_object(store: &dyn Store, key: &str) -> anyhow::Result<(Checksums, u64, String)> {
    hash_object_with(store, key, &Codec::plain(), &Identities::none()).await
}

/// [`hash_object`] for an object stored with `codec`: the stored bytes are metered as
/// stored, then decoded, and the checksums are of the plain tar's files.
pub async fn hash_object_with(store: &dyn Store, key: &str, codec: &Codec, ids: &Identities) -> anyhow::Result<(Checksums, u64, String)> {
    let (mut plain, metered) = open_decoded(store, key, codec, ids).await?;
    let mut hasher = TarHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = plain.read(&mut buf).await.with_context(|| format!("reading {key}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]).with_context(|| format!("{key} is not a valid tar"))?;
    }
    let sums = hasher.finish().with_context(|| format!("{key} is not a complete tar"))?;
    drop(plain);
    let (size, sha) = metered.totals();
    Ok((sums, size, sha))
}

/// The size and sha256 of the stored bytes of an object opened with [`open_decoded`],
/// known once its decoder has been dropped.
pub struct ObjectMeter(std::sync::Arc<Mutex<Option<(u64, String)>>>);

impl ObjectMeter {
    /// `(size, sha256)` of what was read; `(0, "")` while the decoder is alive.
    pub fn totals(&self) -> (u64, String) {
        self.0.lock().unwrap().take().unwrap_or((0, String::new()))
    }
}

/// Opens a stored object as its plain tar (decrypted, decompressed), metering the stored
/// bytes as they pass: one read serves the caller (per-file checksums, a tar's structure)
/// and the object's own checksum. The store's read and the stored hash run ahead of the
/// caller: an encoded object on the decoder's thread (`codec::decoder`), a plain one on a
/// relay's task (store/relay.rs).
pub async fn open_decoded(
    store: &dyn Store,
    key: &str,
    codec: &Codec,
    ids: &Identities,
) -> anyhow::Result<(Box<dyn tokio::io::AsyncRead + Unpin + Send>, ObjectMeter)> {
    let reader = store.open(key).await?;
    let metered = std::sync::Arc::new(Mutex::new(None));
    let tap = MeterTap { inner: MeteredReader::new(reader), out: metered.clone() };
    let decoded = codec::decoder(Box::new(tap), codec, ids)?;
    let decoded: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
        if codec.is_plain() { Box::new(crate::store::relay::RelayReader::spawn(decoded)) } else { decoded };
    Ok((decoded, ObjectMeter(metered)))
}

/// What is wrong with a stored object's size and sha256 against `lockstep.json`, if it
/// records the object.
pub fn object_problem(art: &StoredArtifact, stored: &str, size: u64, sha: &str) -> Option<String> {
    let obj = art.marker.as_ref()?.objects.get(stored)?;
    (obj.size != size || obj.sha256 != sha).then(|| {
        format!(
            "{stored}: stored object changed since it was written (size {size}, sha256 {sha}; lockstep.json says size {}, sha256 {})",
            obj.size, obj.sha256
        )
    })
}

/// What can be checked without reading a stored byte: every object the metadata lists is
/// in the store, with the size `lockstep.json` recorded, and every tar `lockstep.json`
/// records is in the metadata. A missing or truncated object is found here, before a
/// restore touches any instance; changed bytes only by reading them.
pub async fn check_listing(store: &dyn Store, art: &StoredArtifact) -> anyhow::Result<Problems> {
    let prefix = format!("{}/", art.name);
    let listed: BTreeMap<String, u64> =
        store.list(&prefix).await?.into_iter().filter_map(|o| Some((o.key.strip_prefix(&prefix)?.to_string(), o.size))).collect();
    let mut problems = Vec::new();
    for entry in art.entries() {
        let recorded = art.marker.as_ref().and_then(|m| m.objects.get(&entry.stored)).map(|o| o.size);
        match (listed.get(&entry.stored), recorded) {
            (None, _) => problems.push(format!("{} ({}): not in the store", entry.stored, entry.name)),
            (Some(size), Some(want)) if *size != want => {
                problems.push(format!("{} ({}): the stored object has {size} bytes; lockstep.json says {want}", entry.stored, entry.name))
            }
            _ => {}
        }
    }
    problems.extend(unlisted_tars(art));
    Ok(problems)
}

/// Tars `lockstep.json` records that the metadata does not list.
fn unlisted_tars(art: &StoredArtifact) -> Problems {
    let Some(m) = &art.marker else { return Vec::new() };
    let listed: Vec<String> = art.entries().into_iter().map(|e| e.stored).collect();
    let tar_like = |f: &str| f.contains(".tar") && !f.starts_with("manifest.yml") && f != METADATA_FILE;
    m.objects.keys().filter(|f| tar_like(f) && !listed.contains(f)).map(|f| format!("{f} is in lockstep.json but not in the metadata")).collect()
}

/// A metered reader that leaves its totals behind when it is dropped, so they can be
/// read after a decoder that owns it is done.
struct MeterTap {
    inner: MeteredReader<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    out: std::sync::Arc<Mutex<Option<(u64, String)>>>,
}

impl tokio::io::AsyncRead for MeterTap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Drop for MeterTap {
    fn drop(&mut self) {
        let inner = std::mem::replace(&mut self.inner, MeteredReader::new(Box::new(tokio::io::empty())));
        let (_, size, sha) = inner.into_parts();
        *self.out.lock().unwrap() = Some((size, sha));
    }
}

/// Verifies every file of an artifact against its metadata (and its marker's object
/// hashes when there is one). Returns one line per problem, naming the file and job.
pub async fn verify(store: &dyn Store, art: &StoredArtifact) -> Problems {
    verify_with(store, art, &Identities::none()).await
}

/// [`verify`] of an artifact whose objects may be compressed or encrypted.
pub async fn verify_with(store: &dyn Store, art: &StoredArtifact, ids: &Identities) -> Problems {
    let mut problems = Vec::new();
    for entry in art.entries() {
        let key = format!("{}/{}", art.name, entry.stored);
        match hash_object_with(store, &key, &art.codec, ids).await {
            Ok((sums, size, sha)) => {
                for p in compare_checksums(&entry.checksums, &sums) {
                    problems.push(format!("{} ({}): {p}", entry.stored, entry.name));
                }
                problems.extend(object_problem(art, &entry.stored, size, &sha));
            }
            Err(e) => problems.push(format!("{} ({}): {e:#}", entry.stored, entry.name)),
        }
    }
    problems.extend(unlisted_tars(art));
    problems
}

/// Committed artifacts in a store, oldest first (by the time in their names).
pub async fn list(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<(chrono::DateTime<chrono::Utc>, String)> = store
        .list("")
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.strip_suffix(&format!("/{MARKER_FILE}"))?.to_string();
            let (_, at) = parse_artifact_name(&name)?;
            Some((at, name))
        })
        .collect();
    names.sort();
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// Brings artifact `name` from `src` into `dest` as a plain bbr artifact: every tar
/// decrypted and decompressed under bbr's name, re-hashed on the way against `metadata`
/// (a file that differs fails the fetch and leaves nothing in `dest`), the manifest
/// decrypted, and a `lockstep.json` rewritten for the plain objects (written last, so
/// `dest` holds the artifact whole or not at all). Returns the new marker.
pub async fn fetch(src: &dyn Store, name: &str, dest: &dyn Store, ids: &Identities) -> anyhow::Result<CommitMarker> {
    use crate::artifact::tar_hash::HashingReader;
    use crate::store::metered::MeteredWriter;
    use tokio::io::AsyncWriteExt;

    let art = open(src, name, false).await?;
    if art.codec.encrypted() && ids.is_empty() {
        bail!(
            "artifact {name} is encrypted (age, to {}): give --identity FILE with the matching age identity",
            art.codec.recipients.join(", ")
        );
    }
    if !dest.list(&format!("{name}/")).await?.is_empty() {
        bail!("{name} already exists in {}: remove it or fetch into another directory", dest.describe());
    }
    let marker = art.marker.clone().expect("open without accept_bbr returns committed artifacts");
    let writer = ArtifactWriter::new(dest, name);
    let result = async {
        for entry in art.entries() {
            let key = format!("{name}/{}", entry.stored);
            let what = format!("{} ({})", entry.stored, entry.name);
            let totals = std::sync::Arc::new(Mutex::new(None));
            let tap = MeterTap { inner: MeteredReader::new(src.open(&key).await.with_context(|| what.clone())?), out: totals.clone() };
            let mut reader = HashingReader::new(codec::decoder(Box::new(tap), &art.codec, ids).with_context(|| what.clone())?);
            let mut object = MeteredWriter::new(writer.create(&entry.file).await?);
            let copied = async {
                tokio::io::copy(&mut reader, &mut object).await?;
                object.shutdown().await
            }
            .await;
            let (inner, size, sha) = object.into_parts();
            let (src_reader, hasher) = reader.into_parts();
            drop(src_reader);
            if let Err(e) = copied {
                inner.abort().await;
                return Err(anyhow::Error::from(e).context(format!("reading {what}")));
            }
            let sums = match hasher.finish() {
                Ok(s) => s,
                Err(e) => {
                    inner.abort().await;
                    return Err(anyhow::Error::from(e).context(format!("{what} is not a complete tar")));
                }
            };
            let mut problems: Problems = compare_checksums(&entry.checksums, &sums).into_iter().map(|p| format!("{what}: {p}")).collect();
            let stored_totals = totals.lock().unwrap().take();
            if let (Some(obj), Some((ssize, ssha))) = (marker.objects.get(&entry.stored), stored_totals)
                && (obj.size != ssize || obj.sha256 != ssha)
            {
                problems.push(format!("{}: stored object changed since it was written", entry.stored));
            }
            if !problems.is_empty() {
                inner.abort().await;
                bail!("Backup is corrupted: {} problem(s) in {name}:\n  {}", problems.len(), problems.join("\n  "));
            }
            inner.commit().await.with_context(|| format!("writing {}", entry.file))?;
            writer.record(&entry.file, StoredObject { size, sha256: sha });
        }
        for (file, plain) in [("manifest.yml.age", true), ("manifest.yml", false)] {
            if !marker.objects.contains_key(file) {
                continue;
            }
            let data = store::read_all(src, &format!("{name}/{file}")).await?;
            let data = if plain { codec::decrypt_bytes(&data, ids).with_context(|| format!("decrypting {file}"))? } else { data };
            writer.put("manifest.yml", &data).await?;
        }
        let mut m = marker.clone();
        m.set_codec(&Codec::plain());
        m.warnings.push(format!("fetched from {} as a plain bbr artifact", src.describe()));
        writer.commit(&art.metadata, m).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = writer.discard().await;
        return Err(e);
    }
    let mut m = marker;
    m.set_codec(&Codec::plain());
    m.objects = writer.objects();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[tokio::test]
    async fn commit_refuses_when_an_object_vanished_or_changed() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::new(dir.path());
        let meta = BackupMetadata::default();
        for (name, damage) in [("cf_20261201T000000Z", "delete"), ("cf_20261202T000000Z", "truncate")] {
            let w = ArtifactWriter::new(&store, name);
            w.put("api-0-cc.tar", b"tar bytes").await.unwrap();
            w.put("db-0-pg.tar", b"more tar bytes").await.unwrap();
            let key = format!("{name}/db-0-pg.tar");
            match damage {
                "delete" => store.delete(&key).await.unwrap(),
                _ => std::fs::write(dir.path().join(&key), b"short").unwrap(),
            }
            let e = w.commit(&meta, CommitMarker::new("cf", name)).await.unwrap_err().to_string();
            assert!(e.contains("refusing to commit") && e.contains("db-0-pg.tar"), "{e}");
            assert!(!dir.path().join(name).join(MARKER_FILE).exists(), "committed anyway");
        }
        let w = ArtifactWriter::new(&store, "cf_20261203T000000Z");
        w.put("api-0-cc.tar", b"tar bytes").await.unwrap();
        w.commit(&meta, CommitMarker::new("cf", "cf_20261203T000000Z")).await.unwrap();
        assert!(dir.path().join("cf_20261203T000000Z").join(MARKER_FILE).exists());
    }

    #[tokio::test]
    async fn discard_deletes_only_what_this_writer_wrote() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::new(dir.path());
        let name = "cf_20261204T000000Z";
        let other = ArtifactWriter::new(&store, name);
        other.put("api-0-cc.tar", b"the other run's tar").await.unwrap();
        let mine = ArtifactWriter::new(&store, name);
        assert!(mine.name_taken().await.unwrap());
        mine.put("db-0-pg.tar", b"mine").await.unwrap();
        mine.discard().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(name).join("api-0-cc.tar")).unwrap(), b"the other run's tar");
        assert!(!dir.path().join(name).join("db-0-pg.tar").exists());
        assert!(!ArtifactWriter::new(&store, "cf_20261205T000000Z").name_taken().await.unwrap());
    }
}
