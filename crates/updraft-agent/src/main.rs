//! `updraft-agent run`: keeps a device (or a simulation of one, with slot files in a directory)
//! up to date from a hawkBit DDI server such as Updraft, or over Drogue DFU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use updraft_agent::AgentError;
use updraft_agent::agent::{Agent, AgentConfig, Hooks, Outcome};
use updraft_agent::dfu::DfuClient;
use updraft_agent::flash::DirFlash;
use updraft_agent::server::DdiClient;
use updraft_agent::state::{AgentState, Release, Slot};

/// Exit code that asks the supervisor to reboot the device (with `--exit-on-reboot`).
const EXIT_REBOOT: u8 = 10;

#[derive(Parser)]
#[command(
    name = "updraft-agent",
    version,
    about = "Device agent: hawkBit DDI or Drogue DFU client with A/B slots and automatic rollback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Poll the server and apply updates until stopped.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "UPDRAFT_AGENT_SERVER")]
    server: String,
    /// ddi (hawkBit DDI) or drogue (Drogue DFU over HTTP, `embedded-update`'s protocol).
    #[arg(long, default_value = "ddi", value_parser = ["ddi", "drogue"])]
    protocol: String,
    /// Largest block taken in one Drogue DFU Write.
    #[arg(long, default_value_t = 512)]
    mtu: u32,
    #[arg(long, default_value = "DEFAULT")]
    tenant: String,
    /// The controller id (the device id on the server).
    #[arg(long)]
    device: String,
    /// The device's access token.
    #[arg(long, env = "UPDRAFT_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// Directory with slot-a.img, slot-b.img and state.json.
    #[arg(long)]
    slots: PathBuf,
    /// A failed health check after this many boots rolls the device back.
    #[arg(long, default_value_t = 3)]
    max_boots: u32,
    /// Command run after booting a new image; exit status 0 means healthy.
    #[arg(long)]
    health_hook: Option<String>,
    /// Command run with UPDRAFT_IMAGE=<slot file> before the reboot into a new image.
    #[arg(long)]
    install_hook: Option<String>,
    /// What slot A runs on a device without a state file, as TITLE@VERSION.
    #[arg(long)]
    factory_release: Option<String>,
    /// Exit with code 10 when a reboot is due, instead of restarting in-process.
    #[arg(long)]
    exit_on_reboot: bool,
    /// Stop once there is nothing left to do instead of polling forever.
    #[arg(long)]
    once: bool,
}

fn shell(command: &str, image: Option<PathBuf>) -> Result<(), String> {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(command);
    if let Some(image) = image {
        cmd.env("UPDRAFT_IMAGE", image);
    }
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{command:?} exited with {status}")),
        Err(err) => Err(format!("{command:?} could not run: {err}")),
    }
}

fn hooks(args: &RunArgs) -> Hooks {
    let health = args.health_hook.clone();
    let install = args.install_hook.clone();
    Hooks {
        health: Box::new(move |_| health.as_deref().is_none_or(|cmd| shell(cmd, None).is_ok())),
        install: Box::new(move |_, image| match install.as_deref() {
            Some(cmd) => shell(cmd, image),
            None => Ok(()),
        }),
    }
}

/// The agent over the protocol chosen.
enum Device {
    Ddi(Agent<DirFlash, DdiClient>),
    Drogue(Agent<DirFlash, DfuClient>),
}

impl Device {
    async fn cycle(&mut self) -> Result<Outcome, AgentError> {
        match self {
            Device::Ddi(agent) => agent.cycle().await,
            Device::Drogue(agent) => agent.dfu_cycle().await,
        }
    }

    fn state(&self) -> &AgentState {
        match self {
            Device::Ddi(agent) => agent.state(),
            Device::Drogue(agent) => agent.state(),
        }
    }

    fn booted(&self) -> Slot {
        match self {
            Device::Ddi(agent) => agent.booted(),
            Device::Drogue(agent) => agent.booted(),
        }
    }
}

async fn power_on(args: &RunArgs, config: &AgentConfig) -> Result<(Device, Option<Outcome>)> {
    let flash = DirFlash::open(&args.slots)?;
    // Drogue names the default tenant in lower case.
    let tenant = match args.tenant.as_str() {
        "DEFAULT" if args.protocol == "drogue" => "default",
        tenant => tenant,
    };
    Ok(if args.protocol == "drogue" {
        let server = DfuClient::new(&args.server, tenant, &args.device, &args.token, args.mtu)?;
        let (agent, outcome) = Agent::start(flash, server, config.clone(), hooks(args)).await?;
        (Device::Drogue(agent), outcome)
    } else {
        let server = DdiClient::new(&args.server, tenant, &args.device, &args.token)?;
        let (agent, outcome) = Agent::start(flash, server, config.clone(), hooks(args)).await?;
        (Device::Ddi(agent), outcome)
    })
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let factory_release = match &args.factory_release {
        Some(text) => {
            let (title, version) = text
                .rsplit_once('@')
                .context("--factory-release is TITLE@VERSION")?;
            Some(Release {
                title: title.to_owned(),
                version: version.to_owned(),
            })
        }
        None => None,
    };
    let config = AgentConfig {
        max_boots: args.max_boots,
        factory_release,
        ..AgentConfig::default()
    };
    loop {
        let (mut agent, outcome) = power_on(&args, &config).await?;
        println!(
            "booted slot {:?}, running {:?}",
            agent.booted(),
            agent.state().running
        );
        let mut reboot = outcome == Some(Outcome::Reboot);
        while !reboot {
            match agent.cycle().await {
                Ok(Outcome::Reboot) => reboot = true,
                Ok(Outcome::Idle { sleep }) => {
                    if args.once && agent.state().job.is_none() && sleep > Duration::ZERO {
                        return Ok(ExitCode::SUCCESS);
                    }
                    tokio::time::sleep(sleep).await;
                }
                Err(AgentError::Network(why)) => {
                    eprintln!("network trouble, retrying in 5 s: {why}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        if args.exit_on_reboot {
            println!("reboot requested");
            return Ok(ExitCode::from(EXIT_REBOOT));
        }
        println!("rebooting");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Run(args) = Cli::parse().command;
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            let message: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", message.join(": "));
            ExitCode::FAILURE
        }
    }
}
