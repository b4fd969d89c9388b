//! The drain check: whether every assigned partition has been read to its end (`floe run
//! --until-drained`, quickstart, benchmarks).

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::State;
use super::connect::Ctx;

/// The partition's watermarks as of the last fetch response (no network round trip).
fn cached_watermarks(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the topic is a valid C
    // string and the out-pointers point to live locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

/// Whether every assigned partition has been read to its high watermark.
pub(super) fn drained(consumer: &BaseConsumer<Ctx>, st: &State) -> bool {
    if st.assigned.is_empty() || st.pipes.iter().any(|p| p.rewind_at.is_some()) {
        return false;
    }
    // Only the watermarks cached from fetch responses: a partition is judged once its first
    // fetch answered. Asking the broker (ListOffsets) would queue behind the in-flight fetch on
    // the same connection; on a broker slow to answer a large fetch, the request's timeout
    // failed the fetch with it, and the loader re-sent both for ever.
    st.assigned.iter().all(|tp| {
        cached_watermarks(consumer, &tp.0, tp.1).is_some_and(|(low, high)| {
            let next = st.next_offset.get(tp).copied().unwrap_or(low);
            next >= high
        })
    })
}
