//! `floe dev-broker`: a Kafka-protocol broker for local use, no Kafka install needed.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use floe_devtools::broker::DevBroker;

#[derive(Args)]
pub struct DevBrokerArgs {
    /// Port for clients' bootstrap connections (on 127.0.0.1).
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// Partitions of the topics created at start.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Topics to create at start (repeatable; others are created on first use with 4 partitions).
    #[arg(long, default_values_t = vec!["events".to_string()])]
    topic: Vec<String>,
}

pub async fn run(args: DevBrokerArgs) -> Result<()> {
    let broker = DevBroker::start(args.partitions).map_err(anyhow::Error::msg)?;
    for t in &args.topic {
        broker.create_topic(t).map_err(anyhow::Error::msg)?;
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    println!(
        "dev broker up: bootstrap 127.0.0.1:{} (broker at {}), topics {:?} with {} partitions; ctrl-c to stop",
        args.port,
        broker.bootstrap_servers(),
        args.topic,
        args.partitions
    );
    println!(
        "note: it keeps about 5 MB per partition (librdkafka's mock cluster); use more partitions for big topics"
    );
    tokio::select! {
        r = broker.serve_bootstrap(listen) => r.with_context(|| format!("serving on {listen}"))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
