//! The views' rules, checked.

use super::*;

/// A fill is refused when its device's shard was invalidated after the read began, and only
/// then: another shard's invalidation, or one the read began after, lets it in.
#[test]
fn a_fill_is_refused_only_after_its_own_shard_moved() {
    let views = Views::new(false);
    let device = DeviceKey(7);
    let same_shard = DeviceKey(7 + SHARDS as i64);
    let other_shard = DeviceKey(8);
    let view = PollView::default();

    let ticket = views.ticket();
    views.invalidate_device(same_shard);
    views.put_poll(device, &view, &ticket);
    assert_eq!(
        views.poll(device),
        None,
        "a read older than the invalidation filled"
    );

    let ticket = views.ticket();
    views.invalidate_device(other_shard);
    views.invalidate_actions_of(other_shard);
    views.put_poll(device, &view, &ticket);
    assert_eq!(views.poll(device), Some(view.clone()));

    let ticket = views.ticket();
    views.invalidate_actions_of(device);
    assert_eq!(views.poll(device), None, "the invalidation kept the entry");
    views.put_poll(device, &view, &ticket);
    assert_eq!(
        views.poll(device),
        None,
        "a read older than the invalidation filled"
    );
    let ticket = views.ticket();
    views.put_poll(device, &view, &ticket);
    assert_eq!(views.poll(device), Some(view));
}

/// The module's rule, checked: every method of the SQL store that reaches the write pool
/// holds a `Writing` guard (taken in its first lines, so it lives until the method returns).
#[test]
fn every_writing_method_holds_the_guard() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sql");
    let mut unguarded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        if path
            .file_name()
            .is_some_and(|n| n == "views.rs" || n == "mod.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let starts: Vec<usize> = text.match_indices("async fn ").map(|(i, _)| i).collect();
        for (n, start) in starts.iter().enumerate() {
            let end = starts.get(n + 1).copied().unwrap_or(text.len());
            let body = &text[*start..end];
            let head: String = body.lines().take(12).collect::<Vec<_>>().join("\n");
            if body.contains("self.write") && !head.contains("self.views.writing()") {
                let name = body["async fn ".len()..]
                    .split(['(', '<'])
                    .next()
                    .unwrap_or_default();
                unguarded.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        unguarded.is_empty(),
        "writing methods without `let _w = self.views.writing();` at the top: {unguarded:?}"
    );
}
