//! Durations as kubectl takes them on its command line: Go's notation (`90s`, `5m`, `2h`,
//! `1m30s`, `1.5h`, `500ms`), or a bare number of seconds.

use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;

/// A time to wait: a duration as kubectl takes one, never zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_any(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?} is no time to wait: use e.g. 90s or 5m"));
    }
    Ok(duration)
}

/// A limit as kubectl's `--request-timeout` takes one: a duration, where zero means none.
pub fn parse_limit(text: &str) -> Result<Duration, String> {
    parse_any(text)
}

fn parse_any(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: use e.g. 90s, 5m or 1h30m");
    let signed = match text.parse::<u64>() {
        Ok(seconds) => SignedDuration::from_secs(seconds.try_into().map_err(|_| invalid())?),
        Err(_) => text.parse::<SignedDuration>().map_err(|_| invalid())?,
    };
    Duration::try_from(signed).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_timeouts() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for invalid in ["m", "", "5x", "-5m", "soon"] {
            let refused = parse_duration(invalid).expect_err(invalid);
            assert!(refused.contains("use e.g."), "{refused}");
        }
        assert!(parse_duration("0s").is_err(), "no time to wait");
    }

    #[test]
    fn a_limit_of_zero_is_no_limit_and_others_read_as_durations() {
        assert_eq!(parse_limit("0"), Ok(Duration::ZERO));
        assert_eq!(parse_limit("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_limit("45s"), Ok(Duration::from_secs(45)));
        assert!(parse_limit("-1s").is_err());
    }
}
