//! `updraft profile`, `project`, `device` and `key`, and the Frugal-IoT developer commands.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};

use super::args::*;
use super::output::*;
use crate::client::Client;
use crate::table;

pub(super) async fn named(
    client: &Client,
    out: &Output,
    collection: &str,
    command: NamedCommand,
) -> Result<()> {
    match command {
        NamedCommand::Create { name, description } => {
            let created = client
                .post(
                    &format!("/api/v1/{collection}"),
                    &json!({"name": name, "description": description}),
                )
                .await?;
            out.show(&created, || println!("created {}", text(&created["name"])));
        }
        NamedCommand::List => {
            let list = client.get(&format!("/api/v1/{collection}")).await?;
            out.show(&list, || {
                table::print(
                    &["name", "description"],
                    &rows(&list, &["name", "description"]),
                )
            });
        }
    }
    Ok(())
}

pub(super) async fn profile(client: &Client, out: &Output, command: ProfileCommand) -> Result<()> {
    let show = |profile: &Value| {
        let dfu = if profile["drogue_dfu"] == true {
            " (Drogue DFU)"
        } else {
            ""
        };
        let cert = match profile["signing_cert_name"].as_str() {
            Some(name) => format!(", signing certificate {name}"),
            None => String::new(),
        };
        format!("{}{dfu}{cert}", text(&profile["name"]))
    };
    match command {
        ProfileCommand::Create {
            name,
            description,
            drogue_dfu,
            aws_http_delivery,
            lwm2m_delivery,
            lwm2m_path_only,
            signing_cert,
            signing_cert_name,
        } => {
            let cert = read_text(signing_cert.as_deref())?;
            let body = json!({"name": name, "description": description, "drogue_dfu": drogue_dfu,
                "aws_http_delivery": aws_http_delivery, "lwm2m_delivery": lwm2m_delivery,
                "lwm2m_path_only": lwm2m_path_only,
                "signing_cert": cert, "signing_cert_name": signing_cert_name});
            let created = client.post("/api/v1/profiles", &body).await?;
            out.show(&created, || println!("created {}", show(&created)));
        }
        ProfileCommand::List => {
            let list = client.get("/api/v1/profiles").await?;
            out.show(&list, || {
                table::print(
                    &["name", "description", "drogue_dfu"],
                    &rows(&list, &["name", "description", "drogue_dfu"]),
                )
            });
        }
        ProfileCommand::Set {
            name,
            drogue_dfu,
            aws_http_delivery,
            lwm2m_delivery,
            lwm2m_path_only,
            signing_cert,
            signing_cert_name,
            no_signing_cert,
        } => {
            let path = format!("/api/v1/profiles/{name}");
            let mut body = json!({"drogue_dfu": drogue_dfu, "aws_http_delivery": aws_http_delivery,
                "lwm2m_delivery": lwm2m_delivery, "lwm2m_path_only": lwm2m_path_only,
                "signing_cert_name": signing_cert_name});
            if no_signing_cert {
                body["signing_cert"] = json!("");
            } else if let Some(cert) = read_text(signing_cert.as_deref())? {
                body["signing_cert"] = json!(cert);
            }
            let profile = client
                .json(client.request(Method::PUT, &path).json(&body))
                .await?;
            out.show(&profile, || println!("profile {}", show(&profile)));
        }
    }
    Ok(())
}

pub(super) async fn device(client: &Client, out: &Output, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Create {
            id,
            profile,
            project,
            tags,
            device_token,
            gateway,
            certificate,
            lwm2m_endpoint,
            lwm2m_psk_identity,
            lwm2m_psk_key,
        } => {
            let certificate = read_text(certificate.as_deref())?;
            let body = json!({"id": id, "profile": profile, "project": project, "tags": tags,
                "token": device_token, "gateway": gateway, "certificate": certificate,
                "lwm2m_endpoint": lwm2m_endpoint,
                "lwm2m_psk_identity": lwm2m_psk_identity, "lwm2m_psk_key": lwm2m_psk_key});
            let created = client.post("/api/v1/devices", &body).await?;
            out.show(&created, || {
                println!("created device {}", text(&created["id"]));
                println!("access token (shown once): {}", text(&created["token"]));
                if let Some(key) = created["lwm2m_psk_key"].as_str() {
                    println!("LwM2M PSK key (shown once): {key}");
                }
            });
        }
        DeviceCommand::List {
            offset,
            limit,
            filter,
        } => {
            let mut request = client
                .request(Method::GET, "/api/v1/devices")
                .query(&[("offset", offset), ("limit", limit)]);
            if let Some(filter) = &filter {
                request = request.query(&[("filter", filter)]);
            }
            let list = client.json(request).await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list["items"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|d| {
                                let running = match d["firmware"].as_object() {
                                    Some(fw) => {
                                        format!("{}@{}", text(&fw["title"]), text(&fw["version"]))
                                    }
                                    None => "-".to_owned(),
                                };
                                vec![
                                    text(&d["id"]),
                                    text(&d["profile"]),
                                    text(&d["project"]),
                                    running,
                                    text(&d["tags"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table::print(&["id", "profile", "project", "firmware", "tags"], &rows);
            });
        }
        DeviceCommand::Show { id } => {
            let device = client.get(&format!("/api/v1/devices/{id}")).await?;
            out.show(&device, || {
                let release = |v: &Value| match v.as_object() {
                    Some(r) => format!("{}@{}", text(&r["title"]), text(&r["version"])),
                    None => "-".to_owned(),
                };
                println!("id                {}", text(&device["id"]));
                println!("profile           {}", text(&device["profile"]));
                println!("project           {}", text(&device["project"]));
                println!("running firmware  {}", release(&device["firmware"]));
                let desired = &device["desired_firmware"];
                let level = if desired.is_null() {
                    String::new()
                } else {
                    format!(" ({} level)", text(&desired["level"]))
                };
                println!("desired firmware  {}{level}", release(desired));
                println!("running software  {}", release(&device["software"]));
                println!("desired software  {}", release(&device["desired_software"]));
                let action = &device["active_action"];
                if action.is_null() {
                    println!("active update     -");
                } else {
                    println!(
                        "active update     #{} {}@{} {}",
                        text(&action["id"]),
                        text(&action["title"]),
                        text(&action["version"]),
                        text(&action["state"])
                    );
                }
                // Once an update ends, how it ended: UPDATED, or FAILED with its code.
                let latest = &device["latest_action"];
                if !latest.is_null() && latest["id"] != action["id"] {
                    let failure = match latest["failure"].as_object() {
                        Some(f) => format!(" ({}: {})", text(&f["code"]), text(&f["reason"])),
                        None => String::new(),
                    };
                    println!(
                        "last update       #{} {}@{} {} at {}{failure}",
                        text(&latest["id"]),
                        text(&latest["title"]),
                        text(&latest["version"]),
                        text(&latest["state"]),
                        rfc3339(&latest["updated_at"])
                    );
                }
            });
        }
        DeviceCommand::History { id } => {
            let history = client.get(&format!("/api/v1/devices/{id}/history")).await?;
            out.show(&history, || {
                let mut rows = Vec::new();
                for action in history.as_array().into_iter().flatten() {
                    for event in action["history"].as_array().into_iter().flatten() {
                        let refused = if event["refused"].as_bool() == Some(true) {
                            "refused: "
                        } else {
                            ""
                        };
                        rows.push(vec![
                            text(&action["id"]),
                            format!("{}@{}", text(&action["title"]), text(&action["version"])),
                            rfc3339(&event["at"]),
                            format!(
                                "{refused}{} -> {}",
                                text(&event["from"]),
                                text(&event["to"])
                            ),
                            text(&event["source"]),
                            text(&event["detail"]),
                        ]);
                    }
                }
                table::print(
                    &["action", "artifact", "at", "transition", "source", "detail"],
                    &rows,
                );
            });
        }
        DeviceCommand::Delete { id } => {
            client.delete(&format!("/api/v1/devices/{id}")).await?;
            out.show(&json!({"deleted": id}), || println!("deleted device {id}"));
        }
    }
    Ok(())
}

pub(super) async fn key(client: &Client, out: &Output, command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Create { name, role, tenant } => {
            let path = match tenant {
                Some(tenant) => format!("/api/v1/tenants/{tenant}/api-keys"),
                None => "/api/v1/api-keys".to_owned(),
            };
            let created = client
                .post(&path, &json!({"name": name, "role": role}))
                .await?;
            out.show(&created, || {
                println!(
                    "created {} key {} in tenant {}",
                    text(&created["role"]),
                    text(&created["name"]),
                    text(&created["tenant"])
                );
                println!("key (shown once): {}", text(&created["token"]));
            });
        }
        KeyCommand::List => {
            let list = client.get("/api/v1/api-keys").await?;
            out.show(&list, || {
                table::print(
                    &["id", "name", "role", "server_admin"],
                    &rows(&list, &["id", "name", "role", "server_admin"]),
                )
            });
        }
        KeyCommand::Delete { id } => {
            client.delete(&format!("/api/v1/api-keys/{id}")).await?;
            out.show(&json!({"deleted": id}), || println!("deleted key {id}"));
        }
    }
    Ok(())
}

pub(super) async fn frugal(client: &Client, out: &Output, command: FrugalCommand) -> Result<()> {
    match command {
        FrugalCommand::Push {
            file,
            org,
            project,
            node,
            ota_key,
            version,
        } => {
            let bytes = tokio::fs::read(&file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            let mut query: Vec<(&str, String)> = vec![("org", org)];
            let optional = [
                ("project", project),
                ("node", node),
                ("ota_key", ota_key),
                ("version", version),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let request = client
                .request(Method::POST, "/api/v1/frugal/push")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes);
            let pushed = client.json(request).await?;
            out.show(&pushed, || {
                let assignment = &pushed["assignment"];
                let target = match (
                    assignment["device"].as_str(),
                    assignment["project"].as_str(),
                    assignment["profile"].as_str(),
                ) {
                    (Some(node), _, _) => format!("node {node}"),
                    (None, Some(project), Some(key)) => {
                        format!("OTA key {key} in project {project}")
                    }
                    (None, None, Some(key)) => format!("OTA key {key} in the whole org"),
                    _ => "?".to_owned(),
                };
                println!(
                    "pushed {}@{} (md5 {}) for {target}",
                    text(&pushed["artifact"]["title"]),
                    text(&pushed["artifact"]["version"]),
                    text(&pushed["artifact"]["checksums"]["md5"])
                );
            });
        }
        FrugalCommand::Promote {
            org,
            project,
            node,
            ota_key,
        } => {
            let body = json!({"org": org, "project": project, "node": node, "ota_key": ota_key});
            let promoted = client.post("/api/v1/frugal/promote", &body).await?;
            out.show(&promoted, || {
                println!(
                    "promoted {}@{} from node {node} to OTA key {ota_key} in project {project}",
                    text(&promoted["title"]),
                    text(&promoted["version"])
                )
            });
        }
        FrugalCommand::Key {
            project,
            profile,
            max_nodes,
        } => {
            let body = json!({"project": project, "profile": profile, "max_nodes": max_nodes});
            let key = client.post("/api/v1/frugal/keys", &body).await?;
            out.show(&key, || {
                println!("{}", text(&key["secret"]));
                eprintln!(
                    "OTA key for nodes of project {project} with profile {profile}: set it as the \
                     nodes' SYSTEM_OTA_KEY; it is not shown again"
                );
            });
        }
        FrugalCommand::NodeKey { node } => {
            let key = client
                .post(&format!("/api/v1/devices/{node}/frugal-key"), &json!({}))
                .await?;
            out.show(&key, || {
                println!("{}", text(&key["secret"]));
                eprintln!("OTA key of node {node}: it is not shown again");
            });
        }
    }
    Ok(())
}
