//! A batch as NDJSON: the record format of the file and stdout sinks and of the collector
//! (README, "Record format"). One line per record, in record order.

use super::Batch;
use crate::record;

impl Batch {
    /// The records as NDJSON, the format of the file sink and the collector.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        let mut prefixes: Vec<Vec<u8>> = Vec::with_capacity(self.streams.len());
        for s in &self.streams {
            let mut p = Vec::with_capacity(160);
            p.extend_from_slice(b"{\"host\":\"");
            record::escape_into(&mut p, self.host.as_bytes());
            p.extend_from_slice(b"\",\"source\":\"");
            record::escape_into(&mut p, s.meta.source.as_bytes());
            p.extend_from_slice(b"\",\"stream\":\"");
            p.extend_from_slice(s.meta.id.as_bytes());
            if let Some(fp) = s.meta.fingerprint {
                p.extend_from_slice(format!("\",\"fingerprint\":\"{fp:016x}").as_bytes());
            }
            p.extend_from_slice(b"\",\"path\":\"");
            record::escape_into(&mut p, s.meta.path.as_bytes());
            p.extend_from_slice(b"\",\"offset\":");
            prefixes.push(p);
        }
        // Sized once: the records and their fields objects, each one's prefix and keys (~90
        // bytes), and a sixteenth for escapes. Doubling a multi-megabyte buffer would hold two
        // of them at once.
        let keys: usize = self
            .records
            .iter()
            .map(|m| prefixes[m.stream as usize].len() + 90)
            .sum();
        let need = self.data.len() + self.fields.len() + keys;
        out.reserve_exact(need + need / 16);
        let mut last_ts = i64::MIN;
        let mut ts = String::new();
        let mut num = itoa::Buffer::new();
        for m in &self.records {
            if m.ts_ms != last_ts {
                last_ts = m.ts_ms;
                ts = record::rfc3339_ms(m.ts_ms);
            }
            out.extend_from_slice(&prefixes[m.stream as usize]);
            out.extend_from_slice(num.format(m.offset).as_bytes());
            out.extend_from_slice(b",\"len\":");
            out.extend_from_slice(num.format(m.len).as_bytes());
            out.extend_from_slice(b",\"part\":\"");
            out.extend_from_slice(m.part.as_str().as_bytes());
            out.extend_from_slice(b"\",\"ts\":\"");
            out.extend_from_slice(ts.as_bytes());
            out.extend_from_slice(b"\",");
            record::msg_field(out, &self.data[m.start as usize..m.end as usize], m.utf8);
            if let Some(f) = self.fields_of(m) {
                // Checked to be one JSON object when it entered the batch (`Intake::push`).
                out.extend_from_slice(b",\"fields\":");
                out.extend_from_slice(f);
            }
            out.extend_from_slice(b"}\n");
        }
    }
}
