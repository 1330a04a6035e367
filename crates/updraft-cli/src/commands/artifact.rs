//! `updraft artifact`: upload with a progress bar, list, show, download, delete.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::args::*;
use super::output::*;
use crate::client::Client;
use crate::table;

pub(super) async fn artifact(
    client: &Client,
    out: &Output,
    command: ArtifactCommand,
) -> Result<()> {
    match command {
        ArtifactCommand::Upload {
            file,
            title,
            version,
            kind,
            profiles,
            checksum_algorithm,
            checksum,
            description,
            filename,
            signature_file,
            signature_algorithm,
        } => {
            let signature = match &signature_file {
                Some(path) => {
                    let raw = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    // DER starts with a SEQUENCE; anything else is taken as base64 text.
                    Some(if raw.first() == Some(&0x30) {
                        base64::engine::general_purpose::STANDARD.encode(&raw)
                    } else {
                        String::from_utf8_lossy(&raw).trim().to_owned()
                    })
                }
                None => None,
            };
            let handle = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = handle.metadata().await?.len();
            let default_name = file.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            let mut query: Vec<(&str, String)> =
                vec![("title", title), ("version", version), ("type", kind)];
            if !profiles.is_empty() {
                query.push(("profiles", profiles.join(",")));
            }
            let optional = [
                ("checksum_algorithm", checksum_algorithm),
                ("checksum", checksum),
                ("description", description),
                ("filename", filename.or(default_name)),
                ("signature", signature),
                ("signature_algorithm", signature_algorithm),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let bar = progress_bar(len);
            let counted = bar.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(bytes) = chunk {
                        counted.inc(bytes.len() as u64);
                    }
                },
            );
            let request = client
                .request(Method::POST, "/api/v1/artifacts")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            let result = client.json(request).await;
            bar.finish_and_clear();
            let artifact = result?;
            out.show(&artifact, || {
                println!(
                    "uploaded {}@{} (id {}, {} bytes, sha256 {})",
                    text(&artifact["title"]),
                    text(&artifact["version"]),
                    text(&artifact["id"]),
                    text(&artifact["size"]),
                    text(&artifact["checksums"]["sha256"])
                )
            });
            Ok(())
        }
        ArtifactCommand::List => {
            let mut all = Vec::new();
            let mut offset = 0u64;
            loop {
                let page = client
                    .json(
                        client
                            .request(Method::GET, "/api/v1/artifacts")
                            .query(&[("offset", offset), ("limit", 500)]),
                    )
                    .await?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                offset += items.len() as u64;
                let done = items.is_empty() || offset >= page["total"].as_u64().unwrap_or(0);
                all.extend(items);
                if done {
                    break;
                }
            }
            let list = Value::Array(all);
            out.show(&list, || {
                table::print(
                    &["id", "title", "version", "type", "size", "profiles"],
                    &rows(
                        &list,
                        &["id", "title", "version", "type", "size", "profiles"],
                    ),
                )
            });
            Ok(())
        }
        ArtifactCommand::Show { release } => {
            let artifact = client.artifact(&release).await?;
            out.show(&artifact, || {
                for key in [
                    "id",
                    "title",
                    "version",
                    "type",
                    "size",
                    "filename",
                    "profiles",
                    "description",
                    "uploaded_by",
                    "download_url",
                ] {
                    println!("{key:<12} {}", text(&artifact[key]));
                }
                if let Some(sums) = artifact["checksums"].as_object() {
                    for (alg, value) in sums {
                        println!("{alg:<12} {}", text(value));
                    }
                }
            });
            Ok(())
        }
        ArtifactCommand::Download { release, output } => {
            let artifact = client.artifact(&release).await?;
            let id = artifact["id"]
                .as_i64()
                .ok_or_else(|| anyhow!("the server gave no artifact id"))?;
            let expected = text(&artifact["checksums"]["sha256"]);
            let response = client
                .send(client.request(Method::GET, &format!("/api/v1/artifacts/{id}/download")))
                .await?;
            let bar = progress_bar(response.content_length().unwrap_or(0));
            let partial = output.with_extension("part");
            let mut file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut hasher = Sha256::new();
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the download broke off")?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
                bar.inc(chunk.len() as u64);
            }
            file.sync_all().await?;
            bar.finish_and_clear();
            let got = hex::encode(hasher.finalize());
            if got != expected {
                let _ = tokio::fs::remove_file(&partial).await;
                bail!("the download's sha256 is {got}, not {expected}: nothing was written");
            }
            tokio::fs::rename(&partial, &output).await?;
            out.show(&json!({"path": output, "sha256": got}), || {
                println!("wrote {} (sha256 {got})", output.display())
            });
            Ok(())
        }
        ArtifactCommand::Delete { release } => {
            let artifact = client.artifact(&release).await?;
            client
                .delete(&format!("/api/v1/artifacts/{}", text(&artifact["id"])))
                .await?;
            out.show(&json!({"deleted": release}), || {
                println!("deleted {release}")
            });
            Ok(())
        }
    }
}
