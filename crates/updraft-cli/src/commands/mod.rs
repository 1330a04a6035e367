//! The subcommands and what each does: `args` is the command line, one module per group of
//! subcommands, `output` how answers are shown.

mod args;
mod artifact;
mod fleet;
mod output;
mod rollout;
mod serve;

pub use self::args::Cli;
use self::artifact::*;
use self::fleet::*;
use self::rollout::*;
use self::serve::*;
use std::path::Path;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::json;

use self::args::*;
use self::output::*;
use crate::client::Client;
use crate::config::{self};
use crate::table;

pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Serve(args) = cli.command {
        return serve(args).await;
    }
    let token = match cli.token {
        Some(token) => token,
        None => {
            let path = Path::new(config::DEFAULT_DATA_DIR).join("admin.token");
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no API key: pass --token or UPDRAFT_TOKEN (or run where {} exists)",
                        path.display()
                    )
                })?
        }
    };
    let client = Client::new(&cli.server, token)?;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Serve(_) => Ok(()),
        Command::Artifact(command) => artifact(&client, &out, command).await,
        Command::Profile(command) => profile(&client, &out, command).await,
        Command::Project(command) => named(&client, &out, "projects", command).await,
        Command::Device(command) => device(&client, &out, command).await,
        Command::Rollout(command) => rollout(&client, &out, command).await,
        Command::Rule(command) => rule(&client, &out, command).await,
        Command::Assign(args) => {
            let mut body = args.scope.to_json();
            body["artifact"] = json!(args.artifact);
            let assignment = client.post("/api/v1/assignments", &body).await?;
            out.show(&assignment, || {
                println!(
                    "assigned {}@{} at {} level",
                    text(&assignment["title"]),
                    text(&assignment["version"]),
                    text(&assignment["level"])
                )
            });
            Ok(())
        }
        Command::Unassign(args) => {
            let scope = args.scope.to_json();
            let mut query: Vec<(&str, String)> = vec![("type", args.kind.clone())];
            for key in ["device", "project", "profile"] {
                if let Some(value) = scope[key].as_str() {
                    query.push((key, value.to_owned()));
                }
            }
            if args.scope.tenant_default {
                query.push(("tenant_default", "true".to_owned()));
            }
            client
                .json(
                    client
                        .request(Method::DELETE, "/api/v1/assignments")
                        .query(&query),
                )
                .await?;
            out.show(&json!({"unassigned": true}), || println!("unassigned"));
            Ok(())
        }
        Command::Status => {
            let status = client.get("/api/v1/status").await?;
            out.show(&status, || {
                println!("tenant     {}", text(&status["tenant"]));
                println!("devices    {}", text(&status["devices"]));
                println!("artifacts  {}", text(&status["artifacts"]));
                if let Some(actions) = status["actions"].as_object() {
                    let rows: Vec<Vec<String>> = actions
                        .iter()
                        .map(|(state, n)| vec![state.clone(), text(n)])
                        .collect();
                    if !rows.is_empty() {
                        println!();
                        table::print(&["latest update", "devices"], &rows);
                    }
                }
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            let tenant = client
                .post("/api/v1/tenants", &json!({"name": name}))
                .await?;
            out.show(&tenant, || {
                println!("created tenant {}", text(&tenant["name"]))
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::List) => {
            let tenants = client.get("/api/v1/tenants").await?;
            out.show(&tenants, || {
                table::print(&["name"], &rows(&tenants, &["name"]))
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Show) => {
            let tenant = client.get("/api/v1/tenant").await?;
            out.show(&tenant, || {
                for key in [
                    "name",
                    "poll_interval_secs",
                    "auto_register",
                    "frugal_auto_register",
                ] {
                    println!("{key:<20} {}", text(&tenant[key]));
                }
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::Set {
            poll_interval,
            auto_register,
            frugal_auto_register,
        }) => {
            let body = json!({
                "poll_interval_secs": poll_interval,
                "auto_register": auto_register,
                "frugal_auto_register": frugal_auto_register,
            });
            let tenant = client
                .json(
                    client
                        .request(Method::PUT, "/api/v1/tenant/settings")
                        .json(&body),
                )
                .await?;
            out.show(&tenant, || {
                println!(
                    "tenant {}: poll every {} s, auto-register {}",
                    text(&tenant["name"]),
                    text(&tenant["poll_interval_secs"]),
                    text(&tenant["auto_register"])
                )
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::GatewayToken { revoke: true }) => {
            client.delete("/api/v1/tenant/gateway-token").await?;
            out.show(&json!({"revoked": true}), || {
                println!("gateway token revoked")
            });
            Ok(())
        }
        Command::Tenant(TenantCommand::GatewayToken { revoke: false }) => {
            let token = client
                .post("/api/v1/tenant/gateway-token", &json!({}))
                .await?;
            out.show(&token, || {
                println!("gateway token (shown once): {}", text(&token["token"]))
            });
            Ok(())
        }
        Command::Key(command) => key(&client, &out, command).await,
        Command::Frugal(command) => frugal(&client, &out, command).await,
        Command::Sim(args) => crate::sim::run(&client, args, out.json).await,
    }
}
