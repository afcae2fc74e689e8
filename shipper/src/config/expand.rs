//! `${hostname}` and `${env:NAME}` in string values.

/// Expands the variables in `value`; an unknown variable or an unset environment variable is an error.
pub fn expand(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated \"${{\" in {value:?}"))?;
        let name = &after[..end];
        if name == "hostname" {
            out.push_str(&hostname());
        } else if let Some(var) = name.strip_prefix("env:") {
            let v = std::env::var(var).map_err(|_| {
                format!("environment variable {var} is not set (used in {value:?})")
            })?;
            out.push_str(&v);
        } else {
            return Err(format!(
                "unknown variable ${{{name}}} in {value:?} (known: ${{hostname}}, ${{env:NAME}})"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The machine's host name, as `hostname` prints it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if len > 0 {
            return String::from_utf8_lossy(&buf[..len]).into_owned();
        }
    }
    "localhost".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_variables() {
        std::env::set_var("LOG_SENSOR_TEST_VAR", "abc");
        assert_eq!(expand("x-${env:LOG_SENSOR_TEST_VAR}-y").unwrap(), "x-abc-y");
        assert_eq!(expand("${hostname}").unwrap(), hostname());
        assert_eq!(expand("plain").unwrap(), "plain");
    }

    #[test]
    fn rejects_unknown_and_unset() {
        assert!(expand("${nope}").unwrap_err().contains("unknown variable"));
        assert!(expand("${env:LOG_SENSOR_SURELY_UNSET}")
            .unwrap_err()
            .contains("not set"));
        assert!(expand("${hostname").unwrap_err().contains("unterminated"));
    }
}
