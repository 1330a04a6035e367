//! MQTT file streams on `$aws/things/{thing}/streams/{stream}/…`: GetStream and DescribeStream
//! in CBOR or JSON, blocks read from the blob store by range.

use super::*;

// ---------------------------------------------------------------------------------------------
// Streams.

pub(super) async fn stream_request(
    state: &AppState,
    device: &Device,
    topic: &str,
    stream: &str,
    payload: &[u8],
) -> Result<Vec<Outbound>, ApiError> {
    let base = topic.trim_end_matches(stream).to_owned();
    let mut levels = stream.splitn(3, '/');
    let (Some(stream_id), Some(verb), Some(format)) = (levels.next(), levels.next(), levels.next())
    else {
        return Ok(vec![]);
    };
    let Some(format) = Format::parse(format) else {
        return Ok(vec![]);
    };
    let reply_topic = |what: &str| format!("{base}{stream_id}/{what}/{}", format.as_str());
    let token = streams::client_token(format, payload);
    let refuse = |error: StreamError| {
        vec![Outbound::Publish {
            topic: reply_topic("rejected"),
            payload: Bytes::from(streams::encode_error(format, token.as_deref(), &error)),
        }]
    };
    let fail = |code: &'static str, message: String| refuse(StreamError { code, message });

    let artifact = match stream_id
        .strip_prefix(STREAM_PREFIX)
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(key) => {
            state
                .store
                .artifact(device.tenant, updraft_core::ArtifactKey(key))
                .await?
        }
        None => None,
    };
    let Some(artifact) = artifact else {
        return Ok(fail("ResourceNotFound", format!("no stream {stream_id:?}")));
    };
    // A device reads the stream of its own open update, nothing else.
    let active = state
        .store
        .device_status(device.tenant, &device.id)
        .await?
        .and_then(|s| s.active)
        .filter(|a| a.artifact == Some(artifact.key) && !a.state.is_final());
    let Some(action) = active else {
        return Ok(fail(
            "Unauthorized",
            format!("stream {stream_id:?} is not this thing's update"),
        ));
    };

    match verb {
        "describe" => {
            if let Err(error) = streams::decode_describe(format, payload) {
                return Ok(refuse(error));
            }
            let description = format!("{} {}", artifact.title, artifact.version);
            let body = streams::encode_description(
                format,
                token.as_deref(),
                &description,
                0,
                artifact.size,
            );
            Ok(vec![Outbound::Publish {
                topic: reply_topic("description"),
                payload: Bytes::from(body),
            }])
        }
        "get" => {
            let request = match streams::decode_get(format, payload) {
                Ok(request) => request,
                Err(error) => return Ok(refuse(error)),
            };
            if request.stream_version.is_some_and(|s| s != 1) {
                return Ok(fail("VersionMismatch", "the stream is at version 1".into()));
            }
            if request.file_id != 0 {
                return Ok(fail(
                    "ResourceNotFound",
                    format!("no file {} in the stream", request.file_id),
                ));
            }
            let blocks = match streams::blocks(&request, artifact.size) {
                Ok(blocks) => blocks,
                Err(error) => return Ok(refuse(error)),
            };
            if matches!(action.state, UpdateState::Queued | UpdateState::Initiated) {
                let report = Report::Reached {
                    state: UpdateState::Downloading,
                    progress: None,
                };
                state
                    .store
                    .report(device.tenant, action.key, &report, SOURCE)
                    .await?;
            }
            let mut out = Vec::with_capacity(blocks.len());
            let sha256 = &artifact.checksums.sha256;
            for index in blocks {
                let offset = index * request.block_size;
                let len = request.block_size.min(artifact.size - offset);
                let block = crate::kernel::download::blob_bytes(state, sha256, offset, len)
                    .await
                    .map_err(ApiError::internal)?;
                let body = streams::encode_block(
                    format,
                    request.client_token.as_deref(),
                    0,
                    index,
                    &block,
                );
                out.push(Outbound::Publish {
                    topic: reply_topic("data"),
                    payload: Bytes::from(body),
                });
            }
            Ok(out)
        }
        _ => Ok(vec![]),
    }
}
