//! Rebalances: newly assigned partitions start at the offsets their tables committed;
//! partitions about to be revoked are committed first, then forgotten.

use std::collections::HashSet;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::State;
use super::connect::Ctx;
use crate::Error;
use crate::batch::Tp;
use crate::write::ToWriter;

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut st = self.state.lock().expect("state lock");
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                st.assign(tpl, &self.env);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match r {
                    // A partition held for a rewind when it was revoked is not held now.
                    Ok(()) => {
                        let _ = consumer.resume(tpl);
                    }
                    Err(e) => {
                        st.fatal
                            .get_or_insert(Error::kafka("assigning partitions", e));
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked; committing what was consumed"
                );
                st.flush_all_and_wait(consumer, &self.env);
                let revoked: HashSet<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                st.forget(&revoked);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    st.fatal
                        .get_or_insert(Error::kafka("unassigning partitions", e));
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

impl State {
    /// Sets where each newly assigned partition of `tpl` starts: the offsets its tables
    /// committed. A failure to read them stops the loader.
    fn assign(&mut self, tpl: &mut TopicPartitionList, env: &super::Env) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match self.start_offsets_retrying(env, &tps) {
            Ok(starts) => {
                for (tp, start) in &starts {
                    let offset = match start {
                        Some(o) => Offset::Offset(*o),
                        None => Offset::Beginning,
                    };
                    let _ = tpl.set_partition_offset(&tp.0, tp.1, offset);
                }
                tracing::info!(
                    partitions = tps.len(),
                    "partitions assigned; starting at the offsets committed in Iceberg"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "reading committed offsets failed");
                self.fatal.get_or_insert(e);
            }
        }
        self.assigned.extend(tps);
    }

    /// Forgets revoked partitions: where they were, and their dedup state.
    fn forget(&mut self, tps: &HashSet<Tp>) {
        self.assigned.retain(|tp| !tps.contains(tp));
        for tp in tps {
            self.next_offset.remove(tp);
            for p in &mut self.pipes {
                p.raw_from.remove(tp);
                p.dlq_from.remove(tp);
                for a in &mut p.agg_from {
                    a.remove(tp);
                }
            }
        }
        for p in &self.pipes {
            let mine: Vec<Tp> = tps
                .iter()
                .filter(|tp| p.cfg.topics.contains(&tp.0))
                .cloned()
                .collect();
            if !mine.is_empty() {
                p.tell_writer(ToWriter::Revoked(mine));
            }
        }
    }
}
