//! Admin key generation and write-back into `config.yaml`.
//!
//! APISIX (`apisix/cli/ops.lua`) gives every `role: admin` entry whose `key` is empty 32 random
//! letters and rewrites `conf/config.yaml`, so `yq '.deployment.admin.admin_key[0].key'` prints
//! the key afterwards. APISIX re-serialises the whole merged config; we instead edit only the
//! bytes of the affected `key` values (through `yaml_edit`) so the user's comments, quoting
//! and layout survive, and replace the file atomically with the mode it had.

use std::path::Path;

use super::yaml_edit::{Document, ListField};
use super::{AdminRole, Config, ConfigError, DeploymentRole, Secret};

/// A key generated at start-up, to be printed once.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Position in `deployment.admin.admin_key`.
    pub index: usize,
    /// The entry's `name`.
    pub name: String,
    /// The new key.
    pub key: Secret,
}

const KEY_LEN: usize = 32;
const LETTERS: &[u8; 52] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 32 random ASCII letters [A-Za-z] from the OS RNG; no key at all when the
/// OS cannot supply random bytes.
pub fn generate_key() -> Result<String, ConfigError> {
    use rand::TryRngCore;
    let mut out = String::with_capacity(KEY_LEN);
    let mut buf = [0u8; 64];
    while out.len() < KEY_LEN {
        rand::rngs::OsRng.try_fill_bytes(&mut buf).map_err(|e| {
            ConfigError::Other(format!(
                "cannot generate an admin key: the operating system's random source failed: {e}"
            ))
        })?;
        // 208 = 4 * 52: rejecting larger bytes keeps every letter equally likely.
        for b in buf.iter().filter(|b| **b < 208) {
            if out.len() == KEY_LEN {
                break;
            }
            out.push(char::from(LETTERS[usize::from(*b) % LETTERS.len()]));
        }
    }
    Ok(out)
}

/// `deployment.admin.admin_key[].key`, and APISIX's default list when it is absent.
const ADMIN_KEYS: ListField<'static> = ListField {
    path: &["deployment", "admin", "admin_key"],
    field: "key",
    default_entry: &[("name", "admin"), ("key", ""), ("role", "admin")],
};

/// Pure: return `text` with `admin_key[i].key` set to the given values, everything else unchanged.
///
/// Handles quoted, empty, `~` and missing `key`s in block and flow entries, and a config with
/// no `deployment.admin.admin_key` at all (APISIX's default single `admin` entry is written).
/// The result is re-parsed and must equal the original with only those keys changed.
pub fn write_back(text: &str, keys: &[(usize, String)]) -> Result<String, ConfigError> {
    Document::parse(text)
        .and_then(|doc| doc.set_fields(&ADMIN_KEYS, keys))
        .map_err(|e| ConfigError::WriteBack(e.to_string()))
}

/// Generate keys for empty `role: admin` entries, write them back atomically, update `config`.
///
/// Only when the Admin API is on with keys required (data planes never generate).
/// `text` is the file's raw text so `${{VAR}}` placeholders survive; an entry whose key comes
/// from such a placeholder gets an in-memory key only.
pub fn ensure_admin_keys(
    path: &Path,
    text: &str,
    config: &mut Config,
) -> Result<Vec<GeneratedKey>, ConfigError> {
    let admin = &config.deployment.admin;
    if !config.apisix.enable_admin
        || !admin.admin_key_required
        || config.deployment.role == DeploymentRole::DataPlane
    {
        return Ok(Vec::new());
    }
    // A file the editor cannot read has no placeholder keys; writing back then reports why.
    let doc = Document::parse(text);
    let from_placeholder = doc
        .as_ref()
        .map(|d| d.placeholder_fields(&ADMIN_KEYS))
        .unwrap_or_default();
    let mut generated = Vec::new();
    let mut to_write = Vec::new();
    for (index, entry) in admin.admin_key.iter().enumerate() {
        if entry.role != AdminRole::Admin || !entry.key.is_empty() {
            continue;
        }
        let key = generate_key()?;
        let from_env = from_placeholder.get(index).copied().unwrap_or(false);
        if from_env {
            tracing::warn!(
                name = %entry.name,
                "admin key comes from an empty environment variable; using a generated key for this run only"
            );
        } else {
            to_write.push((index, key.clone()));
        }
        generated.push(GeneratedKey {
            index,
            name: entry.name.clone(),
            key: Secret::new(key),
        });
    }
    if !to_write.is_empty() {
        let new_text = doc
            .and_then(|d| d.set_fields(&ADMIN_KEYS, &to_write))
            .map_err(|e| ConfigError::WriteBack(e.to_string()))?;
        crate::fsutil::write_atomic(path, new_text.as_bytes()).map_err(|source| {
            ConfigError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "generated admin key written to config file");
    }
    for g in &generated {
        if let Some(entry) = config.deployment.admin.admin_key.get_mut(g.index) {
            entry.key = g.key.clone();
        }
    }
    Ok(generated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    fn key_at(text: &str, i: usize) -> String {
        let v: Value = serde_yaml::from_str(text).unwrap();
        v["deployment"]["admin"]["admin_key"][i]["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn wb(text: &str, k: &str) -> String {
        write_back(text, &[(0, k.to_string())]).unwrap()
    }

    #[test]
    fn generated_keys_are_32_letters_and_differ() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }

    const BLOCK: &str = "# top comment\napisix:\n  proxy_mode: stream   # mode\n\ndeployment:\n  admin:\n    admin_key:\n      # the admin\n      - name: \"admin\"\n        key: ''\n        role: admin  # all\n      - name: viewer\n        key: abc\n        role: viewer\n    allow_admin:\n      - 127.0.0.0/24\n";

    #[test]
    fn single_quoted_empty_key() {
        let out = wb(BLOCK, "NewKeyABC");
        assert_eq!(out, BLOCK.replace("key: ''", "key: 'NewKeyABC'"));
        assert_eq!(key_at(&out, 0), "NewKeyABC");
        assert_eq!(key_at(&out, 1), "abc");
    }

    #[test]
    fn double_quoted_null_and_tilde_keys() {
        for (before, after) in [
            ("key: \"\"", "key: \"Abc\""),
            ("key: ~", "key: Abc"),
            ("key: null", "key: Abc"),
            ("key:", "key: Abc"),
            ("key:   # empty", "key: Abc   # empty"),
        ] {
            let text = format!(
                "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        {before}\n        role: admin\n# end\n"
            );
            let out = wb(&text, "Abc");
            let want = text.replace(
                &format!("        {before}\n"),
                &format!("        {after}\n"),
            );
            assert_eq!(out, want, "for {before}");
            assert_eq!(key_at(&out, 0), "Abc");
        }
    }

    #[test]
    fn missing_key_line_is_inserted_with_entry_indentation() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        role: admin\n    admin_listen: {ip: 127.0.0.1, port: 9180}\n";
        let out = wb(text, "Abc");
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: Abc\n        role: admin\n    admin_listen: {ip: 127.0.0.1, port: 9180}\n"
        );
        let one_line = "deployment:\n  admin:\n    admin_key:\n    - name: admin # me\n    allow_admin: [127.0.0.0/24]\n";
        let out = wb(one_line, "Abc");
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n    - name: admin # me\n      key: Abc\n    allow_admin: [127.0.0.0/24]\n"
        );
    }

    #[test]
    fn flow_entries() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '', role: admin}   # c\n      - {name: b, role: admin}\n";
        let out = write_back(text, &[(0, "Abc".into()), (1, "Def".into())]).unwrap();
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: 'Abc', role: admin}   # c\n      - {key: Def, name: b, role: admin}\n"
        );
        assert_eq!(key_at(&out, 1), "Def");
        let flow_null = "deployment: {admin: {admin_key: [{name: admin, key: , role: admin}]}}\n";
        let out = wb(flow_null, "Abc");
        assert_eq!(key_at(&out, 0), "Abc");
    }

    #[test]
    fn no_admin_key_section_appends_default_entry() {
        for text in [
            "",
            "# only a comment",
            "apisix:\n  proxy_mode: stream\n",
            "apisix:\n  proxy_mode: stream\ndeployment:\n  role: traditional\n  etcd:\n    prefix: /x\n",
            "deployment:\n  admin:\n    admin_listen:\n      port: 9180\n",
        ] {
            let out = wb(text, "Abc");
            // Every original line survives, in order.
            let mut rest = out.lines();
            for line in text.lines() {
                assert!(rest.any(|l| l == line), "{line:?} lost in {out}");
            }
            assert_eq!(key_at(&out, 0), "Abc", "for {text:?}: {out}");
            let v: Value = serde_yaml::from_str(&out).unwrap();
            assert_eq!(v["deployment"]["admin"]["admin_key"][0]["role"], "admin");
        }
    }

    #[test]
    fn flow_tables_without_admin_key_get_a_flow_entry() {
        assert_eq!(
            wb("deployment: {role: traditional}  # c\n", "Abc"),
            "deployment: {admin: {admin_key: [{name: admin, key: Abc, role: admin}]}, role: traditional}  # c\n"
        );
        assert_eq!(
            wb("deployment:\n  admin: {}\n", "Abc"),
            "deployment:\n  admin: {admin_key: [{name: admin, key: Abc, role: admin}]}\n"
        );
    }

    #[test]
    fn non_ascii_text_and_placeholders_are_kept() {
        let text = "# clé générée ↓\napisix:\n  ssl: {fallback_sni: \"é.example\"}\ndeployment:\n  admin:\n    admin_key:\n      - name: ädmin\n        key: ''\n        role: admin\n    admin_listen:\n      port: ${{ADMIN_PORT:=9180}}\n";
        let out = wb(text, "Abc");
        assert_eq!(out, text.replace("key: ''", "key: 'Abc'"));
    }

    #[test]
    fn placeholders_in_flow_tables_do_not_break_the_edit() {
        let text = "apisix:\n  control: {ip: 127.0.0.1, port: ${{ CONTROL_PORT:=9090 }}}\ndeployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '', role: admin}\n      - {name: env, key: '${{K}}', role: admin}\n";
        let out = wb(text, "Abc");
        assert_eq!(out, text.replacen("key: ''", "key: 'Abc'", 1));
        let doc = Document::parse(text).unwrap();
        assert_eq!(doc.placeholder_fields(&ADMIN_KEYS), [false, true]);
    }

    #[test]
    fn write_back_errors() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: ''\n";
        assert!(write_back(text, &[(3, "x".into())]).is_err());
        let null_list = "deployment:\n  admin:\n    admin_key:\n";
        assert!(write_back(null_list, &[(0, "x".into())]).is_err());
        let e = write_back("a: [", &[(0, "x".into())]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("failed to write the generated admin key"));
    }

    #[test]
    fn key_needing_quotes_is_quoted() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key:\n";
        let out = wb(text, "it's: #1");
        assert_eq!(key_at(&out, 0), "it's: #1");
        let out = wb(text, "true");
        assert_eq!(key_at(&out, 0), "true");
    }

    #[cfg(unix)]
    #[test]
    fn ensure_admin_keys_rewrites_file_once_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let text = "# my config\ndeployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: ''   # generated\n        role: admin\n      - name: viewer\n        key: ''\n        role: viewer\n";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let generated = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(generated.len(), 1);
        assert_eq!(generated[0].index, 0);
        assert_eq!(generated[0].name, "admin");
        let key = generated[0].key.expose().to_string();
        assert_eq!(config.deployment.admin.admin_key[0].key.expose(), key);
        assert!(config.deployment.admin.admin_key[1].key.is_empty());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            text.replace("key: ''   #", &format!("key: '{key}'   #"))
        );
        assert_eq!(key_at(&written, 0), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut again = Config::load(&path).unwrap();
        assert!(ensure_admin_keys(&path, &written, &mut again)
            .unwrap()
            .is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    }

    #[test]
    fn ensure_admin_keys_skips_when_not_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        for text in [
            "apisix:\n  enable_admin: false\n",
            "deployment:\n  admin:\n    admin_key_required: false\n",
            "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
            assert!(ensure_admin_keys(&path, text, &mut config)
                .unwrap()
                .is_empty());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn ensure_admin_keys_default_config_and_env_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let text = "apisix:\n  proxy_mode: stream\n";
        std::fs::write(&path, text).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let g = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(g.len(), 1);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(key_at(&written, 0), g[0].key.expose());

        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: \"${{KEY:=}}\"\n        role: admin\n";
        std::fs::write(&path, text).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let g = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(config.deployment.admin.admin_key[0].key, g[0].key);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
