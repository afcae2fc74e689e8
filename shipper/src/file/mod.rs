//! A log file on disk, apart from following it: what identifies it ([`head`]: the hash of its
//! first bytes, gzip decompressed first) and opening it at an offset, plain or gzip, with the
//! check that the bytes before the offset are still the ones read ([`open`]).

pub mod head;
pub mod open;
