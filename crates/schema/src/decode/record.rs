//! Decoding one message into the column builders: the payload checks, the envelope
//! (`unnest`) and projections (`columns.<name>` pointers), objects matched to columns by key,
//! metadata columns, and each JSON value appended to its column (the hot path, [`decode_value`]).
//! A failure returns the [`DecodeError`] and leaves the rollback to the caller.

use base64::Engine;

use super::column::{Column, Kind, MetaKind, Store, StructCols};
use super::json::{self, Cursor, Peek, SyntaxError};
use super::{Ctx, DecodeError, DecodeErrorKind, RecordMeta, value};
use crate::mapping::Pointer;

/// Decodes `payload` into a new row of `root` (the envelope unwrapped, projections filled from
/// their pointers); `ctx.found` tells which projections had a value.
pub(super) fn decode_record(
    root: &mut StructCols,
    ctx: &mut Ctx,
    payload: &[u8],
    meta: &RecordMeta<'_>,
    unnest: Option<&Pointer>,
    projections: &[(usize, Pointer)],
) -> Result<(), DecodeError> {
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidUtf8,
                format!("payload is not valid UTF-8 (at byte {})", e.valid_up_to()),
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cur = Cursor::new(text);
    if cur.at_end() {
        return Err(DecodeError::new(
            DecodeErrorKind::EmptyPayload,
            "payload is empty",
        ));
    }
    let start = cur.pos();
    if let Some(envelope) = unnest {
        // The whole message must be JSON; its object at the pointer is the row.
        skip_whole(&mut cur)?;
        cur.set_pos(start);
        if !seek(&mut cur, ctx, envelope.segments())? {
            return Err(DecodeError::new(
                DecodeErrorKind::Envelope,
                format!(
                    "the envelope has no {} (unnest = {:?})",
                    envelope.as_str(),
                    envelope.as_str()
                ),
            ));
        }
        let at = cur.pos();
        if cur.peek()? != Peek::Object {
            return Err(DecodeError::new(
                DecodeErrorKind::Envelope,
                format!(
                    "expected a JSON object at {} (unnest), found {}",
                    envelope.as_str(),
                    describe_value(&mut cur, at)
                ),
            ));
        }
        decode_object(root, &mut cur, ctx, envelope.segments().len(), Some(meta))?;
    } else {
        match cur.peek()? {
            Peek::Object => {}
            _ => {
                // Text that is not JSON at all (`not json`) is malformed, not a non-object.
                skip_whole(&mut cur)?;
                return Err(DecodeError::new(
                    DecodeErrorKind::NotAnObject,
                    format!(
                        "expected a JSON object, found {}",
                        describe_value(&mut cur, start)
                    ),
                ));
            }
        }
        decode_object(root, &mut cur, ctx, 0, Some(meta))?;
        if !cur.at_end() {
            return Err(SyntaxError {
                at: cur.pos(),
                what: "trailing characters after the JSON object",
            }
            .into());
        }
    }
    ctx.found.clear();
    for (i, pointer) in projections {
        cur.set_pos(start);
        let found = seek(&mut cur, ctx, pointer.segments())?;
        let col = &mut root.fields[*i];
        let result = if found {
            decode_value(col, &mut cur, ctx, pointer.segments().len())
        } else if col.nullable {
            col.push_null();
            Ok(())
        } else {
            Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!(
                    "required field is missing (expected {})",
                    col.kind.describe()
                ),
            ))
        };
        if let Err(mut e) = result {
            e.message = format!("{} (at {})", e.message, pointer.as_str());
            return Err(e.in_field(&col.name));
        }
        ctx.found.push(found);
    }
    Ok(())
}

/// Skips the one JSON value the payload must be; anything after it is malformed.
fn skip_whole(cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
    cur.skip_value(0)?;
    if !cur.at_end() {
        return Err(SyntaxError {
            at: cur.pos(),
            what: "trailing characters after the JSON value",
        }
        .into());
    }
    Ok(())
}

/// Moves `cur` from the value it is on to the value at `segments` below it (object members by
/// key, array elements by index); `false` when there is none. The value is not consumed.
fn seek(cur: &mut Cursor<'_>, ctx: &mut Ctx, segments: &[String]) -> Result<bool, DecodeError> {
    for (depth, segment) in segments.iter().enumerate() {
        match cur.peek()? {
            Peek::Object => {
                if cur.begin_object()? {
                    return Ok(false);
                }
                loop {
                    let key = cur.key(&mut ctx.scratch)?;
                    if *key == **segment {
                        break;
                    }
                    drop(key);
                    cur.skip_value(depth + 1)?;
                    if !cur.next_member(b'}')? {
                        return Ok(false);
                    }
                }
            }
            Peek::Array => {
                let Some(index) = Pointer::index(segment) else {
                    return Ok(false);
                };
                if cur.begin_array()? {
                    return Ok(false);
                }
                for _ in 0..index {
                    cur.skip_value(depth + 1)?;
                    if !cur.next_member(b']')? {
                        return Ok(false);
                    }
                }
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Describes the value starting at `start` for an error message: `string "abc"`, `number 1.5`.
fn describe_value(cur: &mut Cursor<'_>, start: usize) -> String {
    cur.set_pos(start);
    let kind = match cur.peek() {
        Ok(Peek::Object) => return "object".into(),
        Ok(Peek::Array) => return "array".into(),
        Ok(Peek::Null) => return "null".into(),
        Ok(Peek::String) => "string",
        Ok(Peek::Number) => "number",
        Ok(Peek::True | Peek::False) => "boolean",
        Err(_) => return "invalid JSON".into(),
    };
    let from = cur.pos();
    let end = match cur.skip_value(0) {
        Ok(()) => cur.pos(),
        Err(_) => cur.buf().len(),
    };
    let text = &cur.buf()[from..end];
    const MAX: usize = 64;
    let mut cut = text.len().min(MAX);
    while cut < text.len() && (text[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    let shown = String::from_utf8_lossy(&text[..cut]);
    if cut < text.len() {
        format!("{kind} {shown}…")
    } else {
        format!("{kind} {shown}")
    }
}

/// Decodes the JSON object at `cur` into `cols` (`depth`: its nesting): each key into its column,
/// then every column it did not set: from `meta` for a metadata column of the record, else NULL,
/// or an error when required.
fn decode_object(
    cols: &mut StructCols,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
    meta: Option<&RecordMeta<'_>>,
) -> Result<(), DecodeError> {
    if depth > json::MAX_DEPTH {
        return Err(DecodeError::new(
            DecodeErrorKind::TooDeep,
            "nesting too deep",
        ));
    }
    ctx.stamp += 1;
    let stamp = ctx.stamp;
    if !cur.begin_object()? {
        let mut pos = 0;
        loop {
            let key = cur.key(&mut ctx.scratch)?;
            match cols.resolver.resolve(&key, pos) {
                None if !cols.consumed.is_empty() && cols.consumed.contains(&*key) => {
                    drop(key);
                    cur.skip_value(depth + 1)?;
                }
                None => {
                    if ctx.reject_unknown {
                        return Err(DecodeError::new(
                            DecodeErrorKind::UnknownField,
                            "no column matches this key (the table rejects unknown fields)",
                        )
                        .in_field(&key));
                    }
                    drop(key);
                    ctx.unknown_fields += 1;
                    cur.skip_value(depth + 1)?;
                }
                Some(i) => {
                    let col = &mut cols.fields[i];
                    if cols.stamps[i] == stamp {
                        let msg = if *key == col.name {
                            format!("duplicate key \"{key}\"")
                        } else {
                            format!(
                                "duplicate key: \"{key}\" sets column {} a second time",
                                col.name
                            )
                        };
                        return Err(DecodeError::new(DecodeErrorKind::DuplicateKey, msg)
                            .in_field(&col.name));
                    }
                    drop(key);
                    cols.stamps[i] = stamp;
                    if let Err(e) = decode_value(col, cur, ctx, depth + 1) {
                        return Err(e.in_field(&col.name));
                    }
                }
            }
            pos += 1;
            if !cur.next_member(b'}')? {
                break;
            }
        }
    }
    for (col, &set) in cols.fields.iter_mut().zip(&cols.stamps) {
        // Projected columns are filled from their pointers once the row is decoded.
        if set == stamp || col.projected {
            continue;
        }
        if let (Some(kind), Some(meta)) = (col.meta, meta) {
            push_meta(col, kind, meta)?;
        } else if col.nullable {
            col.push_null();
        } else {
            return Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!(
                    "required field is missing (expected {})",
                    col.kind.describe()
                ),
            )
            .in_field(&col.name));
        }
    }
    Ok(())
}

/// Appends metadata column `col`'s value (`kind`) from `meta`.
fn push_meta(col: &mut Column, kind: MetaKind, meta: &RecordMeta<'_>) -> Result<(), DecodeError> {
    let missing = || {
        DecodeError::new(
            DecodeErrorKind::MissingField,
            "required metadata column has no value for this source",
        )
    };
    match kind {
        MetaKind::Topic => push_bytes(col, meta.topic.as_bytes()),
        MetaKind::Partition => match meta.partition {
            Some(p) if col.kind == Kind::Int => push_i32(col, p),
            Some(p) => push_i64(col, p as i64),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Offset => match meta.offset {
            Some(o) => push_i64(col, o),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Timestamp => match meta.timestamp_ms {
            Some(ms) => {
                let v = match col.kind {
                    Kind::Timestamp { nanos: true, .. } => ms.saturating_mul(1_000_000),
                    Kind::Timestamp { .. } => ms.saturating_mul(1000),
                    _ => ms,
                };
                push_i64(col, v)
            }
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::Key => match meta.key {
            Some(k) if col.kind == Kind::String => match std::str::from_utf8(k) {
                Ok(_) => push_bytes(col, k),
                Err(_) => push_bytes(col, String::from_utf8_lossy(k).as_bytes()),
            },
            Some(k) => push_bytes(col, k),
            None if col.nullable => col.push_null(),
            None => return Err(missing().in_field(&col.name)),
        },
        MetaKind::IngestedAt => {
            let v = match col.kind {
                Kind::Timestamp { nanos: true, .. } => meta.ingested_at_us.saturating_mul(1000),
                _ => meta.ingested_at_us,
            };
            push_i64(col, v)
        }
    }
    Ok(())
}

#[inline]
fn push_i32(col: &mut Column, v: i32) {
    if let Store::I32(vals) = &mut col.store {
        vals.push(v);
        col.validity.append(true);
    }
}

#[inline]
fn push_i64(col: &mut Column, v: i64) {
    if let Store::I64(vals) = &mut col.store {
        vals.push(v);
        col.validity.append(true);
    }
}

#[inline]
fn push_bytes(col: &mut Column, v: &[u8]) {
    if let Store::Bytes { offsets, data } = &mut col.store {
        data.extend_from_slice(v);
        offsets.push(data.len() as i64);
        col.validity.append(true);
    }
}

/// The error for the value at `start`, of a JSON type `col` does not take.
fn wrong_type(col: &Column, cur: &mut Cursor<'_>, start: usize) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::WrongType,
        format!(
            "expected {}, found {}",
            col.kind.describe(),
            describe_value(cur, start)
        ),
    )
}

/// The error for the value at `start`, of a JSON type `col` takes but a value it cannot hold.
fn bad_value(
    kind: DecodeErrorKind,
    col: &Column,
    cur: &mut Cursor<'_>,
    start: usize,
    why: &str,
) -> DecodeError {
    DecodeError::new(
        kind,
        format!(
            "expected {}, found {} ({why})",
            col.kind.describe(),
            describe_value(cur, start)
        ),
    )
}

/// Decodes the JSON value at `cur` into `col`, `depth` levels deep, or says why it does not
/// fit the column. The hot path: one match on (column kind, JSON token), each arm's work in an
/// always-inlined helper so the code generated is that of one function.
fn decode_value(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
) -> Result<(), DecodeError> {
    let peek = cur.peek()?;
    let start = cur.pos();
    if peek == Peek::Null {
        cur.literal(b"null")?;
        if !col.nullable {
            return Err(DecodeError::new(
                DecodeErrorKind::MissingField,
                format!("required field is null (expected {})", col.kind.describe()),
            ));
        }
        col.push_null();
        return Ok(());
    }
    use DecodeErrorKind::InvalidValue;
    match (col.kind, peek) {
        (Kind::Bool, Peek::True | Peek::False) => {
            let v = peek == Peek::True;
            cur.literal(if v { b"true" } else { b"false" })?;
            if let Store::Bool(b) = &mut col.store {
                b.append(v);
                col.validity.append(true);
            }
        }
        (Kind::Int | Kind::Long, Peek::Number) => decode_integer(col, cur, start)?,
        (Kind::Float | Kind::Double, Peek::Number) => decode_float(col, cur, start)?,
        (Kind::Decimal { precision, scale }, Peek::Number | Peek::String) => {
            decode_decimal(col, cur, ctx, start, peek, precision, scale)?;
        }
        (Kind::Date, Peek::Number) => decode_day_number(col, cur, start)?,
        (Kind::Time, Peek::Number) => decode_microsecond_of_day(col, cur, start)?,
        (Kind::Timestamp { nanos, .. }, Peek::Number) => {
            decode_epoch_millis(col, cur, start, nanos)?;
        }
        (
            Kind::String
            | Kind::Uuid
            | Kind::Binary
            | Kind::Fixed(_)
            | Kind::Date
            | Kind::Time
            | Kind::Timestamp { .. },
            Peek::String,
        ) => {
            let s = cur.string(&mut ctx.scratch)?;
            if let Err(why) = push_from_str(col, &s, false) {
                drop(s);
                return Err(bad_value(InvalidValue, col, cur, start, why));
            }
        }
        (Kind::Struct, Peek::Object) => {
            let Store::Struct(fields) = &mut col.store else {
                unreachable!("struct kind has a struct store")
            };
            decode_object(fields, cur, ctx, depth, None)?;
            col.validity.append(true);
        }
        (Kind::List, Peek::Array) => decode_list(col, cur, ctx, depth)?,
        (Kind::Map, Peek::Object) => decode_map(col, cur, ctx, depth)?,
        _ => return Err(wrong_type(col, cur, start)),
    }
    Ok(())
}

/// An int or long column's JSON number (a float only when it is whole), starting at `start`.
#[inline(always)]
fn decode_integer(col: &mut Column, cur: &mut Cursor<'_>, start: usize) -> Result<(), DecodeError> {
    use DecodeErrorKind::OutOfRange;
    let n = cur.number()?;
    let v = match n.int {
        Some(i) => i,
        None => {
            let f = n.as_f64();
            if n.is_float && f.fract() != 0.0 {
                return Err(wrong_type(col, cur, start));
            }
            if !(-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f) {
                return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
            }
            f as i64
        }
    };
    if col.kind == Kind::Int {
        let Ok(v) = i32::try_from(v) else {
            return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
        };
        push_i32(col, v);
    } else {
        push_i64(col, v);
    }
    Ok(())
}

/// A float or double column's JSON number (finite, and within f32 for a float).
#[inline(always)]
fn decode_float(col: &mut Column, cur: &mut Cursor<'_>, start: usize) -> Result<(), DecodeError> {
    use DecodeErrorKind::OutOfRange;
    let v = cur.number()?.as_f64();
    if !v.is_finite() || (col.kind == Kind::Float && v.abs() > f32::MAX as f64) {
        return Err(bad_value(OutOfRange, col, cur, start, "out of range"));
    }
    match &mut col.store {
        Store::F32(vals) => vals.push(v as f32),
        Store::F64(vals) => vals.push(v),
        _ => unreachable!("float kinds use float stores"),
    }
    col.validity.append(true);
    Ok(())
}

/// A decimal column's JSON number or string (`peek`), of at most `precision` digits and
/// `scale` decimals.
#[inline(always)]
fn decode_decimal(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    start: usize,
    peek: Peek,
    precision: u8,
    scale: i8,
) -> Result<(), DecodeError> {
    use DecodeErrorKind::{InvalidValue, OutOfRange};
    let parsed = if peek == Peek::Number {
        let n = cur.number()?;
        value::parse_decimal(n.text, precision, scale)
    } else {
        let s = cur.string(&mut ctx.scratch)?;
        value::parse_decimal(&s, precision, scale)
    };
    match parsed {
        Ok(v) => {
            if let Store::I128(vals) = &mut col.store {
                vals.push(v);
                col.validity.append(true);
            }
        }
        Err(why @ "not a decimal number") => {
            return Err(bad_value(InvalidValue, col, cur, start, why));
        }
        Err(why) => return Err(bad_value(OutOfRange, col, cur, start, why)),
    }
    Ok(())
}

/// A date column's JSON number: days since the epoch.
#[inline(always)]
fn decode_day_number(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    start: usize,
) -> Result<(), DecodeError> {
    use DecodeErrorKind::OutOfRange;
    let n = cur.number()?;
    match n.int.and_then(|d| i32::try_from(d).ok()) {
        Some(d) => push_i32(col, d),
        None => return Err(bad_value(OutOfRange, col, cur, start, "not a day number")),
    }
    Ok(())
}

/// A time column's JSON number: microseconds of the day.
#[inline(always)]
fn decode_microsecond_of_day(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    start: usize,
) -> Result<(), DecodeError> {
    use DecodeErrorKind::OutOfRange;
    let n = cur.number()?;
    match n.int.filter(|v| (0..86_400_000_000).contains(v)) {
        Some(us) => push_i64(col, us),
        None => {
            return Err(bad_value(
                OutOfRange,
                col,
                cur,
                start,
                "microseconds of day out of range",
            ));
        }
    }
    Ok(())
}

/// A timestamp column's JSON number: epoch millis, stored as micros (or nanos when `nanos`).
#[inline(always)]
fn decode_epoch_millis(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    start: usize,
    nanos: bool,
) -> Result<(), DecodeError> {
    use DecodeErrorKind::OutOfRange;
    let n = cur.number()?;
    let v = match n.int {
        Some(ms) => ms.checked_mul(if nanos { 1_000_000 } else { 1000 }),
        None => value::millis_to_unit(n.as_f64(), nanos),
    };
    match v {
        Some(v) => push_i64(col, v),
        None => return Err(bad_value(OutOfRange, col, cur, start, "out of range")),
    }
    Ok(())
}

/// A list column's JSON array, element by element (`depth`: the array's nesting).
#[inline(always)]
fn decode_list(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > json::MAX_DEPTH {
        return Err(DecodeError::new(
            DecodeErrorKind::TooDeep,
            "nesting too deep",
        ));
    }
    let Store::List { offsets, child } = &mut col.store else {
        unreachable!("list kind has a list store")
    };
    if !cur.begin_array()? {
        let mut i = 0;
        loop {
            decode_value(child, cur, ctx, depth + 1).map_err(|e| e.at_index(i))?;
            i += 1;
            if !cur.next_member(b']')? {
                break;
            }
        }
    }
    offsets.push(child.len() as i32);
    col.validity.append(true);
    Ok(())
}

/// A map column's JSON object: keys parsed as the key type, values decoded (`depth`: the
/// object's nesting).
#[inline(always)]
fn decode_map(
    col: &mut Column,
    cur: &mut Cursor<'_>,
    ctx: &mut Ctx,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > json::MAX_DEPTH {
        return Err(DecodeError::new(
            DecodeErrorKind::TooDeep,
            "nesting too deep",
        ));
    }
    let Store::Map {
        offsets,
        key,
        value,
    } = &mut col.store
    else {
        unreachable!("map kind has a map store")
    };
    if !cur.begin_object()? {
        loop {
            let k = cur.key(&mut ctx.scratch)?;
            if let Err(why) = push_from_str(key, &k, true) {
                let msg = format!(
                    "map key \"{k}\" is not a valid {} ({why})",
                    key.kind.describe()
                );
                return Err(DecodeError::new(DecodeErrorKind::InvalidValue, msg));
            }
            drop(k);
            decode_value(value, cur, ctx, depth + 1).map_err(|e| e.in_field("value"))?;
            if !cur.next_member(b'}')? {
                break;
            }
        }
    }
    offsets.push(key.len() as i32);
    col.validity.append(true);
    Ok(())
}

/// Appends a value given as text. `lenient` (map keys) also parses numbers and booleans from
/// text; JSON string values for numeric columns are a type error instead.
fn push_from_str(col: &mut Column, s: &str, lenient: bool) -> Result<(), &'static str> {
    match col.kind {
        Kind::String => push_bytes(col, s.as_bytes()),
        Kind::Uuid => {
            let u = uuid::Uuid::try_parse(s).map_err(|_| "not a UUID")?;
            push_fixed(col, u.as_bytes());
        }
        Kind::Binary => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "not base64")?;
            push_bytes(col, &b);
        }
        Kind::Fixed(n) => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "not base64")?;
            if b.len() != n {
                return Err("wrong length after base64 decoding");
            }
            push_fixed(col, &b);
        }
        Kind::Date => push_i32(col, value::parse_date(s)?),
        Kind::Time => push_i64(col, value::parse_time(s)?),
        Kind::Timestamp { tz, nanos } => {
            let t = s.trim();
            let v = if !t.is_empty()
                && t.bytes()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-'))
            {
                let ms: i64 = t.parse().map_err(|_| "epoch millis out of range")?;
                ms.checked_mul(if nanos { 1_000_000 } else { 1000 })
                    .ok_or("epoch millis out of range")?
            } else {
                value::parse_timestamp(t, tz, nanos)?
            };
            push_i64(col, v);
        }
        Kind::Int if lenient => push_i32(col, s.parse().map_err(|_| "not an int")?),
        Kind::Long if lenient => push_i64(col, s.parse().map_err(|_| "not a long")?),
        Kind::Bool if lenient => {
            let v = match s {
                "true" => true,
                "false" => false,
                _ => return Err("not a boolean"),
            };
            if let Store::Bool(b) = &mut col.store {
                b.append(v);
                col.validity.append(true);
            }
        }
        Kind::Float | Kind::Double if lenient => {
            let v: f64 = s.parse().map_err(|_| "not a number")?;
            match &mut col.store {
                Store::F32(vals) => vals.push(v as f32),
                Store::F64(vals) => vals.push(v),
                _ => unreachable!("float kinds use float stores"),
            }
            col.validity.append(true);
        }
        Kind::Decimal { precision, scale } if lenient => {
            let v = value::parse_decimal(s, precision, scale)?;
            if let Store::I128(vals) = &mut col.store {
                vals.push(v);
                col.validity.append(true);
            }
        }
        _ => return Err("unsupported type for a text value"),
    }
    Ok(())
}

#[inline]
fn push_fixed(col: &mut Column, v: &[u8]) {
    if let Store::Fixed { data, .. } = &mut col.store {
        data.extend_from_slice(v);
        col.validity.append(true);
    }
}
