//! The development broker: an in-process Kafka-protocol broker for local use and tests.

use std::net::SocketAddr;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// An in-process Kafka-protocol broker (librdkafka's mock cluster) for local use and tests.
///
/// The mock cluster binds random loopback ports; [`DevBroker::serve_bootstrap`] forwards a
/// fixed port to it so clients can be pointed at a known address (they then talk to the
/// broker address it advertises). It keeps about 5 MB per partition (librdkafka's limit):
/// spread large topics over enough partitions.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    partitions: i32,
}

impl DevBroker {
    /// Starts a one-broker mock cluster; `partitions` is used by [`Self::create_topic`].
    pub fn start(partitions: i32) -> Result<Self, String> {
        let cluster = MockCluster::new(1).map_err(|e| format!("starting the mock cluster: {e}"))?;
        Ok(Self {
            cluster,
            partitions,
        })
    }

    /// The broker's own bootstrap address.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic with the broker's partition count (no-op if it exists).
    pub fn create_topic(&self, topic: &str) -> Result<(), String> {
        self.cluster
            .create_topic(topic, self.partitions, 1)
            .map_err(|e| format!("creating topic {topic}: {e}"))
    }

    /// Forwards connections on `listen` to the mock broker, until the process exits.
    pub async fn serve_bootstrap(&self, listen: SocketAddr) -> std::io::Result<()> {
        let target = self.bootstrap_servers();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (mut inbound, _) = listener.accept().await?;
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }
}
