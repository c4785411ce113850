//! Human byte sizes such as `2GiB`, `512MB` or `1048576`.

use std::fmt;
use std::str::FromStr;

/// A size in bytes, parsed from text like `2GiB`, `1.5 GB`, `512k` or `4096`.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`, and the short `k`, `m`, `g`,
/// `t`) are powers of 1024; decimal ones (`KB`, `MB`, `GB`, `TB`) are powers
/// of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ByteSizeError {
    #[error("empty size")]
    Empty,
    #[error("`{0}` is not a number of bytes (try 2GiB, 512MiB, 1GB or 4096)")]
    Malformed(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(ByteSizeError::Malformed(text.to_string())),
        };
        let malformed = || ByteSizeError::Malformed(text.to_string());
        let value = if let Some((whole, frac)) = number.split_once('.') {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| malformed())?
            };
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            let frac_value: u64 = frac.parse().map_err(|_| malformed())?;
            let scale = 10u64.pow(frac.len() as u32);
            let whole_bytes = whole.checked_mul(multiplier);
            let frac_bytes = (frac_value as u128 * multiplier as u128 / scale as u128) as u64;
            whole_bytes
                .and_then(|w| w.checked_add(frac_bytes))
                .ok_or_else(|| ByteSizeError::Overflow(text.to_string()))?
        } else {
            let whole: u64 = number.parse().map_err(|_| malformed())?;
            whole
                .checked_mul(multiplier)
                .ok_or_else(|| ByteSizeError::Overflow(text.to_string()))?
        };
        Ok(ByteSize(value))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit {
                return write!(f, "{:.2} {name}", self.0 as f64 / unit as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as \"2GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("2GiB".parse(), Ok(ByteSize(2 << 30)));
        assert_eq!("2 GiB".parse(), Ok(ByteSize(2 << 30)));
        assert_eq!("512m".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("1GB".parse(), Ok(ByteSize(1_000_000_000)));
        assert_eq!("1.5KiB".parse(), Ok(ByteSize(1536)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
    }

    #[test]
    fn rejects_garbage() {
        assert!("".parse::<ByteSize>().is_err());
        assert!("GiB".parse::<ByteSize>().is_err());
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("1.".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }
}
