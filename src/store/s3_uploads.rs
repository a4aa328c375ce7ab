//! Multipart uploads left open in a bucket: listed with S3's `ListMultipartUploads`
//! (`GET /<bucket>/?uploads&prefix=...`, which `object_store` does not offer) and aborted
//! with `AbortMultipartUpload`. A run killed with SIGKILL cannot abort its own uploads;
//! their parts stay billed (and on a small server disk, fill it) until someone does.
//!
//! The listing request is signed by `object_store`'s own SigV4 signer (a presigned URL with
//! the query signed in) and sent with a client that trusts what the store trusts.

use anyhow::{anyhow, bail, Context};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{Signer, SignedUrlOptions};
use std::time::Duration;

/// The server does not implement ListMultipartUploads (some S3-compatible servers): open
/// uploads cannot be found, which is worth a warning, not a failed prune.
#[derive(Debug, thiserror::Error)]
#[error(
    "this S3 server does not list open multipart uploads (ListMultipartUploads: 501 Not Implemented), so uploads \
     left by killed runs cannot be found and aborted: give the bucket a lifecycle rule that aborts incomplete uploads"
)]
pub struct NotOffered;

/// One open upload: its full key in the bucket and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
}

/// Every open upload whose key starts with `prefix` (a full key prefix), all pages.
pub async fn list(s3: &AmazonS3, http: &reqwest::Client, prefix: &str) -> anyhow::Result<Vec<OpenUpload>> {
    let mut out = Vec::new();
    let mut markers: Option<(String, String)> = None;
    loop {
        let mut query = vec![("uploads".to_string(), String::new()), ("prefix".to_string(), prefix.to_string())];
        if let Some((key, id)) = &markers {
            query.push(("key-marker".into(), key.clone()));
            query.push(("upload-id-marker".into(), id.clone()));
        }
        let url = s3
            .signed_url_opts(reqwest::Method::GET, &Path::from(""), Duration::from_secs(300), &SignedUrlOptions::new().with_query(query))
            .await
            .map_err(|e| anyhow!("signing the request that lists open uploads: {e}"))?;
        let answer = http.get(url.as_str()).send().await.context("listing open multipart uploads")?;
        let status = answer.status();
        let body = answer.text().await.context("reading the list of open multipart uploads")?;
        if status == reqwest::StatusCode::NOT_IMPLEMENTED {
            return Err(NotOffered.into());
        }
        if !status.is_success() {
            bail!("listing open multipart uploads: {status}: {}", element(&body, "Message").unwrap_or_default());
        }
        let page = parse(&body)?;
        out.extend(page.uploads);
        match page.next {
            Some(next) if element(&body, "IsTruncated").as_deref() == Some("true") => markers = Some(next),
            _ => return Ok(out),
        }
    }
}

struct Page {
    uploads: Vec<OpenUpload>,
    next: Option<(String, String)>,
}

/// A `ListMultipartUploadsResult` document: its `<Upload>` entries and the markers of the
/// next page. A small reader for this one flat document, not a general XML parser.
fn parse(body: &str) -> anyhow::Result<Page> {
    if !body.contains("ListMultipartUploadsResult") {
        bail!("the server's answer to ListMultipartUploads is not a ListMultipartUploadsResult");
    }
    let mut uploads = Vec::new();
    for block in body.split("<Upload>").skip(1) {
        let block = block.split("</Upload>").next().unwrap_or_default();
        match (element(block, "Key"), element(block, "UploadId")) {
            (Some(key), Some(upload_id)) => uploads.push(OpenUpload { key, upload_id }),
            _ => bail!("an <Upload> entry without a Key or UploadId in the server's answer"),
        }
    }
    let next = match (element(body, "NextKeyMarker"), element(body, "NextUploadIdMarker")) {
        (Some(k), Some(u)) if !k.is_empty() => Some((k, u)),
        _ => None,
    };
    Ok(Page { uploads, next })
}

/// The text of the first `<name>...</name>` in `xml` (a flat S3 or STS answer), unescaped.
pub(crate) fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(unescape(&xml[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of AWS's documented example (ListMultipartUploads, "Sample Response").
    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>cf/cf_20261201T000000Z/db-0-postgres.tar</NextKeyMarker>
  <NextUploadIdMarker>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>cf/cf_20261201T000000Z/api-0-cloud&amp;controller.tar</Key>
    <UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
    <Initiated>2026-12-01T00:00:01.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>cf/cf_20261201T000000Z/db-0-postgres.tar</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
  </Upload>
</ListMultipartUploadsResult>"#;

    #[test]
    fn reads_uploads_and_the_next_page() {
        let p = parse(PAGE).unwrap();
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(p.uploads[0].key, "cf/cf_20261201T000000Z/api-0-cloud&controller.tar");
        assert_eq!(p.uploads[1].upload_id, "XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw");
        assert_eq!(p.next.unwrap().0, "cf/cf_20261201T000000Z/db-0-postgres.tar");
        let empty = parse("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>").unwrap();
        assert!(empty.uploads.is_empty() && empty.next.is_none());
        assert!(parse("<Error><Code>AccessDenied</Code></Error>").is_err());
        assert!(parse("<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>").is_err());
    }
}
