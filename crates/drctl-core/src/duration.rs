//! Human durations: `500ms`, `30s`, `5m`, `1h30m`, `2d`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

const HINT: &str = "use a number and a unit (ms, s, m, h, d), like 30s, 5m or 1h30m";

pub fn parse_duration(s: &str) -> Result<Dur, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if t.contains(char::is_whitespace) {
        return Err(format!("bad duration `{s}`; {HINT}, with no spaces"));
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("bad duration `{s}`; {HINT}"));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration `{s}`; {HINT}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("duration `{s}` has no unit; {HINT}")),
            _ => return Err(format!("bad duration unit `{unit}` in `{s}`; {HINT}")),
        };
        total = total.saturating_add(n.saturating_mul(ms));
    }
    if total > u64::MAX as u128 / 2 {
        return Err(format!("duration `{s}` is too long"));
    }
    Ok(Dur(Duration::from_millis(total as u64)))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration: a number and a unit (ms, s, m, h, d), like 30s, 5m or 1h30m."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(parse_duration("30s").unwrap(), Dur::secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Dur::secs(5400));
        assert_eq!(parse_duration("1500ms").unwrap().to_string(), "1s500ms");
        assert_eq!(Dur::secs(3600 * 4).to_string(), "4h");
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unit `y`"));
        assert!(parse_duration("-5s").is_err());
    }
}
