//! Standard Webhooks v1 signatures: `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the secret's
//! bytes (the base64 after `whsec_`); and the message ids they sign.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac};

/// What a secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Key bytes of a generated secret.
const GENERATED_BYTES: usize = 32;
/// The key lengths accepted in a given secret (Standard Webhooks: 24 to
/// 64 bytes).
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing key, from a `whsec_` secret.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// A new random secret, `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; GENERATED_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

impl Key {
    /// The key of `secret`, or why it is not one (never echoing it).
    pub fn from_secret(secret: &str) -> Result<Key, String> {
        let b64 = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("a secret starts with {SECRET_PREFIX:?}"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not base64"))?;
        if !KEY_BYTES.contains(&bytes.len()) {
            return Err(format!(
                "the key must be {} to {} bytes; it is {}",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                bytes.len()
            ));
        }
        Ok(Key(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` value of one attempt.
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(msg_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// The `webhook-id` of a message: `msg_` and 32 hex digits of a SHA-256 of
/// the webhook, the resource, the message's type, event id and `prev`.
/// The same message gets the same id on every retry and after a restart;
/// different messages (a snapshot and a patch of one event, a coalesced
/// patch and a single one ending at the same event) get different ids. No
/// `.` (the signed content is dot-separated).
pub fn message_id(
    webhook: &str,
    resource: &str,
    kind: &str,
    event: &str,
    prev: Option<&str>,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [webhook, resource, kind, event, prev.unwrap_or("")] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let d = ctx.finish();
    let mut out = String::with_capacity(36);
    out.push_str("msg_");
    for b in &d.as_ref()[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector every Standard Webhooks library checks
    /// (standard-webhooks/standard-webhooks, `libraries/*/…test…`).
    #[test]
    fn signs_the_published_test_vector() {
        let key = Key::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_generated_ones_are_valid() {
        let s = generate_secret();
        assert!(s.starts_with("whsec_"));
        assert!(Key::from_secret(&s).is_ok());
        assert_ne!(s, generate_secret());
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            "whsec_c2hvcnQ=",
            "",
        ] {
            assert!(Key::from_secret(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn message_ids_are_stable_distinct_and_dot_free() {
        let a = message_id("w", "r", "patch", "01J", Some("01H"));
        assert_eq!(a, message_id("w", "r", "patch", "01J", Some("01H")));
        assert_eq!(a.len(), 36);
        assert!(!a.contains('.'));
        for other in [
            message_id("w", "r", "snapshot", "01J", Some("01H")),
            message_id("w", "r", "patch", "01J", None),
            message_id("w", "r2", "patch", "01J", Some("01H")),
            message_id("w2", "r", "patch", "01J", Some("01H")),
            // Parts are separated: moving a character across is another id.
            message_id("wr", "", "patch", "01J", Some("01H")),
        ] {
            assert_ne!(a, other);
        }
    }
}
