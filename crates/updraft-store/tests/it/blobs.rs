//! The local blob store: staging, commit, ranges, deduplication and garbage collection.

use tokio::io::AsyncReadExt;
use updraft_core::{Checksums, MultiHasher, Name};
use updraft_store::*;

async fn put(blobs: &LocalBlobStore, data: &[u8]) -> String {
    let mut hasher = MultiHasher::new();
    hasher.update(data);
    let sha256 = hasher.finish().sha256;
    let mut writer = blobs.stage().await.unwrap();
    for chunk in data.chunks(7) {
        writer.write(chunk).await.unwrap();
    }
    writer.commit(&sha256).await.unwrap();
    sha256
}

async fn read(blobs: &LocalBlobStore, sha256: &str, offset: u64, len: Option<u64>) -> Vec<u8> {
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

#[tokio::test]
async fn committed_blobs_read_back_whole_and_in_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = LocalBlobStore::open(dir.path()).await.unwrap();
    let data: Vec<u8> = (0..100u8).collect();
    let sha = put(&blobs, &data).await;
    assert_eq!(read(&blobs, &sha, 0, None).await, data);
    assert_eq!(read(&blobs, &sha, 10, Some(5)).await, &data[10..15]);
    assert_eq!(read(&blobs, &sha, 95, Some(50)).await, &data[95..]);
    assert_eq!(blobs.size(&sha).await.unwrap(), Some(100));
    assert_eq!(blobs.list().await.unwrap(), std::slice::from_ref(&sha));
    // The same bytes again: one blob.
    assert_eq!(put(&blobs, &data).await, sha);
    assert_eq!(blobs.list().await.unwrap().len(), 1);
    assert!(blobs.delete(&sha).await.unwrap());
    assert_eq!(blobs.size(&sha).await.unwrap(), None);
}

#[tokio::test]
async fn dropped_writers_leave_nothing_and_bad_hashes_are_refused() {
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
    assert!(blobs.list().await.unwrap().is_empty());
    for bad in ["../../etc/passwd", "ABC", &"g".repeat(64)] {
        assert!(blobs.size(bad).await.is_err(), "{bad}");
        assert!(blobs.open(bad, 0, None).await.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn garbage_collection_removes_orphans_and_staging_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(&dir.path().join("t.db"))
        .await
        .unwrap();
    let blobs = LocalBlobStore::open(dir.path().join("blobs"))
        .await
        .unwrap();
    let kept = put(&blobs, b"kept").await;
    let orphan = put(&blobs, b"orphan").await;
    std::fs::write(dir.path().join("blobs/staging/leftover"), b"half an upload").unwrap();
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
    let report = collect_garbage(&store, &blobs).await.unwrap();
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
