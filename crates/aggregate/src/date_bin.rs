//! `date_bin` with the results of DataFusion's own, for less CPU on the aggregates' hot path.
//!
//! Every shipped aggregate keys its rows by `date_bin(INTERVAL '1 hour', event_ts)`, once
//! per event and grouping. DataFusion's `date_bin` scales each value to nanoseconds and back
//! and bins it through a function pointer: two 64-bit divisions and an indirect call per row,
//! about a sixth of the queries' CPU in a profile of the loader. A flush's events come in runs
//! of one Kafka partition, in event-time order, so consecutive rows mostly fall into one bin:
//! [`DateBin`] bins a fixed stride (no months) in the array's own unit and reuses the previous
//! row's bin while rows stay in it, in any year the unit holds. Anything else (months,
//! scalars, an origin of another type, a stride or origin that is not a whole number of the
//! array's unit) goes to DataFusion's function, which also supplies the return type, the
//! ordering and the coercion of any other arguments; values it cannot scale to nanoseconds
//! are refused before it sees them. A timestamp keeps its unit (DataFusion's own signature
//! would cast it to nanoseconds first): the bins of a microsecond column are microseconds, as
//! the tables store them.

use std::any::Any;
use std::sync::Arc;

use arrow_array::types::{
    ArrowTimestampType, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, PrimitiveArray};
use arrow_schema::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::common::{ScalarValue, exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::functions::datetime::date_bin::DateBinFunc;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

const NANOS_PER_DAY: i128 = 86_400_000_000_000;

/// DataFusion's `date_bin`, with a fast path for fixed strides over timestamp arrays.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateBin {
    /// DataFusion's `date_bin`: what the fast path does not answer, and coercion.
    builtin: ScalarUDF,
    signature: Signature,
}

impl Default for DateBin {
    fn default() -> Self {
        Self {
            builtin: ScalarUDF::new_from_impl(DateBinFunc::new()),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateBin {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// A stride and a timestamp are taken as they are. DataFusion's signature lists
    /// nanoseconds first and matches a zoned timestamp only by coercion, so it would cast
    /// every event time to nanoseconds (and the bins of a microsecond column come out in
    /// nanoseconds, to be cast back for the table). Other arguments are coerced as DataFusion
    /// does.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if let [
            DataType::Interval(IntervalUnit::MonthDayNano | IntervalUnit::DayTime),
            DataType::Timestamp(..),
        ] = arg_types
        {
            return Ok(arg_types.to_vec());
        }
        let fields = arg_types
            .iter()
            .map(|t| Arc::new(Field::new("arg", t.clone(), true)))
            .collect::<Vec<_>>();
        Ok(fields_with_udf(&fields, &self.builtin)?
            .iter()
            .map(|f| f.data_type().clone())
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(out) = fast(&args.args)? {
            #[cfg(test)]
            tests::FAST_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(ColumnarValue::Array(out));
        }
        // DataFusion's function scales every value to nanoseconds unchecked (a panic in debug
        // builds, a wrong bin in release): what it cannot scale is an error, as it was when
        // its signature cast the values to nanoseconds first.
        if let Some(values) = args.args.get(1) {
            within_nanoseconds(values)?;
        }
        self.builtin.invoke_with_args(args)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.builtin.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }
}

/// Nanoseconds per `unit`.
fn nanos_per(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// The stride in nanoseconds, if it is a fixed positive one (no months).
fn stride_nanos(stride: &ColumnarValue) -> Option<i128> {
    let nanos = match stride {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(v))) if v.months == 0 => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.nanoseconds)
        }
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(v))) => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.milliseconds) * 1_000_000
        }
        _ => return None,
    };
    // DataFusion's own errors (zero, negative or too large a stride) are its to report.
    (nanos > 0 && nanos <= i128::from(i64::MAX)).then_some(nanos)
}

/// The bins of `args` (stride, timestamps[, origin]), or `None` for DataFusion's function.
fn fast(args: &[ColumnarValue]) -> Result<Option<ArrayRef>> {
    let (stride, values, origin) = match args {
        [stride, ColumnarValue::Array(values)] => (stride, values, 0i128),
        [
            stride,
            ColumnarValue::Array(values),
            ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(origin), _)),
        ] => (stride, values, i128::from(*origin)),
        _ => return Ok(None),
    };
    let Some(stride) = stride_nanos(stride) else {
        return Ok(None);
    };
    match values.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            bin::<TimestampSecondType>(values, stride, origin)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            bin::<TimestampMillisecondType>(values, stride, origin)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            bin::<TimestampMicrosecondType>(values, stride, origin)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            bin::<TimestampNanosecondType>(values, stride, origin)
        }
        _ => Ok(None),
    }
}

/// Bins `values` (of `T`) by `stride` from `origin` (both in nanoseconds), as DataFusion does: the start of the bin holding each value, bins counted
/// from the origin in both directions. Computed in `T`'s unit, so years DataFusion cannot
/// reach in nanoseconds (before 1677, after 2262) are binned too. `None` if `stride` or
/// `origin` is not a whole number of `T`'s unit.
fn bin<T: ArrowTimestampType>(
    values: &ArrayRef,
    stride: i128,
    origin: i128,
) -> Result<Option<ArrayRef>> {
    let scale = i128::from(nanos_per(T::UNIT));
    if stride % scale != 0 || origin % scale != 0 {
        return Ok(None);
    }
    let (stride, origin) = (stride / scale, origin / scale);
    let Some(array) = values.as_any().downcast_ref::<PrimitiveArray<T>>() else {
        return Ok(None);
    };
    let nulls = array.nulls();
    // The bin of the previous row: [lo, hi).
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    let mut out = Vec::with_capacity(array.len());
    for (i, &v) in array.values().iter().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            out.push(0);
            continue;
        }
        if !(lo..hi).contains(&v) {
            let start = origin + (i128::from(v) - origin).div_euclid(stride) * stride;
            lo = i64::try_from(start).map_err(|_| {
                exec_datafusion_err!(
                    "date_bin: the bin of timestamp {v} ({:?}) starts before the earliest \
                     timestamp that type holds",
                    T::UNIT
                )
            })?;
            hi = i64::try_from(start + stride).unwrap_or(i64::MAX);
        }
        out.push(lo);
    }
    let binned = PrimitiveArray::<T>::new(out.into(), nulls.cloned())
        .with_data_type(array.data_type().clone());
    Ok(Some(Arc::new(binned)))
}

/// An error if a timestamp in `values` (not in nanoseconds) has no nanosecond value.
fn within_nanoseconds(values: &ColumnarValue) -> Result<()> {
    fn check<T: ArrowTimestampType>(values: &ArrayRef) -> Result<()> {
        let scale = nanos_per(T::UNIT);
        let Some(array) = values.as_any().downcast_ref::<PrimitiveArray<T>>() else {
            return Ok(());
        };
        match array
            .iter()
            .flatten()
            .find(|v| v.checked_mul(scale).is_none())
        {
            None => Ok(()),
            Some(v) => exec_err!(
                "date_bin: timestamp {v} ({:?}) is outside the years 1677-2262 that this stride \
                 and origin are binned in (nanoseconds); floe bins any year for a stride of \
                 days, hours, minutes or seconds with no origin or an origin in whole {:?}s",
                T::UNIT,
                T::UNIT
            ),
        }
    }
    let DataType::Timestamp(unit, _) = values.data_type() else {
        return Ok(());
    };
    let values = values.to_array(1)?;
    match unit {
        TimeUnit::Second => check::<TimestampSecondType>(&values),
        TimeUnit::Millisecond => check::<TimestampMillisecondType>(&values),
        TimeUnit::Microsecond => check::<TimestampMicrosecondType>(&values),
        TimeUnit::Nanosecond => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::IntervalMonthDayNano;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Calls [`DateBin`] answered itself (for tests that check the fast path is reached).
    pub(super) static FAST_CALLS: AtomicUsize = AtomicUsize::new(0);

    /// A deterministic stream of numbers (no dependency on a random crate's versions).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }
    }

    fn call(f: &dyn ScalarUDFImpl, args: Vec<ColumnarValue>, rows: usize) -> Result<ArrayRef> {
        let arg_fields = args
            .iter()
            .map(|a| Arc::new(arrow_schema::Field::new("a", a.data_type(), true)))
            .collect::<Vec<_>>();
        let return_type = f.return_type(&args.iter().map(|a| a.data_type()).collect::<Vec<_>>())?;
        let out = f.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(arrow_schema::Field::new("r", return_type, true)),
            config_options: Arc::default(),
        })?;
        out.into_array(rows)
    }

    /// `values` (instants since the epoch) as timestamps of `unit` in zone `tz`.
    fn timestamps(unit: TimeUnit, tz: Option<&str>, values: Vec<Option<i64>>) -> ArrayRef {
        fn of<T: ArrowTimestampType>(values: Vec<Option<i64>>, tz: Option<&str>) -> ArrayRef {
            Arc::new(
                values
                    .into_iter()
                    .collect::<PrimitiveArray<T>>()
                    .with_timezone_opt(tz),
            )
        }
        match unit {
            TimeUnit::Second => of::<TimestampSecondType>(values, tz),
            TimeUnit::Millisecond => of::<TimestampMillisecondType>(values, tz),
            TimeUnit::Microsecond => of::<TimestampMicrosecondType>(values, tz),
            TimeUnit::Nanosecond => of::<TimestampNanosecondType>(values, tz),
        }
    }

    /// Strides of every kind: fixed (hours, minutes, days, with nanoseconds, below a
    /// millisecond), months, zero, negative, and day-time intervals.
    fn strides() -> [ScalarValue; 11] {
        [
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                0,
                0,
                3_600_000_000_000,
            ))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                0,
                0,
                900_000_000_000,
            ))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 1, 0))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 7, 1_500))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, 1_000_000))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, 7))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(1, 0, 0))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, 0))),
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, -60))),
            ScalarValue::IntervalDayTime(Some(arrow_array::types::IntervalDayTime::new(
                0, 3_600_000,
            ))),
            ScalarValue::IntervalDayTime(Some(arrow_array::types::IntervalDayTime::new(2, 30))),
        ]
    }

    /// Origins (nanoseconds): none, the epoch, and ones off whole seconds and milliseconds.
    const ORIGINS: [Option<i64>; 5] = [
        None,
        Some(0),
        Some(978_307_500_000_000_000),
        Some(-1_234_567_890_123),
        Some(7),
    ];

    /// Some 2,000 values within `span` around the epoch, then the epoch and the span's edges.
    fn sample_values(rng: &mut Lcg, span: i64) -> Vec<Option<i64>> {
        let anywhere =
            |rng: &mut Lcg| ((i128::from(rng.next()) * i128::from(span)) >> 53) as i64 - span / 2;
        // Runs in time order (as a partition's events), jumps, negatives, nulls.
        let mut values = Vec::new();
        let mut t = anywhere(rng);
        for _ in 0..2_000 {
            match rng.next() % 20 {
                0 => values.push(None),
                1 => t = anywhere(rng),
                _ => t = t.saturating_add((rng.next() % 1_000_000) as i64),
            }
            values.push(Some(t));
        }
        values.extend([Some(0), Some(-1), Some(1), Some(span / 2), Some(-span / 2)]);
        values
    }

    /// One array of sample values, as the cases bin it.
    struct Sample<'a> {
        unit: TimeUnit,
        tz: Option<&'a str>,
        /// The values as timestamps.
        array: &'a ArrayRef,
        /// The same values as numbers.
        plain: &'a [Option<i64>],
        /// Whether DataFusion reaches every value (else only the fast path bins them).
        near: bool,
    }

    /// Bins `sample` by `stride` from `origin` through both functions: near, the same values,
    /// nulls, type and errors; beyond, see [`check_beyond`]. Whether the fast path took it.
    fn check_case(
        ours: &DateBin,
        theirs: &DateBinFunc,
        sample: &Sample<'_>,
        stride: &ScalarValue,
        origin: Option<i64>,
    ) -> bool {
        let (unit, tz) = (sample.unit, sample.tz);
        let mut args = vec![
            ColumnarValue::Scalar(stride.clone()),
            ColumnarValue::Array(sample.array.clone()),
        ];
        if let Some(o) = origin {
            args.push(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
                Some(o),
                Some("+00:00".into()),
            )));
        }
        let n = sample.array.len();
        let case = format!("{unit:?} {tz:?} {stride:?} origin {origin:?}");
        let fast_taken = matches!(fast(&args), Ok(Some(_)));
        let a = call(ours, args.clone(), n);
        if sample.near {
            match (a, call(theirs, args, n)) {
                (Ok(a), Ok(b)) => assert_eq!(a.as_ref(), b.as_ref(), "{case}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "{case}")
                }
                (a, b) => panic!("{case}: {a:?} vs {b:?}"),
            }
        } else {
            check_beyond(a, sample.plain, stride, origin, nanos_per(unit), &case);
        }
        fast_taken
    }

    /// Beyond DataFusion's reach: a fixed stride and origin in whole units are binned (checked
    /// against the arithmetic in i128), anything else is an error naming the range.
    fn check_beyond(
        a: Result<ArrayRef>,
        plain: &[Option<i64>],
        stride: &ScalarValue,
        origin: Option<i64>,
        scale: i64,
        case: &str,
    ) {
        let stride_ns = stride_nanos(&ColumnarValue::Scalar(stride.clone()));
        let origin_ns = i128::from(origin.unwrap_or(0));
        let scale = i128::from(scale);
        match stride_ns {
            Some(st) if st % scale == 0 && origin_ns % scale == 0 => {
                let (st, o) = (st / scale, origin_ns / scale);
                let got = a.unwrap_or_else(|e| panic!("{case}: {e}"));
                let got = arrow::compute::cast(&got, &DataType::Int64).unwrap();
                let got = got.as_primitive::<arrow_array::types::Int64Type>();
                for (i, v) in plain.iter().enumerate() {
                    match v {
                        None => assert!(got.is_null(i), "{case}"),
                        Some(v) => {
                            let want = o + (i128::from(*v) - o).div_euclid(st) * st;
                            assert_eq!(i128::from(got.value(i)), want, "{case}: {v}");
                        }
                    }
                }
            }
            _ => {
                let e = a.expect_err(case).to_string();
                assert!(e.contains("outside the years 1677-2262"), "{case}: {e}");
            }
        }
    }

    /// Every case through both functions: the same values, nulls, type and errors.
    #[test]
    fn bins_as_datafusion_does() {
        let mut rng = Lcg(7);
        let strides = strides();
        let units = [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ];
        let ours = DateBin::default();
        let theirs = DateBinFunc::new();
        let mut fast_cases = 0;
        for unit in units {
            let scale = nanos_per(unit);
            // `near`: values DataFusion can scale to nanoseconds (and shift by an origin).
            // `far`: any value of the unit but the first and last strides of its range.
            let near = i64::MAX / scale / if scale == 1 { 2 } else { 1 };
            let far = i64::MAX;
            for (span, is_near) in [(near, true), (far, false)] {
                if !is_near && scale == 1 {
                    continue;
                }
                for tz in [None, Some("+00:00"), Some("Europe/Berlin")] {
                    let values = sample_values(&mut rng, span);
                    let plain = values.clone();
                    let array = timestamps(unit, tz, values);
                    let sample = Sample {
                        unit,
                        tz,
                        array: &array,
                        plain: &plain,
                        near: is_near,
                    };
                    for stride in &strides {
                        for origin in ORIGINS {
                            let fast = check_case(&ours, &theirs, &sample, stride, origin);
                            fast_cases += usize::from(fast);
                        }
                    }
                }
            }
        }
        // The fast path is taken for most cases (not all handed to DataFusion).
        assert!(fast_cases > 100, "fast path taken {fast_cases} times");
    }

    /// The batches of `sql` (debug-printed), or the error planning or running it.
    async fn run(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<String, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(format!("{batches:?}"))
    }

    /// Registered in a session under the built-in's name, SQL reaches it and gets the same.
    #[tokio::test]
    async fn replaces_the_builtin_in_sql() {
        let ctx = datafusion::prelude::SessionContext::new();
        // Arguments DataFusion coerces (strings, an origin, a DayTime stride, times) and
        // errors are as the built-in's.
        let others = [
            "SELECT date_bin(INTERVAL '15 minutes', '2026-12-03T10:59:59Z') AS b",
            "SELECT date_bin(INTERVAL '1 hour', TIMESTAMP '2026-12-03T10:59:59', \
             TIMESTAMP '2001-01-01T00:30:00') AS b",
            "SELECT date_bin(INTERVAL '1 hour', TIMESTAMP '2026-12-03T10:59:59', \
             '2001-01-01T00:20:00') AS b",
            "SELECT date_bin(arrow_cast(INTERVAL '2 hours', 'Interval(DayTime)'), \
             TIMESTAMP '2026-12-03T10:59:59') AS b",
            "SELECT date_bin(INTERVAL '1 hour', arrow_cast(TIME '10:59:59', 'Time64(Microsecond)')) AS b",
            "SELECT date_bin(INTERVAL '1 month', TIMESTAMP '2026-12-03T10:59:59') AS b",
            "SELECT date_bin(INTERVAL '1 hour', 42) AS b",
            "SELECT date_bin(INTERVAL '1 hour') AS b",
        ];
        let mut expected = Vec::new();
        for sql in others {
            expected.push(run(&ctx, sql).await);
        }
        let sql = "SELECT date_bin(INTERVAL '1 hour', column1) AS b FROM (VALUES \
                   (TIMESTAMP '2026-12-03T10:59:59.999999'), (TIMESTAMP '1969-12-31T23:30:00'), \
                   (NULL)) AS t";
        let builtin = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        ctx.register_udf(ScalarUDF::new_from_impl(DateBin::default()));
        for (sql, expected) in others.iter().zip(&expected) {
            match (run(&ctx, sql).await, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(&got, expected, "{sql}"),
                // The same planning error, wrapped as a user-defined coercion's.
                (Err(got), Err(expected)) => {
                    let reason = expected.split(" to the signature").next().unwrap();
                    let reason = reason.trim_start_matches("Error during planning: ");
                    assert!(got.contains(reason), "{sql}: {got}");
                }
                (got, _) => panic!("{sql}: {got:?} against {expected:?}"),
            }
        }
        let state = ctx.state();
        let registered = state.scalar_functions().get("date_bin").unwrap();
        assert!(registered.inner().as_any().is::<DateBin>());
        let plan = ctx.sql(sql).await.unwrap();
        assert!(
            plan.logical_plan()
                .display_indent()
                .to_string()
                .contains("date_bin"),
            "the query calls date_bin"
        );
        let ours = plan.collect().await.unwrap();
        assert_eq!(builtin, ours);
        let b = ours[0].column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(b.value(0), 1_796_292_000_000_000_000);
        assert_eq!(b.value(1), -3_600_000_000_000);
        assert!(b.is_null(2));
    }

    /// The shipped aggregates' call, `date_bin(INTERVAL '1 hour', event_ts)` over the raw
    /// table's `timestamptz` (microseconds, UTC), planned by the aggregates' own session,
    /// reaches the fast path: the planner hands it the stride and the column as they are, and
    /// an event after 2262 (DataFusion's own failed the query) gets its hour.
    #[tokio::test]
    async fn the_shipped_call_takes_the_fast_path() {
        let ctx = crate::engine::context();
        let ts = timestamps(
            TimeUnit::Microsecond,
            Some("+00:00"),
            vec![
                Some(1_763_000_000_000_000),
                None,
                Some(1_763_003_600_000_001),
                // 2900-01-01T10:30:00Z: no nanosecond value, binned all the same.
                Some(29_348_044_200_000_000),
            ],
        );
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "event_ts",
            ts.data_type().clone(),
            true,
        )]));
        let batch = arrow_array::RecordBatch::try_new(schema, vec![ts]).unwrap();
        ctx.register_batch("batch", batch).unwrap();
        let before = FAST_CALLS.load(Ordering::Relaxed);
        let out = ctx
            .sql(
                "SELECT date_bin(INTERVAL '1 hour', event_ts) AS window_start, count(*) AS n \
                 FROM batch GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert!(
            FAST_CALLS.load(Ordering::Relaxed) > before,
            "fast path not taken"
        );
        let w = out[0].column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(w.value(0), 1_762_999_200_000_000);
        assert_eq!(w.value(1), 1_763_002_800_000_000);
        assert_eq!(w.value(2), 29_348_042_400_000_000);
        assert!(w.is_null(3));
    }
}
