//! The architecture invariants of ARCHITECTURE.md, checked on the source tree: a change that
//! breaks one fails the test command with the file and line that broke it.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Words that name a device protocol.
const PROTOCOL_WORDS: [&str; 8] = [
    "thingsboard",
    "aws",
    "lwm2m",
    "dfu",
    "drogue",
    "ddi",
    "hawkbit",
    "frugal",
];

/// The server's top-level modules, each with what it may not use.
const LAYERS: [(&str, &[&str]); 5] = [
    (
        "kernel",
        &["transport", "protocols", "api", "dashboard", "server"],
    ),
    ("transport", &["protocols", "api", "dashboard", "server"]),
    ("protocols", &["api", "dashboard", "server"]),
    ("api", &["protocols", "dashboard", "server"]),
    // The dashboard goes through the management API's handlers and the kernel only.
    ("dashboard", &["protocols", "transport", "server"]),
];

/// Source files still over the size limit, each waiting to be split along a seam. The list only
/// shrinks: a file not on it may not grow past the limit.
const OVERSIZE: [&str; 0] = [];

const MAX_LINES: usize = 600;

fn repo() -> PathBuf {
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../..")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file, line by line: comments, string literals and `#[cfg(test)]` modules
/// blanked, so that only what the compiler sees as names is checked.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let mut code = String::new();
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_string = false;
                }
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_string = true;
                code.push_str("\"\"");
                continue;
            }
            code.push(c);
        }
        out.push((n + 1, code));
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The adapter a file under `src/protocols/` belongs to (`None` for the composition root).
fn adapter_of(src: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(src.join("protocols")).ok()?;
    let first = rest.components().next()?.as_os_str().to_string_lossy();
    (rest.components().count() > 1).then(|| first.into_owned())
}

#[test]
fn adapters_never_use_each_other_or_the_management_api() {
    let src = repo().join("crates/updraft-server/src");
    let mut broken = Vec::new();
    for path in rust_files(&src.join("protocols")) {
        let Some(own) = adapter_of(&src, &path) else {
            continue;
        };
        for (n, code) in code_lines(&path) {
            for (at, _) in code.match_indices("crate::protocols::") {
                let other: String = code[at + "crate::protocols::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if other != own {
                    broken.push(format!("{}:{n}: uses adapter {other}", relative(&path)));
                }
            }
            if code.contains("super::super") {
                broken.push(format!(
                    "{}:{n}: reaches out of its adapter",
                    relative(&path)
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn layers_only_use_the_layers_beneath_them() {
    let src = repo().join("crates/updraft-server/src");
    let mut broken = Vec::new();
    for (layer, forbidden) in LAYERS {
        for path in rust_files(&src.join(layer)) {
            for (n, code) in code_lines(&path) {
                for module in forbidden {
                    if code.contains(&format!("crate::{module}::"))
                        || code.contains(&format!("crate::{module};"))
                        || code.contains(&format!("crate::{{{module}"))
                    {
                        broken.push(format!("{}:{n}: {layer} uses {module}", relative(&path)));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_kernel_and_the_transports_never_name_a_protocol() {
    let src = repo().join("crates/updraft-server/src");
    let mut broken = Vec::new();
    for layer in ["kernel", "transport"] {
        for path in rust_files(&src.join(layer)) {
            for (n, code) in code_lines(&path) {
                let lower = code.to_ascii_lowercase();
                // Identifiers, and their parts between underscores: `lwm2m_psk` names LwM2M.
                for name in lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if name.split('_').any(|w| PROTOCOL_WORDS.contains(&w)) {
                        broken.push(format!("{}:{n}: names {name}", relative(&path)));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// What reaches devices or tasks on every replica, called directly: only `kernel/cluster.rs`
/// (which announces it to the other replicas too) may.
const REPLICA_NEWS: [&str; 5] = [
    "wake.notify_one(",
    "wake.notify_waiters(",
    "schedule.notify_one(",
    "adapters.withdrawn(",
    "adapters.window_opened(",
];

#[test]
fn what_concerns_every_replica_is_announced() {
    let src = repo().join("crates/updraft-server/src");
    let mut broken = Vec::new();
    for path in rust_files(&src) {
        if path.ends_with("kernel/cluster.rs") {
            continue;
        }
        for (n, code) in code_lines(&path) {
            for call in REPLICA_NEWS {
                if code.replace(' ', "").contains(call) {
                    broken.push(format!(
                        "{}:{n}: calls {call}…) — use state.announce(News::…) so that the other replicas hear it",
                        relative(&path)
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_core_has_no_io_no_async_and_no_clock() {
    let src = repo().join("crates/updraft-core/src");
    let forbidden = [
        "std::fs",
        "std::net",
        "std::io",
        "std::time",
        "SystemTime",
        "Instant",
        "tokio",
        "async ",
        ".await",
        "std::thread",
        "std::process",
        "std::env",
    ];
    let mut broken = Vec::new();
    for path in rust_files(&src) {
        for (n, code) in code_lines(&path) {
            for word in forbidden {
                if code.contains(word) {
                    broken.push(format!("{}:{n}: {word}", relative(&path)));
                }
            }
        }
    }
    let manifest = std::fs::read_to_string(repo().join("crates/updraft-core/Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or_default();
    for async_crate in ["tokio", "futures", "async-trait", "sqlx", "axum", "reqwest"] {
        if dependencies
            .lines()
            .any(|l| l.trim_start().starts_with(async_crate))
        {
            broken.push(format!(
                "crates/updraft-core/Cargo.toml: depends on {async_crate}"
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_source_file_passes_the_size_limit() {
    let mut broken = Vec::new();
    let crates = repo().join("crates");
    for entry in std::fs::read_dir(&crates).unwrap() {
        let krate = entry.unwrap().path();
        for dir in ["src", "examples", "benches"] {
            let dir = krate.join(dir);
            if !dir.is_dir() {
                continue;
            }
            for path in rust_files(&dir) {
                let name = relative(&path);
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                let listed = OVERSIZE.contains(&name.as_str());
                if lines > MAX_LINES && !listed {
                    broken.push(format!("{name}: {lines} lines (at most {MAX_LINES})"));
                }
                if listed && lines <= MAX_LINES {
                    broken.push(format!(
                        "{name}: is within the limit now; take it off OVERSIZE"
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The workspace denies `unsafe_code`; two files may allow it: the DTLS engine's calls into
/// libssl that the openssl crates do not wrap, and the blob store's memory mapping of committed
/// (immutable) blobs for downloads. Anything else that wants it is a design question.
const UNSAFE_ALLOWED: [&str; 2] = [
    "crates/updraft-server/src/transport/dtls.rs",
    "crates/updraft-store/src/mapped.rs",
];

#[test]
fn unsafe_code_lives_in_the_dtls_engine_and_the_blob_mapping_only() {
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        for path in rust_files(&entry.unwrap().path()) {
            let name = relative(&path);
            let allows = code_lines(&path)
                .iter()
                .any(|(_, line)| line.contains("allow(unsafe_code)"));
            if allows && !UNSAFE_ALLOWED.contains(&name.as_str()) {
                broken.push(format!("{name}: allows unsafe_code"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    let workspace = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(workspace.contains("unsafe_code = \"deny\""));
}

/// The checks read code the way the compiler does: names count, comments and strings do not.
#[test]
fn the_checks_see_names_not_comments_or_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.rs");
    std::fs::write(
        &path,
        "// lwm2m in a comment\nlet topic = \"$aws/things\"; // aws\nlet lwm2m_psk = 1;\n#[cfg(test)]\nmod tests { use crate::protocols::aws; }\n",
    )
    .unwrap();
    let lines = code_lines(&path);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(!lines[0].1.contains("lwm2m"));
    assert!(!lines[1].1.contains("aws"), "{:?}", lines[1]);
    assert!(lines[2].1.contains("lwm2m_psk"));
}
