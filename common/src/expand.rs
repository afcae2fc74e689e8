//! `${hostname}` and `${env:NAME}` in config strings. The agent expands them when it loads its
//! config, and the extension when it reads the same file without the agent, so both must read a
//! value the same way (they once differed in their error text).

/// Expands the variables in `value`; an unknown variable or an unset environment variable is an
/// error naming it and the value it was used in.
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

/// The machine's host name, as `hostname` prints it; `localhost` when it has none.
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
        std::env::set_var("LOG_SENSOR_COMMON_TEST_VAR", "abc");
        assert_eq!(
            expand("x-${env:LOG_SENSOR_COMMON_TEST_VAR}-y").unwrap(),
            "x-abc-y"
        );
        assert_eq!(expand("${hostname}").unwrap(), hostname());
        assert_eq!(expand("plain $ {x}").unwrap(), "plain $ {x}");
    }

    #[test]
    fn unknown_unset_and_unterminated_name_the_value() {
        let e = expand("a${nope}").unwrap_err();
        assert!(
            e.contains("unknown variable ${nope}") && e.contains("\"a${nope}\""),
            "{e}"
        );
        assert!(e.contains("(known: ${hostname}, ${env:NAME})"), "{e}");
        let e = expand("${env:LOG_SENSOR_COMMON_SURELY_UNSET}").unwrap_err();
        assert!(
            e.contains("LOG_SENSOR_COMMON_SURELY_UNSET is not set"),
            "{e}"
        );
        assert!(expand("${hostname").unwrap_err().contains("unterminated"));
    }
}
