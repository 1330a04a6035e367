//! The blob stores' conformance suite — staging, commit, ranges, deduplication, garbage
//! collection — run against local disk and S3 (a real SeaweedFS) by one macro, and what only the
//! local store does (memory maps, its staging directory).

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use updraft_core::{Checksums, MultiHasher, Name};
use updraft_store::*;

/// A blob store under test and what only its backend can do for the test.
pub struct Backend {
    pub blobs: Arc<dyn BlobStore>,
    /// Leaves behind what an upload interrupted after its last byte would (a staging object).
    pub leftover: Box<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>,
    _dir: tempfile::TempDir,
}

/// The local store in a fresh directory.
pub async fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let blobs = LocalBlobStore::open(&root).await.unwrap();
    Backend {
        blobs: Arc::new(blobs),
        leftover: Box::new(move || {
            let path = root.join("staging/leftover");
            Box::pin(async move { tokio::fs::write(path, b"half an upload").await.unwrap() })
        }),
        _dir: dir,
    }
}

/// An S3 store under a fresh prefix of the test engine's bucket; `None` when there is none
/// (said loudly; a failure under CI).
pub async fn s3() -> Option<Backend> {
    let bucket = updraft_test_support::s3::fresh_bucket()?;
    let config = S3Config::at_endpoint(
        &bucket.url(),
        &bucket.endpoint,
        &bucket.access_key,
        &bucket.secret_key,
    )
    .unwrap();
    let blobs = S3BlobStore::open(&config).unwrap();
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket.bucket)
        .with_endpoint(&bucket.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(&bucket.access_key)
        .with_secret_access_key(&bucket.secret_key)
        .build()
        .unwrap();
    let raw = Arc::new(raw);
    let prefix = bucket.prefix.clone();
    Some(Backend {
        blobs: Arc::new(blobs),
        leftover: Box::new(move || {
            let raw = Arc::clone(&raw);
            let key = object_store::path::Path::from(format!("{prefix}/staging/leftover"));
            Box::pin(async move {
                object_store::ObjectStoreExt::put(&*raw, &key, b"half an upload".to_vec().into())
                    .await
                    .unwrap();
            })
        }),
        _dir: tempfile::tempdir().unwrap(),
    })
}

/// Runs each named suite test against both backends.
macro_rules! blob_backends {
    ($($name:ident),* $(,)?) => {
        mod local_disk {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::local().await).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(backend) = super::s3().await else { return };
                    super::$name(backend).await;
                }
            )*
        }
    };
}

blob_backends!(
    committed_blobs_read_back_whole_and_in_ranges,
    dropped_writers_leave_nothing_and_bad_hashes_are_refused,
    garbage_collection_removes_old_orphans_and_staging_only,
    large_blobs_stream_in_parts,
    the_store_answers_its_check,
);

pub async fn put(blobs: &dyn BlobStore, data: &[u8]) -> String {
    let mut hasher = MultiHasher::new();
    hasher.update(data);
    let sha256 = hasher.finish().sha256;
    let mut writer = blobs.stage().await.unwrap();
    for chunk in data.chunks(7 * 1024) {
        writer.write(chunk).await.unwrap();
    }
    writer.commit(&sha256).await.unwrap();
    sha256
}

async fn read(blobs: &dyn BlobStore, sha256: &str, offset: u64, len: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    blobs
        .open(sha256, offset, len)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

async fn committed_blobs_read_back_whole_and_in_ranges(backend: Backend) {
    let blobs = &*backend.blobs;
    let data: Vec<u8> = (0..100u8).collect();
    let sha = put(blobs, &data).await;
    assert_eq!(read(blobs, &sha, 0, None).await, data);
    assert_eq!(read(blobs, &sha, 10, Some(5)).await, &data[10..15]);
    assert_eq!(read(blobs, &sha, 90, None).await, &data[90..]);
    assert_eq!(read(blobs, &sha, 95, Some(50)).await, &data[95..]);
    assert_eq!(read(blobs, &sha, 100, Some(5)).await, b"");
    assert_eq!(blobs.size(&sha).await.unwrap(), Some(100));
    assert_eq!(blobs.list().await.unwrap(), std::slice::from_ref(&sha));
    // The same bytes again: one blob.
    assert_eq!(put(blobs, &data).await, sha);
    assert_eq!(blobs.list().await.unwrap().len(), 1);
    // An empty blob is a blob.
    let empty = put(blobs, b"").await;
    assert_eq!(blobs.size(&empty).await.unwrap(), Some(0));
    assert_eq!(read(blobs, &empty, 0, None).await, b"");
    assert!(blobs.delete(&sha).await.unwrap());
    assert!(!blobs.delete(&sha).await.unwrap(), "deleted twice");
    assert_eq!(blobs.size(&sha).await.unwrap(), None);
    let missing = blobs.open(&sha, 0, None).await.err().unwrap();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
}

async fn dropped_writers_leave_nothing_and_bad_hashes_are_refused(backend: Backend) {
    let blobs = &*backend.blobs;
    let mut writer = blobs.stage().await.unwrap();
    writer.write(b"partial").await.unwrap();
    drop(writer);
    assert!(blobs.list().await.unwrap().is_empty());
    for bad in ["../../etc/passwd", "ABC", &"g".repeat(64)] {
        assert!(blobs.size(bad).await.is_err(), "{bad}");
        assert!(blobs.open(bad, 0, None).await.is_err(), "{bad}");
        let writer = blobs.stage().await.unwrap();
        assert!(writer.commit(bad).await.is_err(), "{bad}");
    }
    assert!(blobs.list().await.unwrap().is_empty());
}

async fn large_blobs_stream_in_parts(backend: Backend) {
    // Bigger than two multipart parts, in pieces that do not line up with them.
    let blobs = &*backend.blobs;
    let data: Vec<u8> = (0..(2 * PART_SIZE + 12_345))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut hasher = MultiHasher::new();
    hasher.update(&data);
    let sha = hasher.finish().sha256;
    let mut writer = blobs.stage().await.unwrap();
    for chunk in data.chunks(100_003) {
        writer.write(chunk).await.unwrap();
    }
    writer.commit(&sha).await.unwrap();
    assert_eq!(blobs.size(&sha).await.unwrap(), Some(data.len() as u64));
    let at = PART_SIZE as u64 - 10;
    assert_eq!(
        read(blobs, &sha, at, Some(20)).await,
        &data[at as usize..][..20]
    );
    assert_eq!(read(blobs, &sha, 0, None).await.len(), data.len());
}

async fn the_store_answers_its_check(backend: Backend) {
    backend.blobs.check().await.unwrap();
    assert!(!backend.blobs.describe().is_empty());
}

async fn garbage_collection_removes_old_orphans_and_staging_only(backend: Backend) {
    let blobs = &*backend.blobs;
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(&dir.path().join("t.db"))
        .await
        .unwrap();
    let kept = put(blobs, b"kept").await;
    let orphan = put(blobs, b"orphan").await;
    (backend.leftover)().await;
    let tenant = store
        .create_tenant(&Name::parse("t").unwrap())
        .await
        .unwrap();
    let mut hasher = MultiHasher::new();
    hasher.update(b"kept");
    let checksums: Checksums = hasher.finish();
    assert_eq!(checksums.sha256, kept);
    store
        .insert_artifact(
            tenant.key,
            &NewArtifact {
                title: "fw".into(),
                version: "1".into(),
                kind: updraft_core::ArtifactKind::Firmware,
                profiles: vec![],
                size: 4,
                filename: "fw.bin".into(),
                checksums,
                signature: None,
                description: String::new(),
                uploaded_by: "t".into(),
            },
        )
        .await
        .unwrap();
    // Inside the grace (everything here is seconds old): nothing goes.
    let an_hour_ago = now_millis() - 3_600_000;
    let report = collect_garbage(&store, blobs, an_hour_ago).await.unwrap();
    assert_eq!(report, GcReport::default());
    assert_eq!(blobs.list().await.unwrap().len(), 2);
    // Past it: the orphan and the leftover go, the referenced blob stays.
    let report = collect_garbage(&store, blobs, now_millis() + 60_000)
        .await
        .unwrap();
    assert_eq!(
        report,
        GcReport {
            staging_removed: 1,
            orphans_removed: 1
        }
    );
    assert_eq!(blobs.list().await.unwrap(), [kept]);
    assert_eq!(blobs.size(&orphan).await.unwrap(), None);
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn committing_bytes_that_are_there_already_makes_the_blob_young_again() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = LocalBlobStore::open(dir.path()).await.unwrap();
    let sha = put(&blobs, b"same").await;
    // Age it by a day, as an orphan left long ago would be.
    let path = dir.path().join("sha256").join(&sha[..2]).join(&sha);
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    let before = blobs.list_blobs().await.unwrap()[0].modified_at;
    assert!(before < now_millis() - 3_600_000);
    // An upload of the same bytes refreshes it: a collection with an hour's grace spares it.
    put(&blobs, b"same").await;
    assert!(blobs.list_blobs().await.unwrap()[0].modified_at > now_millis() - 60_000);
}

#[tokio::test]
async fn local_dropped_writers_leave_no_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = LocalBlobStore::open(dir.path()).await.unwrap();
    let mut writer = blobs.stage().await.unwrap();
    writer.write(b"partial").await.unwrap();
    drop(writer);
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn mapped_blobs_slice_the_same_bytes_and_outlive_their_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = LocalBlobStore::open(dir.path()).await.unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let sha = put(&blobs, &data).await;
    let map = blobs.mapped(&sha).await.unwrap().unwrap();
    assert_eq!(map.len(), 10_000);
    assert_eq!(&map.slice(0, 10_000)[..], &data[..]);
    assert_eq!(&map.slice(9_990, 100)[..], &data[9_990..], "clamped");
    assert!(map.slice(20_000, 5).is_empty());
    // Every download of the blob shares one mapping.
    let again = blobs.mapped(&sha).await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&map, &again));
    // A slice keeps its bytes after the blob is deleted and its mapping forgotten.
    let slice = map.slice(100, 50);
    drop((map, again));
    assert!(blobs.delete(&sha).await.unwrap());
    assert_eq!(&slice[..], &data[100..150]);
    assert!(blobs.mapped(&sha).await.is_err(), "a deleted blob maps");
    // An empty blob has nothing to map: callers stream it instead.
    let empty = put(&blobs, b"").await;
    assert!(blobs.mapped(&empty).await.unwrap().is_none());
    assert!(blobs.mapped("not-a-hash").await.is_err());
}
