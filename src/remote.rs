//! Inputs and outputs on object stores: `s3://bucket/key` and
//! `gs://bucket/key` through the object_store crate, and `file://` URLs,
//! which are local paths.
//!
//! Credentials and endpoints come from the usual environment variables:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for S3;
//! `GOOGLE_SERVICE_ACCOUNT` (or `GOOGLE_APPLICATION_CREDENTIALS`) for GCS.
//!
//! Inputs are copied, in pieces, to a temporary directory before the run
//! reads them, and outputs are written locally and uploaded when the run is
//! complete, `summary.json` last. Neither needs the whole file in memory.
//! Each call runs on a thread of its own with its own runtime, so it can be
//! made from synchronous and asynchronous code alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::error::{Error, Result};

/// Size of the parts of an upload.
const PART_BYTES: usize = 8 << 20;

/// Returns whether `text` names an object store location (`s3://` or `gs://`).
pub fn is_remote(text: &str) -> bool {
    text.starts_with("s3://") || text.starts_with("gs://")
}

/// Returns the local path of a `file://` URL, or `text` itself as a path
/// (an `s3://` or `gs://` URL too). Other URL schemes are rejected.
pub fn local_path(text: &str) -> std::result::Result<PathBuf, String> {
    if is_remote(text) {
        return Ok(PathBuf::from(text));
    }
    if !text.starts_with("file://") {
        if let Some((scheme, _)) = text.split_once("://") {
            let valid = !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if valid {
                return Err(format!(
                    "{text}: unsupported URL scheme `{scheme}://`; gato reads s3://, gs:// and \
                     file:// URLs (in lower case) and local paths"
                ));
            }
        }
        return Ok(PathBuf::from(text));
    }
    let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text}: {e}"))?;
    url.to_file_path().map_err(|_| {
        format!("{text} is not a local file URL; write file:///absolute/path")
    })
}

/// Opens the store of an `s3://` or `gs://` URL and returns it with the
/// object path.
fn open(text: &str) -> std::result::Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let (scheme, bucket, key) = split(text)?;
    let bucket_url = format!("{scheme}://{bucket}");
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" => Arc::new(check_endpoint().and_then(|()| {
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(&bucket_url)
                .build()
                .map_err(|e| format!("{text}: {}", describe(&e)))
        })?),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&bucket_url)
                .build()
                .map_err(|e| format!("{text}: {}", describe(&e)))?,
        ),
        other => return Err(format!("{text}: unsupported scheme {other}://")),
    };
    let path = ObjectPath::parse(&key).map_err(|e| format!("{text}: {e}"))?;
    Ok((store, path))
}

/// Splits an `s3://` or `gs://` URL into its scheme, bucket and key.
///
/// The key is taken as written, so `#`, `?` and `%` are characters of the
/// key rather than a fragment, a query or escapes. Empty segments (`//`)
/// are dropped.
fn split(text: &str) -> std::result::Result<(&str, &str, String), String> {
    let (scheme, rest) =
        text.split_once("://").ok_or_else(|| format!("invalid URL {text}: no scheme"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!(
            "{text}: the bucket name is missing; write {scheme}://BUCKET/PATH"
        ));
    }
    let key: Vec<&str> = key.split('/').filter(|s| !s.is_empty()).collect();
    Ok((scheme, bucket, key.join("/")))
}

/// Returns `url` with empty key segments dropped, so that two spellings of
/// one object compare equal.
pub fn normalized(url: &str) -> String {
    match split(url) {
        Ok((scheme, bucket, key)) => format!("{scheme}://{bucket}/{key}"),
        Err(_) => url.to_string(),
    }
}

/// Variables from which the S3 client takes its endpoint.
const ENDPOINT_VARIABLES: [&str; 2] = ["AWS_ENDPOINT", "AWS_ENDPOINT_URL"];

/// Checks that the S3 endpoint, where one is set, is an http or https URL:
/// the S3 client panics on other values when it signs a request.
fn check_endpoint() -> std::result::Result<(), String> {
    for name in ENDPOINT_VARIABLES {
        let Ok(value) = std::env::var(name) else {
            continue;
        };
        let valid = url::Url::parse(&value).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some()
        });
        if !valid {
            return Err(format!(
                "{name}={value} is not a valid endpoint; write http://HOST:PORT or https://HOST"
            ));
        }
    }
    Ok(())
}

/// Returns the message of an object store error: the code and message of
/// an S3 or GCS error reply instead of its whole XML body, followed by what
/// to do where the cause is a usual one.
fn describe(error: &object_store::Error) -> String {
    fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(&text[start..end])
    }
    let text = error.to_string();
    let mut message = match (tag(&text, "Code"), tag(&text, "Message")) {
        (Some(code), Some(detail)) => format!("{code}: {detail}"),
        (Some(code), None) => code.to_string(),
        _ => text.clone(),
    };
    if text.contains("169.254.169.254") || text.contains("metadata.google.internal") {
        message.push_str(
            "; no credentials were found, so the client asked the cloud metadata service: \
             set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://, or \
             GOOGLE_APPLICATION_CREDENTIALS for gs://",
        );
    } else if text.contains("NoSuchBucket") {
        message.push_str("; check the bucket name, or create the bucket first");
    } else if text.contains("builder error")
        && std::env::var("AWS_ALLOW_HTTP").is_err()
        && ENDPOINT_VARIABLES
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|e| e.starts_with("http://")))
    {
        message.push_str(
            "; the endpoint is plain http: set AWS_ALLOW_HTTP=true to allow it",
        );
    } else if unreachable_aws(
        &text,
        ENDPOINT_VARIABLES.iter().any(|v| std::env::var(v).is_ok()),
    ) {
        message.push_str(
            "; AWS could not be reached: check the network, or set AWS_ENDPOINT to the \
             URL of an S3-compatible server",
        );
    }
    message
}

/// Returns whether the error text `text` is a failed connection to AWS
/// itself, as when no endpoint is set (`endpoint_set` false) for a store
/// that is not AWS.
fn unreachable_aws(text: &str, endpoint_set: bool) -> bool {
    !endpoint_set
        && text.contains("amazonaws.com")
        && (text.contains("error sending request") || text.contains("dns error"))
}

/// Returns the URL of `path` in the bucket of `base`.
fn url_of(base: &str, path: &ObjectPath) -> String {
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let bucket_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}/{}", &base[..bucket_end], path)
}

/// Runs `future` to completion on a new thread with its own runtime.
fn block_on<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> std::result::Result<T, String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the object store: {e}"))?;
        Ok(runtime.block_on(future))
    })
    .join()
    .map_err(|_| "the object store thread panicked".to_string())?
}

/// Lists the URLs of the objects that `pattern` names, sorted.
///
/// A pattern with `*`, `?` or `[` in its key names every object whose key
/// matches it. Any other pattern names one object, which must exist.
pub fn expand(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let (store, path) = open(pattern)?;
    let key = path.to_string();
    if key.is_empty() || pattern.ends_with('/') {
        return Err(format!(
            "input {pattern} names a bucket or a prefix, not an object; name the objects, \
             for example {}/*.parquet",
            pattern.trim_end_matches('/')
        ));
    }
    let Some(glob_at) = key.find(['*', '?', '[']) else {
        let found = block_on(async move {
            let found = store.head(&path).await;
            // An object that is not there may be a prefix of others.
            let under = match &found {
                Err(object_store::Error::NotFound { .. }) => {
                    store.list(Some(&path)).next().await.is_some_and(|o| o.is_ok())
                }
                _ => false,
            };
            (found, under)
        })?;
        return match found {
            (Ok(_), _) => Ok(vec![pattern.to_string()]),
            (Err(object_store::Error::NotFound { .. }), true) => Err(format!(
                "input {pattern} is a prefix, not an object; name the objects under it, \
                 for example {pattern}/*.parquet"
            )),
            (Err(object_store::Error::NotFound { .. }), false) => {
                Err(format!("input {pattern} not found; check the bucket and the key"))
            }
            (Err(e), _) => Err(format!("cannot read {pattern}: {}", describe(&e))),
        };
    };
    let matcher = glob::Pattern::new(&key)
        .map_err(|e| format!("invalid glob pattern {pattern}: {e}"))?;
    let prefix = key[..glob_at].rfind('/').map(|i| ObjectPath::from(&key[..i]));
    let listed = block_on(async move {
        let mut keys = Vec::new();
        let mut objects = store.list(prefix.as_ref());
        while let Some(object) = objects.next().await {
            keys.push(object?.location);
        }
        Ok::<_, object_store::Error>(keys)
    })?
    .map_err(|e| format!("cannot list {pattern}: {}", describe(&e)))?;
    // As in a shell, `*` and `?` do not match `/`, and `**` crosses prefixes.
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let mut urls: Vec<String> = listed
        .iter()
        .filter(|p| matcher.matches_with(p.as_ref(), options))
        .map(|p| url_of(pattern, p))
        .collect();
    if urls.is_empty() {
        return Err(format!("glob pattern {pattern} matches no object"));
    }
    urls.sort();
    Ok(urls)
}

/// Copies the object `url` to the local file `dest`, piece by piece, and
/// returns its size in bytes.
pub fn download(url: &str, dest: &Path) -> Result<u64> {
    let (store, path) = open(url).map_err(|m| Error::input(url, m))?;
    let dest_owned = dest.to_path_buf();
    let copied = block_on(async move {
        let mut file = std::fs::File::create(&dest_owned)
            .map_err(|e| format!("cannot create {}: {e}", dest_owned.display()))?;
        let mut stream = store
            .get(&path)
            .await
            .map_err(|e| format!("cannot read: {}", describe(&e)))?
            .into_stream();
        let mut bytes = 0u64;
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| format!("reading stopped: {}", describe(&e)))?;
            file.write_all(&piece)
                .map_err(|e| format!("cannot write {}: {e}", dest_owned.display()))?;
            bytes += piece.len() as u64;
        }
        file.flush()
            .map_err(|e| format!("cannot write {}: {e}", dest_owned.display()))?;
        Ok::<u64, String>(bytes)
    });
    copied.and_then(|r| r).map_err(|m| Error::input(url, m))
}

/// Returns whether the object `url` exists.
pub fn exists(url: &str) -> Result<bool> {
    let (store, path) = open(url).map_err(|m| Error::output(Path::new(url), m))?;
    let found = block_on(async move { store.head(&path).await })
        .map_err(|m| Error::output(Path::new(url), m))?;
    match found {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => {
            Err(Error::output(Path::new(url), format!("cannot read: {}", describe(&e))))
        }
    }
}

/// Checks that objects can be written under the prefix `url` by writing
/// and deleting a small object, so that a missing bucket, missing
/// credentials or a read-only store stop a run before it starts.
pub fn check_writable(url: &str) -> Result<()> {
    let fail = |m: String| Error::output(Path::new(url), m);
    let (store, prefix) = open(url).map_err(fail)?;
    let path = prefix.join(".gato-write-check");
    let written = block_on(async move {
        store.put(&path, object_store::PutPayload::from_static(b"gato")).await?;
        store.delete(&path).await
    })
    .map_err(fail)?;
    written.map_err(|e| fail(format!("cannot write there: {}", describe(&e))))
}

/// Uploads every file under `dir` to the prefix `url`, keeping the
/// relative paths, with `last` (relative to `dir`) uploaded after all
/// others.
pub fn upload_dir(dir: &Path, url: &str, last: &str) -> Result<()> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::output(&d, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::output(&d, format!("cannot list: {e}")))?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let relative =
        |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
    files.sort_by_key(|p| (relative(p) == last, relative(p)));
    let base = url.trim_end_matches('/').to_string();
    for file in files {
        let target = format!("{base}/{}", relative(&file));
        upload(&file, &target)?;
        tracing::debug!(from = %file.display(), to = %target, "uploaded");
    }
    Ok(())
}

/// Uploads the local file `file` to the object `url`, in parts.
fn upload(file: &Path, url: &str) -> Result<()> {
    let fail = |m: String| Error::output(Path::new(url), m);
    let (store, path) = open(url).map_err(fail)?;
    let source = file.to_path_buf();
    let done = block_on(async move {
        use std::io::Read;
        let mut input = std::fs::File::open(&source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| format!("cannot start the upload: {}", describe(&e)))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; PART_BYTES];
        loop {
            let n = input
                .read(&mut buffer)
                .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
            if n == 0 {
                break;
            }
            // At most two parts wait in memory.
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| format!("upload failed: {}", describe(&e)))?;
            writer.write(&buffer[..n]);
        }
        writer.finish().await.map_err(|e| format!("upload failed: {}", describe(&e)))?;
        Ok::<(), String>(())
    });
    done.and_then(|r| r).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_as_written() {
        let (scheme, bucket, key) = split("s3://b//in/o#1?x%41/a.parquet").unwrap();
        assert_eq!((scheme, bucket, key.as_str()), ("s3", "b", "in/o#1?x%41/a.parquet"));
        assert_eq!(normalized("gs://b/in//a.parquet"), "gs://b/in/a.parquet");
        assert!(
            split("s3:///a.parquet").unwrap_err().contains("the bucket name is missing")
        );
    }

    #[test]
    fn unreachable_aws_needs_no_endpoint() {
        let text = "Generic S3 error: Error performing GET \
                    https://s3.us-east-1.amazonaws.com/b/k in 1s, after 10 retries: error \
                    sending request";
        assert!(unreachable_aws(text, false));
        assert!(!unreachable_aws(text, true));
        assert!(!unreachable_aws("error sending request to http://127.0.0.1:9", false));
    }
}
