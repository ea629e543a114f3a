//! Private keys at rest, encrypted as APISIX encrypts them.
//!
//! APISIX stores an SSL object's `key`/`keys` and an upstream's
//! `tls.client_key` AES-CBC encrypted (key = IV = the first
//! `apisix.data_encryption.keyring` entry, PKCS#7, base64) and decrypts with
//! whichever keyring entry works. Doing the same means an etcd shared with
//! APISIX reads both ways, and a copied data directory or etcd dump holds no
//! clear-text key. Values that are already PEM (`---` prefix) when read are
//! used as they are, so data written before encryption was on keeps working.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use serde_json::Value;

use super::Kind;
use crate::config::Secret;

/// The `data_encryption.keyring`: the first entry encrypts, every entry decrypts.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

type Enc128 = cbc::Encryptor<aes::Aes128>;
type Enc256 = cbc::Encryptor<aes::Aes256>;
type Dec128 = cbc::Decryptor<aes::Aes128>;
type Dec256 = cbc::Decryptor<aes::Aes256>;

impl Keyring {
    /// Keyring from config entries; entries that are not 16 or 32 bytes are skipped
    /// (config validation already refuses them).
    pub fn new(entries: &[Secret]) -> Keyring {
        Keyring {
            keys: entries
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .filter(|k| k.len() == 16 || k.len() == 32)
                .collect(),
        }
    }

    /// Whether encryption is on (an empty keyring stores keys in clear, as APISIX).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Encrypt one clear-text value with the first key.
    pub fn encrypt(&self, clear: &str) -> Option<String> {
        let key = self.keys.first()?;
        let data = clear.as_bytes();
        let out = match key.len() {
            16 => Enc128::new_from_slices(key, key)
                .ok()?
                .encrypt_padded_vec_mut::<Pkcs7>(data),
            _ => Enc256::new_from_slices(key, &key[..16])
                .ok()?
                .encrypt_padded_vec_mut::<Pkcs7>(data),
        };
        Some(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypt one stored value with the first key that yields UTF-8 text.
    pub fn decrypt(&self, stored: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(stored.trim())
            .ok()?;
        self.keys.iter().find_map(|key| {
            let plain = match key.len() {
                16 => Dec128::new_from_slices(key, key)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(&raw)
                    .ok()?,
                _ => Dec256::new_from_slices(key, &key[..16])
                    .ok()?
                    .decrypt_padded_vec_mut::<Pkcs7>(&raw)
                    .ok()?,
            };
            String::from_utf8(plain).ok()
        })
    }

    /// Encrypt every clear-text private key of an object before it is stored.
    pub fn seal(&self, kind: Kind, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        for_each_secret(kind, v, &mut |s| {
            if s.starts_with("---") {
                if let Some(enc) = self.encrypt(s) {
                    *s = enc;
                }
            }
        });
    }

    /// Decrypt every stored private key of an object so it can be used.
    /// Values that do not decrypt are left as they are (loading them then
    /// fails with the usual "cannot parse key" error for that object only).
    pub fn open(&self, kind: Kind, v: &mut Value) {
        for_each_secret(kind, v, &mut |s| {
            if !s.starts_with("---") {
                if let Some(plain) = self.decrypt(s) {
                    *s = plain;
                }
            }
        });
    }
}

fn for_each_secret(kind: Kind, v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    let mut visit = |slot: Option<&mut Value>| {
        if let Some(Value::String(s)) = slot {
            f(s);
        }
    };
    match kind {
        Kind::Ssl => {
            visit(v.get_mut("key"));
            if let Some(Value::Array(keys)) = v.get_mut("keys") {
                for k in keys {
                    visit(Some(k));
                }
            }
        }
        Kind::Upstream => visit(v.get_mut("tls").and_then(|t| t.get_mut("client_key"))),
        Kind::StreamRoute | Kind::Service => visit(
            v.get_mut("upstream")
                .and_then(|u| u.get_mut("tls"))
                .and_then(|t| t.get_mut("client_key")),
        ),
        Kind::PluginMetadata | Kind::Secret => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn default_ring() -> Keyring {
        Keyring::new(&[
            Secret::new("qeddd145sfvddff3"),
            Secret::new("edd1c9f0985e76a2"),
        ])
    }

    #[test]
    fn round_trip_with_both_key_sizes() {
        for ring in [
            default_ring(),
            Keyring::new(&[Secret::new("0123456789abcdef0123456789abcdef")]),
        ] {
            let enc = ring.encrypt("-----BEGIN PRIVATE KEY-----\nabc").unwrap();
            assert!(!enc.starts_with("---"));
            assert_eq!(
                ring.decrypt(&enc).unwrap(),
                "-----BEGIN PRIVATE KEY-----\nabc"
            );
        }
    }

    #[test]
    fn matches_apisix_ciphertext() {
        // AES-128-CBC, key = IV = "qeddd145sfvddff3", PKCS#7, base64 — the
        // same bytes `openssl enc -aes-128-cbc -K .. -iv ..` produces.
        let ring = default_ring();
        assert_eq!(ring.encrypt("hello").unwrap(), "RdO7hElVO+FhS5u1spmKUQ==");
    }

    #[test]
    fn any_keyring_entry_decrypts() {
        let old = Keyring::new(&[Secret::new("edd1c9f0985e76a2")]);
        let enc = old.encrypt("---secret").unwrap();
        assert_eq!(default_ring().decrypt(&enc).unwrap(), "---secret");
        let other = Keyring::new(&[Secret::new("ffffffffffffffff")]);
        assert_eq!(other.decrypt(&enc), None);
    }

    #[test]
    fn seal_and_open_touch_only_private_keys() {
        let ring = default_ring();
        let mut ssl = json!({"cert": "---c", "key": "---k", "keys": ["---k2", "plain"]});
        ring.seal(Kind::Ssl, &mut ssl);
        assert_eq!(ssl["cert"], "---c");
        assert!(!ssl["key"].as_str().unwrap().starts_with("---"));
        assert_eq!(ssl["keys"][1], "plain");
        ring.open(Kind::Ssl, &mut ssl);
        assert_eq!(
            ssl,
            json!({"cert": "---c", "key": "---k", "keys": ["---k2", "plain"]})
        );

        let mut route = json!({"upstream": {"tls": {"client_cert": "---c", "client_key": "---k"}}});
        ring.seal(Kind::StreamRoute, &mut route);
        assert_ne!(route["upstream"]["tls"]["client_key"], "---k");
        ring.open(Kind::StreamRoute, &mut route);
        assert_eq!(route["upstream"]["tls"]["client_key"], "---k");
    }

    #[test]
    fn empty_keyring_stores_clear_text() {
        let mut ssl = json!({"key": "---k"});
        Keyring::default().seal(Kind::Ssl, &mut ssl);
        assert_eq!(ssl["key"], "---k");
    }
}
