//! Serving blob bytes over HTTP: `Content-Length`, `ETag` (the SHA-256), `Last-Modified`,
//! `Accept-Ranges`, byte ranges with `206` (several as `multipart/byteranges`) and `416`, and
//! `If-Range`. Bytes stream from the blob store in constant memory.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt, future, stream};
use tokio_util::io::ReaderStream;

use crate::kernel::error::ApiError;
use crate::kernel::state::AppState;

/// A byte range resolved against a blob's size: `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header (absent, not `bytes=`, or malformed): send everything.
    Whole,
    /// One satisfiable range.
    Single(ByteRange),
    /// Several ranges, served as `multipart/byteranges`.
    Many(Vec<ByteRange>),
    /// No range overlaps the blob.
    Unsatisfiable,
}

/// Range specs read from one header; a header with more is ignored whole.
const MAX_RANGE_SPECS: usize = 1024;

/// Parses a `Range` header value per RFC 9110 §14.1.2. Malformed headers are ignored (whole
/// blob), as the RFC allows. Overlapping and adjacent ranges are coalesced (in ascending order);
/// a header with more than `max_ranges` ranges left after that is ignored too (§14.2: a server may
/// ignore a Range that asks for many small or overlapping ranges), so that one request never
/// streams more than the blob `max_ranges` times.
pub fn parse_range(value: &str, size: u64, max_ranges: usize) -> RangeRequest {
    let Some(specs) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if specs.split(',').nth(MAX_RANGE_SPECS).is_some() {
        return RangeRequest::Whole;
    }
    let mut ranges = Vec::new();
    for spec in specs.split(',') {
        let spec = spec.trim();
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            // Suffix: the last N bytes.
            let Ok(suffix) = last.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            if suffix == 0 || size == 0 {
                continue;
            }
            ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        } else {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end,
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= size {
                continue;
            }
            ByteRange {
                start,
                end: end.min(size - 1),
            }
        };
        ranges.push(range);
    }
    let ranges = coalesce(ranges);
    match ranges.len() {
        0 => RangeRequest::Unsatisfiable,
        1 => RangeRequest::Single(ranges[0]),
        n if n > max_ranges.max(1) => RangeRequest::Whole,
        _ => RangeRequest::Many(ranges),
    }
}

/// Ranges sorted, with those that overlap or touch merged; a single range stays as asked.
fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    if ranges.len() < 2 {
        return ranges;
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// What to send of a blob.
pub struct BlobResponse<'a> {
    pub sha256: &'a str,
    pub size: u64,
    pub filename: &'a str,
    pub content_type: &'static str,
    /// Milliseconds since the Unix epoch.
    pub modified_at: i64,
}

/// How long a presigned object-storage URL handed out by [`serve_or_redirect`] works.
pub const REDIRECT_TTL: Duration = Duration::from_secs(15 * 60);

/// For devices that follow redirects: where the server runs with `--download-redirect` and the
/// blob store can presign (object storage), a `307` to a short-lived URL of the object, so the
/// bytes bypass the server; otherwise [`serve_blob`].
pub async fn serve_or_redirect(
    state: &AppState,
    blob: BlobResponse<'_>,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if state.config.download_redirect {
        match state.blobs.presign(blob.sha256, REDIRECT_TTL).await {
            Ok(Some(url)) => {
                if let Ok(location) = HeaderValue::from_str(&url) {
                    state
                        .metrics
                        .download_redirects
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok((
                        StatusCode::TEMPORARY_REDIRECT,
                        [
                            (header::LOCATION, location),
                            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                        ],
                    )
                        .into_response());
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!("presigning a download (serving it instead): {err}"),
        }
    }
    serve_blob(state, blob, request_headers).await
}

/// Streams the blob (or the requested range of it).
pub async fn serve_blob(
    state: &AppState,
    blob: BlobResponse<'_>,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", blob.sha256);
    // If-Match (a device resuming after a restart): only the same bytes, or nothing.
    if let Some(expected) = request_headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        && expected.trim() != "*"
        && !expected.split(',').any(|tag| tag.trim() == etag)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the artifact is not the one If-Match names",
        ));
    }
    let range_header = request_headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    // If-Range: serve the range only if the validator still matches, else the whole blob.
    let if_range_ok = match request_headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(validator) => validator.trim() == etag,
        None => true,
    };
    let request = match range_header {
        Some(value) if if_range_ok => parse_range(value, blob.size, state.config.limits.max_ranges),
        _ => RangeRequest::Whole,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", blob.filename))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    let modified = UNIX_EPOCH + Duration::from_millis(u64::try_from(blob.modified_at).unwrap_or(0));
    if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    let (status, range) = match request {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Single(range) => (StatusCode::PARTIAL_CONTENT, Some(range)),
        RangeRequest::Many(ranges) => return serve_ranges(state, &blob, headers, &ranges),
        RangeRequest::Unsatisfiable => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", blob.size)) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
        }
    };
    let (offset, len) = match range {
        Some(range) => {
            if let Ok(value) = HeaderValue::from_str(&format!(
                "bytes {}-{}/{}",
                range.start, range.end, blob.size
            )) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            (range.start, range.end - range.start + 1)
        }
        None => (0, blob.size),
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(blob.content_type),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let stream = blob_stream(state, blob.sha256, offset, len).await?;
    Ok((status, headers, Body::from_stream(stream)).into_response())
}

/// `len` bytes of blob `sha256` from `offset`, in memory: a slice of the blob's mapping where
/// the blob store has one (no read on a blocking thread, no copy), else read through the blob
/// store. For block-sized pieces (chunks, CoAP blocks, DFU writes, stream blocks); whole bodies
/// stream with [`serve_blob`].
pub async fn blob_bytes(
    state: &AppState,
    sha256: &str,
    offset: u64,
    len: u64,
) -> std::io::Result<Bytes> {
    if let Some(map) = state.blobs.mapped(sha256).await?
        && offset.saturating_add(len) <= map.len()
    {
        return Ok(map.slice(offset, len));
    }
    let mut reader = state.blobs.open(sha256, offset, Some(len)).await?;
    let mut buffer = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buffer).await?;
    Ok(Bytes::from(buffer))
}

/// Bytes handed to the connection at a time from a mapped blob: slices of the mapping, so the
/// size costs no memory; large enough that a download is a few socket writes per megabyte.
const MAPPED_CHUNK: u64 = 256 * 1024;

/// `len` bytes of the blob from `offset`, counted in the download metric: slices of the blob's
/// memory mapping where the blob store has one (no blocking read, no copy of ours), else read
/// through the blob store in 64 KiB chunks.
async fn blob_stream(
    state: &AppState,
    sha256: &str,
    offset: u64,
    len: u64,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ApiError> {
    let metrics = state.metrics.clone();
    let count = move |chunk: &std::io::Result<Bytes>| {
        if let Ok(bytes) = chunk {
            metrics
                .download_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    };
    let mapped = state
        .blobs
        .mapped(sha256)
        .await
        .map_err(ApiError::internal)?;
    if let Some(map) = mapped.filter(|map| offset.saturating_add(len) <= map.len()) {
        let chunks = (0..len.div_ceil(MAPPED_CHUNK)).map(move |i| {
            let start = offset + i * MAPPED_CHUNK;
            let take = MAPPED_CHUNK.min(offset + len - start);
            Ok(map.slice(start, take))
        });
        return Ok(stream::iter(chunks).inspect(count).boxed());
    }
    let reader = state
        .blobs
        .open(sha256, offset, Some(len))
        .await
        .map_err(ApiError::internal)?;
    Ok(ReaderStream::with_capacity(reader, 64 * 1024)
        .inspect(count)
        .boxed())
}

/// Several ranges as one `multipart/byteranges` body, each part streamed from the blob store.
fn serve_ranges(
    state: &AppState,
    blob: &BlobResponse<'_>,
    mut headers: HeaderMap,
    ranges: &[ByteRange],
) -> Result<Response, ApiError> {
    let boundary = format!("updraft-{}", &blob.sha256[..16.min(blob.sha256.len())]);
    let mut parts = Vec::with_capacity(ranges.len());
    let mut total = 0u64;
    for range in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
            blob.content_type, range.start, range.end, blob.size
        );
        total += head.len() as u64 + (range.end - range.start + 1);
        parts.push((head, *range));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    total += tail.len() as u64;
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
    {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    let state = state.clone();
    let sha256 = blob.sha256.to_owned();
    let body = stream::iter(parts)
        .then(move |(head, range)| {
            let state = state.clone();
            let sha256 = sha256.clone();
            async move {
                let len = range.end - range.start + 1;
                let bytes = blob_stream(&state, &sha256, range.start, len)
                    .await
                    .map_err(|err| std::io::Error::other(err.message))?;
                state
                    .metrics
                    .download_bytes
                    .fetch_add(head.len() as u64, Ordering::Relaxed);
                let head = stream::once(future::ready(Ok(Bytes::from(head))));
                Ok::<_, std::io::Error>(head.chain(bytes))
            }
        })
        .try_flatten()
        .chain(stream::once(future::ready(Ok(Bytes::from(tail)))));
    Ok((
        StatusCode::PARTIAL_CONTENT,
        headers,
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, size: u64, expected: RangeRequest) {
        assert_eq!(
            parse_range(header, size, 4),
            expected,
            "{header:?} of {size}"
        );
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn ranges_parse_per_rfc_9110() {
        use RangeRequest::*;
        check("bytes=0-9", 100, Single(r(0, 9)));
        check("bytes=90-", 100, Single(r(90, 99)));
        check("bytes=-10", 100, Single(r(90, 99)));
        check("bytes=-1000", 100, Single(r(0, 99)));
        check("bytes=50-1000", 100, Single(r(50, 99)));
        check("bytes=0-0,-1", 100, Many(vec![r(0, 0), r(99, 99)]));
        // Coalesced: overlapping and touching ranges merge, in ascending order.
        check(
            "bytes=50-59,0-9,5-20,21-30",
            100,
            Many(vec![r(0, 30), r(50, 59)]),
        );
        check("bytes=0-,0-,0-,0-,0-,0-", 100, Single(r(0, 99)));
        // More distinct ranges than allowed: the whole blob.
        check("bytes=0-0,2-2,4-4,6-6,8-8", 100, Whole);
        let thousand = (0..1000)
            .map(|i| format!("{}-{}", i * 2, i * 2))
            .collect::<Vec<_>>();
        check(&format!("bytes={}", thousand.join(",")), 100_000, Whole);
        let overlapping = vec!["0-"; 1000].join(",");
        check(&format!("bytes={overlapping}"), 100, Single(r(0, 99)));
        check(
            &format!("bytes={},0-", vec!["5-"; 2000].join(",")),
            100,
            Whole,
        );
        check("bytes=100-", 100, Unsatisfiable);
        check("bytes=100-200, 300-", 100, Unsatisfiable);
        check("bytes=-0", 100, Unsatisfiable);
        check("bytes=0-", 0, Unsatisfiable);
        check("bytes=9-0", 100, Whole);
        check("bytes=a-b", 100, Whole);
        check("items=0-1", 100, Whole);
        check("bytes=5", 100, Whole);
        check("", 100, Whole);
    }

    /// Every satisfiable answer stays inside the blob, whatever the header says.
    #[test]
    fn resolved_ranges_never_leave_the_blob() {
        let parts = [
            "",
            "0",
            "1",
            "5",
            "9",
            "10",
            "11",
            "18446744073709551615",
            "x",
            " ",
        ];
        for size in [0u64, 1, 10] {
            for a in parts {
                for b in parts {
                    let header = format!("bytes={a}-{b}");
                    let ranges = match parse_range(&header, size, 4) {
                        RangeRequest::Single(range) => vec![range],
                        RangeRequest::Many(ranges) => ranges,
                        RangeRequest::Whole | RangeRequest::Unsatisfiable => vec![],
                    };
                    for range in ranges {
                        assert!(
                            range.start <= range.end && range.end < size,
                            "{header} of {size}: {range:?}"
                        );
                    }
                }
            }
        }
    }
}
