//! Tracking IDs: 32 lowercase hex digits that tie an error response to its log line, so support
//! can find what happened from what the caller saw.
use std::fmt;

/// A support reference for one request or failure.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackingId([u8; 16]);

impl TrackingId {
    /// A fresh random tracking id.
    pub fn new() -> Self {
        Self(rand::random())
    }
}

impl Default for TrackingId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TrackingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TrackingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrackingId({self})")
    }
}

impl serde::Serialize for TrackingId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_32_lowercase_hex_digits() {
        let t = TrackingId::new().to_string();
        assert_eq!(t.len(), 32);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(t, TrackingId::new().to_string());
    }
}
