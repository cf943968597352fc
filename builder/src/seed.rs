//! Deterministic identities: every UUID, GUID, hash seed and volume id in an image is derived from one seed
//! string, so the same inputs give the same bytes. The default seed is the toplevel's store path, so two
//! different systems get different identities and one system always the same.

use sha2::{Digest, Sha256};

/// The seed everything random-looking is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed(String);

impl Seed {
    /// A seed from a string.
    #[must_use]
    pub fn new(s: &str) -> Self {
        Self(s.to_owned())
    }

    /// 32 bytes for `purpose` (a fixed name such as `ext4-uuid`).
    #[must_use]
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kiln seed v1\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(self.0.as_bytes());
        h.finalize().into()
    }

    /// A UUID (RFC 9562 version 4 layout, deterministic) for `purpose`.
    #[must_use]
    pub fn uuid(&self, purpose: &str) -> [u8; 16] {
        let d = self.derive(purpose);
        let mut u: [u8; 16] = d[..16].try_into().expect("16 bytes");
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    /// 16 bytes for `purpose`, with no structure imposed.
    #[must_use]
    pub fn bytes16(&self, purpose: &str) -> [u8; 16] {
        self.derive(purpose)[..16].try_into().expect("16 bytes")
    }

    /// The seed string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Formats a UUID in the usual 8-4-4-4-12 form.
#[must_use]
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_stable_and_distinct() {
        let a = Seed::new("x");
        assert_eq!(a.uuid("ext4-uuid"), Seed::new("x").uuid("ext4-uuid"));
        assert_ne!(a.uuid("ext4-uuid"), a.uuid("gpt-disk"));
        assert_ne!(a.uuid("ext4-uuid"), Seed::new("y").uuid("ext4-uuid"));
        let u = format_uuid(&a.uuid("ext4-uuid"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
