//! `/metrics` for named transforms: one series per `[transforms.NAME]`, labelled `transform`
//! (and its `type`). Transforms are few and configured, so a series each is bounded.

use super::metrics::{float, Exposition};
use crate::status::TransformStatus;

/// The families [`render`] writes, in order (after those of the listeners).
pub const FAMILIES: &[(&str, &str)] = &[
    ("log_sensor_transform_records_total", "counter"),
    ("log_sensor_transform_dropped_total", "counter"),
    ("log_sensor_transform_parse_failures_total", "counter"),
    ("log_sensor_transform_errors_total", "counter"),
    ("log_sensor_transform_seconds_total", "counter"),
];

type Field = fn(&TransformStatus) -> u64;

const COUNTS: [(&str, Field); 4] = [
    ("Records that entered the transform.", |t| t.records_in),
    (
        "Records the transform dropped (their offsets still commit).",
        |t| t.dropped,
    ),
    (
        "Records the transform could not parse, passed on unchanged.",
        |t| t.parse_failures,
    ),
    (
        "Records on which the transform failed (script error or limit), shipped unchanged with fields.transform_error.",
        |t| t.errors,
    ),
];

pub(super) fn render(m: &mut Exposition, transforms: &[TransformStatus]) {
    for ((name, kind), (help, field)) in FAMILIES.iter().zip(COUNTS) {
        m.family(name, kind, help);
        for t in transforms {
            m.sample(name, &[("transform", &t.name), ("type", &t.kind)], field(t));
        }
    }
    let (name, kind) = FAMILIES[4];
    m.family(name, kind, "Seconds spent in the transform.");
    for t in transforms {
        m.sample_raw(
            name,
            &[("transform", &t.name), ("type", &t.kind)],
            &float(t.seconds),
        );
    }
}
