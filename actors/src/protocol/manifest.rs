//! Integration manifest checks: tells an operator, before they upload a Workspace Integration
//! manifest to Control Hub (or hand it to Cisco for a global deployment), everything that is
//! wrong with it, each problem located by a JSON path such as `$.apiAccess[2].access`.
//!
//! The rules are the "Manifest Details" table of the Webex Workspace Integrations guide, one
//! check per row (see [`check`] for the list). Two rules go beyond the table and are marked as
//! such: fields the table does not name are reported as unknown, and a scope or xAPI path that is
//! listed twice is reported as a duplicate.
//!
//! Everything here is pure: the checker takes a [`serde_json::Value`] (or text) and returns a
//! list of problems; it never does I/O.
use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

/// Fields allowed at the top level of a manifest, in the order of the table.
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "id",
    "manifestVersion",
    "displayName",
    "vendor",
    "email",
    "description",
    "descriptionUrl",
    "tocUrl",
    "availability",
    "apiAccess",
    "xapiAccess",
    "provisioning",
];
/// Fields allowed in one `apiAccess` entry.
pub const API_ACCESS_FIELDS: &[&str] = &["scope", "access", "role"];
/// Lists allowed inside `xapiAccess`, in the order of the table.
pub const XAPI_ACCESS_LISTS: &[&str] = &["status", "commands", "events"];
/// Fields allowed in one `xapiAccess.status`, `.commands` or `.events` entry.
pub const XAPI_ENTRY_FIELDS: &[&str] = &["path", "access"];
/// Fields allowed in `provisioning`.
pub const PROVISIONING_FIELDS: &[&str] = &["type", "url", "activationGuideUrl"];

/// Values of `availability`.
pub const AVAILABILITIES: &[&str] = &[AVAILABILITY_GLOBAL, "org_private"];
/// The `availability` that makes `tocUrl` required.
pub const AVAILABILITY_GLOBAL: &str = "global";
/// Values of `access` in `apiAccess` and `xapiAccess` entries.
pub const ACCESS_LEVELS: &[&str] = &["required", "optional"];
/// Values of `apiAccess[].role`.
pub const ROLES: &[&str] = &["id_full_admin", "id_readonly_admin", "id_device_admin"];
/// Values of `provisioning.type`.
pub const PROVISIONING_TYPES: &[&str] = &["manual", PROVISIONING_HTTPS];
/// The `provisioning.type` that makes `provisioning.url` required (and https-only).
pub const PROVISIONING_HTTPS: &str = "https";

/// Schemes accepted for URLs in general.
const WEB_SCHEMES: &[&str] = &["http", "https"];
/// Schemes accepted for `provisioning.url` when `provisioning.type` is `https`.
const HTTPS_ONLY: &[&str] = &["https"];

/// One problem found in a manifest, located by a JSON path like `$.apiAccess[2].access`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    /// Where the problem is: `$` is the whole document, `$.a.b[0]` a field inside it. A missing
    /// field is located at the path it should have.
    pub path: String,
    /// What is wrong, in words meant for the person editing the manifest.
    pub message: String,
}

impl fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Checks a manifest against every rule of the manifest table and returns all problems found
/// (an empty list means the manifest is valid).
///
/// Rules:
/// - the document is an object, holding only the fields of the table ([`TOP_LEVEL_FIELDS`]);
/// - `id` is a UUID in its hyphenated 8-4-4-4-12 form;
/// - `manifestVersion` is a JSON integer ≥ 1 (not a string, not a float);
/// - `displayName`, `vendor`, `email` and `description` are non-empty strings, and `email` looks
///   like an address (one `@`, non-empty local part, a domain with a dot, no whitespace);
/// - `descriptionUrl`, if present, is an absolute http(s) URL;
/// - `tocUrl` is required when `availability` is `global`, and when present is an http(s) URL;
/// - `availability` is one of [`AVAILABILITIES`];
/// - `apiAccess` is an array (possibly empty) of objects with a non-empty `scope`, an `access`
///   from [`ACCESS_LEVELS`] and an optional `role` from [`ROLES`];
/// - `xapiAccess` is an object with optional arrays `status`, `commands` and `events`, whose
///   entries are objects with a non-empty `path` without whitespace and an `access` from
///   [`ACCESS_LEVELS`];
/// - `provisioning` is an object with a `type` from [`PROVISIONING_TYPES`]; `url` is required
///   when the type is `https` and must then be an `https://` URL (for `manual` it is optional and
///   may be http or https); `activationGuideUrl` is an optional http(s) URL that cannot be used
///   together with `url`;
/// - a value of the wrong JSON type is reported with the expected type.
///
/// Beyond the table: every object accepts only the fields the table names (anything else is an
/// "unknown field", with a hint when only the letter case is wrong), a scope listed twice in
/// `apiAccess` and a path listed twice in one `xapiAccess` list are reported as duplicates.
///
/// Problems come in the order of the table (which is the order of the example manifest), array
/// entries by index, and unknown fields of an object after its known ones.
pub fn check(manifest: &Value) -> Vec<ManifestProblem> {
    let mut checker = Checker::default();
    if let Some(root) = checker.object("$", manifest) {
        checker.root(root);
    }
    checker.problems
}

/// Parses `text` as JSON, then [`check`]s it. A JSON syntax error is reported as a single
/// problem at path `$` that names its line and column.
pub fn check_str(text: &str) -> Vec<ManifestProblem> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => check(&value),
        Err(e) => vec![ManifestProblem {
            path: "$".to_owned(),
            message: format!(
                "invalid JSON at line {}, column {}: {}",
                e.line(),
                e.column(),
                without_position(&e)
            ),
        }],
    }
}

/// The message of a serde_json error without its trailing " at line L column C".
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Walks a manifest and collects problems.
#[derive(Default)]
struct Checker {
    problems: Vec<ManifestProblem>,
}

impl Checker {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(ManifestProblem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    // ---- the manifest, section by section ----

    fn root(&mut self, root: &Map<String, Value>) {
        if let Some(id) = self.require_str("$", root, "id")
            && !is_hyphenated_uuid(id)
        {
            self.report(
                "$.id",
                format!(
                    "must be a UUID like \"ac6b6972-538e-11ec-bf63-0242ac130002\", found {id:?}"
                ),
            );
        }
        self.manifest_version(root);
        self.require_str("$", root, "displayName");
        self.require_str("$", root, "vendor");
        if let Some(email) = self.require_str("$", root, "email")
            && !looks_like_email(email)
        {
            self.report(
                "$.email",
                format!("must be an email address like name@example.com, found {email:?}"),
            );
        }
        self.require_str("$", root, "description");
        if let Some(url) = self.optional_str("$", root, "descriptionUrl") {
            self.url("$.descriptionUrl", url, WEB_SCHEMES);
        }

        // tocUrl comes before availability in the table but depends on it.
        let global = root.get("availability").and_then(Value::as_str) == Some(AVAILABILITY_GLOBAL);
        let toc_url = if global {
            let url = self.field("$", root, "tocUrl", Some("when availability is \"global\""));
            url.and_then(|v| self.string("$.tocUrl", v))
        } else {
            self.optional_str("$", root, "tocUrl")
        };
        if let Some(url) = toc_url {
            self.url("$.tocUrl", url, WEB_SCHEMES);
        }
        self.require_one_of("$", root, "availability", AVAILABILITIES);

        if let Some(entries) = self
            .field("$", root, "apiAccess", None)
            .and_then(|v| self.array("$.apiAccess", v))
        {
            self.api_access(entries);
        }
        if let Some(xapi) = self
            .field("$", root, "xapiAccess", None)
            .and_then(|v| self.object("$.xapiAccess", v))
        {
            self.xapi_access(xapi);
        }
        if let Some(provisioning) = self
            .field("$", root, "provisioning", None)
            .and_then(|v| self.object("$.provisioning", v))
        {
            self.provisioning(provisioning);
        }
        self.unknown_fields("$", root, TOP_LEVEL_FIELDS);
    }

    fn manifest_version(&mut self, root: &Map<String, Value>) {
        let path = "$.manifestVersion";
        let Some(value) = self.field("$", root, "manifestVersion", None) else {
            return;
        };
        match value {
            Value::Number(n) if n.is_u64() => {
                if n.as_u64() == Some(0) {
                    self.report(path, "must be a positive integer (1 or more), found 0");
                }
            }
            Value::Number(n) if n.is_i64() => {
                self.report(
                    path,
                    format!("must be a positive integer (1 or more), found {n}"),
                );
            }
            Value::Number(n) => {
                self.report(path, format!("must be a whole number like 1, found {n}"));
            }
            other => self.report(path, expected("integer", other)),
        }
    }

    fn api_access(&mut self, entries: &[Value]) {
        let mut seen_scopes: HashMap<&str, String> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("$.apiAccess[{i}]");
            let Some(entry) = self.object(&path, entry) else {
                continue;
            };
            if let Some(scope) = self.require_str(&path, entry, "scope") {
                self.not_duplicate(&mut seen_scopes, scope, &path, "scope");
            }
            self.require_one_of(&path, entry, "access", ACCESS_LEVELS);
            if let Some(role) = self.optional_str(&path, entry, "role") {
                self.one_of(&child(&path, "role"), role, ROLES);
            }
            self.unknown_fields(&path, entry, API_ACCESS_FIELDS);
        }
    }

    fn xapi_access(&mut self, xapi: &Map<String, Value>) {
        for &list in XAPI_ACCESS_LISTS {
            let list_path = child("$.xapiAccess", list);
            let Some(entries) = xapi.get(list).and_then(|v| self.array(&list_path, v)) else {
                continue;
            };
            let mut seen_paths: HashMap<&str, String> = HashMap::new();
            for (i, entry) in entries.iter().enumerate() {
                let path = format!("{list_path}[{i}]");
                let Some(entry) = self.object(&path, entry) else {
                    continue;
                };
                if let Some(xpath) = self.require_str(&path, entry, "path") {
                    if xpath.chars().any(char::is_whitespace) {
                        self.report(
                            &child(&path, "path"),
                            format!("must not contain whitespace, found {xpath:?}"),
                        );
                    } else {
                        self.not_duplicate(&mut seen_paths, xpath, &path, "path");
                    }
                }
                self.require_one_of(&path, entry, "access", ACCESS_LEVELS);
                self.unknown_fields(&path, entry, XAPI_ENTRY_FIELDS);
            }
        }
        self.unknown_fields("$.xapiAccess", xapi, XAPI_ACCESS_LISTS);
    }

    fn provisioning(&mut self, provisioning: &Map<String, Value>) {
        let base = "$.provisioning";
        let kind = self.require_one_of(base, provisioning, "type", PROVISIONING_TYPES);
        let https = kind == Some(PROVISIONING_HTTPS);

        let url = if https {
            let url = self.field(
                base,
                provisioning,
                "url",
                Some("when provisioning.type is \"https\""),
            );
            url.and_then(|v| self.string("$.provisioning.url", v))
        } else {
            self.optional_str(base, provisioning, "url")
        };
        if let Some(url) = url {
            let schemes = if https { HTTPS_ONLY } else { WEB_SCHEMES };
            self.url("$.provisioning.url", url, schemes);
        }

        if let Some(guide) = self.optional_str(base, provisioning, "activationGuideUrl") {
            self.url("$.provisioning.activationGuideUrl", guide, WEB_SCHEMES);
        }
        if provisioning.contains_key("url") && provisioning.contains_key("activationGuideUrl") {
            self.report(
                "$.provisioning.activationGuideUrl",
                "cannot be used together with provisioning.url",
            );
        }
        self.unknown_fields(base, provisioning, PROVISIONING_FIELDS);
    }

    // ---- helpers: each reports what is wrong and returns the value only when it is usable ----

    /// `obj[key]`; reports it missing when `required_when` is `None` (always required) or
    /// `Some(condition)` (required under that condition).
    fn field<'v>(
        &mut self,
        parent: &str,
        obj: &'v Map<String, Value>,
        key: &str,
        required_when: Option<&str>,
    ) -> Option<&'v Value> {
        let value = obj.get(key);
        if value.is_none() {
            let message = match required_when {
                None => "missing required field".to_owned(),
                Some(condition) => format!("missing field, required {condition}"),
            };
            self.report(&child(parent, key), message);
        }
        value
    }

    /// A required, non-empty string field.
    fn require_str<'v>(
        &mut self,
        parent: &str,
        obj: &'v Map<String, Value>,
        key: &str,
    ) -> Option<&'v str> {
        let value = self.field(parent, obj, key, None)?;
        self.string(&child(parent, key), value)
    }

    /// An optional field that, when present, must be a non-empty string.
    fn optional_str<'v>(
        &mut self,
        parent: &str,
        obj: &'v Map<String, Value>,
        key: &str,
    ) -> Option<&'v str> {
        let value = obj.get(key)?;
        self.string(&child(parent, key), value)
    }

    /// A required string field whose value must be one of `allowed`.
    fn require_one_of<'v>(
        &mut self,
        parent: &str,
        obj: &'v Map<String, Value>,
        key: &str,
        allowed: &[&str],
    ) -> Option<&'v str> {
        let path = child(parent, key);
        let value = self.field(parent, obj, key, None)?;
        let Some(s) = value.as_str() else {
            self.report(&path, expected("string", value));
            return None;
        };
        self.one_of(&path, s, allowed).then_some(s)
    }

    fn one_of(&mut self, path: &str, value: &str, allowed: &[&str]) -> bool {
        let ok = allowed.contains(&value);
        if !ok {
            let choices: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            self.report(
                path,
                format!("must be one of {}, found {value:?}", choices.join(", ")),
            );
        }
        ok
    }

    fn string<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        match value {
            Value::String(s) if s.trim().is_empty() => {
                self.report(path, "must not be empty");
                None
            }
            Value::String(s) => Some(s),
            other => {
                self.report(path, expected("string", other));
                None
            }
        }
    }

    fn object<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v Map<String, Value>> {
        let obj = value.as_object();
        if obj.is_none() {
            self.report(path, expected("object", value));
        }
        obj
    }

    fn array<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v [Value]> {
        let array = value.as_array().map(Vec::as_slice);
        if array.is_none() {
            self.report(path, expected("array", value));
        }
        array
    }

    /// An absolute URL with one of `schemes` and a host.
    fn url(&mut self, path: &str, text: &str, schemes: &[&str]) {
        let parsed = match url::Url::parse(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.report(
                    path,
                    format!("must be an absolute URL ({e}), found {text:?}"),
                );
                return;
            }
        };
        if !schemes.contains(&parsed.scheme()) {
            let wanted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            self.report(
                path,
                format!("must be an {} URL, found {text:?}", wanted.join(" or ")),
            );
        } else if parsed.host_str().is_none_or(str::is_empty) {
            self.report(path, format!("must name a host, found {text:?}"));
        }
    }

    /// Reports `value` if an earlier entry (recorded in `seen`) had it already.
    fn not_duplicate<'v>(
        &mut self,
        seen: &mut HashMap<&'v str, String>,
        value: &'v str,
        entry_path: &str,
        key: &str,
    ) {
        match seen.get(value) {
            Some(first) => {
                let message = format!("duplicate {key} {value:?}, already listed at {first}");
                self.report(&child(entry_path, key), message);
            }
            None => {
                seen.insert(value, entry_path.to_owned());
            }
        }
    }

    fn unknown_fields(&mut self, path: &str, obj: &Map<String, Value>, known: &[&str]) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(key))
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            self.report(&child(path, key), format!("unknown field {key:?}{hint}"));
        }
    }
}

/// `parent.key`, or `parent["key"]` when `key` is not a plain identifier.
fn child(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{parent}.{key}")
    } else {
        format!("{parent}[{}]", Value::from(key))
    }
}

/// "expected T, found U" with U the JSON type of `found`.
fn expected(wanted: &str, found: &Value) -> String {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("expected {wanted}, found {found}")
}

/// The 36-character 8-4-4-4-12 form (not braced, URN or 32-digit simple forms).
fn is_hyphenated_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// One `@` between a non-empty local part and a dotted domain, no whitespace.
fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !s.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example manifest of the Workspace Integrations guide, verbatim.
    const SEED_EXAMPLE: &str = r#"{
  "id": "ac6b6972-538e-11ec-bf63-0242ac130002",
  "manifestVersion": 1,
  "displayName": "ACME Device Integration",
  "vendor": "ACME INC.",
  "email": "example-app@example.com",
  "description": "The ACME integration will do magic with your Webex device sensor data",
  "descriptionUrl": "https://example.com/webexintegration/details",
  "tocUrl": "https://example.com/webexintegration/toc",
  "availability": "global",
  "apiAccess": [
    {
      "scope": "spark-admin:devices_read",
      "access": "required",
      "role": "id_readonly_admin"
    },
    {
      "scope": "spark-admin:workspaces_read",
      "access": "required",
      "role": "id_readonly_admin"
    },
    {
      "scope": "spark:xapi_statuses",
      "access": "required"
    },
    {
      "scope": "spark:xapi_commands",
      "access": "required"
    }
  ],
  "xapiAccess": {
    "status": [
      {
        "path": "RoomAnalytics.*",
        "access": "required"
      },
      {
        "path": "Peripherals.ConnectedDevice[*].RoomAnalytics.*",
        "access": "required"
      },
      {
        "path": "Standby.State",
        "access": "required"
      },
      {
        "path": "SystemUnit.State.NumberOfActiveCalls",
        "access": "required"
      }
    ],
    "commands": [
      {
        "path": "Message.Send",
        "access": "required"
      }
    ],
    "events": [
      {
        "path": "BootEvent",
        "access": "required"
      },
      {
        "path": "UserInterface.Message.Prompt.Response",
        "access": "required"
      }
    ]
  },
  "provisioning": {
    "type": "manual"
  }
}"#;

    const OUR_EXAMPLE: &str = include_str!("../../../config/manifest.example.json");

    fn seed() -> Value {
        serde_json::from_str(SEED_EXAMPLE).unwrap()
    }

    /// Problems of the seed example after `edit`.
    fn check_edited(edit: impl FnOnce(&mut Value)) -> Vec<ManifestProblem> {
        let mut manifest = seed();
        edit(&mut manifest);
        check(&manifest)
    }

    fn remove(manifest: &mut Value, key: &str) {
        manifest.as_object_mut().unwrap().remove(key);
    }

    /// Exactly one problem, at `path`, whose message contains `needle`.
    #[track_caller]
    fn assert_one(problems: &[ManifestProblem], path: &str, needle: &str) {
        assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
        assert_eq!(problems[0].path, path, "{problems:#?}");
        assert!(
            problems[0].message.contains(needle),
            "{:?} does not contain {needle:?}",
            problems[0].message
        );
    }

    #[test]
    fn seed_example_passes() {
        assert_eq!(check_str(SEED_EXAMPLE), vec![]);
    }

    #[test]
    fn our_example_passes() {
        assert_eq!(check_str(OUR_EXAMPLE), vec![]);
        let ours: Value = serde_json::from_str(OUR_EXAMPLE).unwrap();
        assert_eq!(ours["id"], "ac6b6972-538e-11ec-bf63-0242ac130002");
        assert_eq!(ours["provisioning"]["type"], "https");
    }

    #[test]
    fn display_is_path_colon_message() {
        let p = ManifestProblem {
            path: "$.id".into(),
            message: "missing required field".into(),
        };
        assert_eq!(p.to_string(), "$.id: missing required field");
    }

    #[test]
    fn missing_id() {
        let problems = check_edited(|m| remove(m, "id"));
        assert_one(&problems, "$.id", "missing required field");
    }

    #[test]
    fn bad_uuid() {
        for bad in [
            "not-a-uuid",
            "ac6b6972538e11ecbf630242ac130002",
            "ac6b6972-538e-11ec-bf63-0242ac13000",
        ] {
            let problems = check_edited(|m| m["id"] = json!(bad));
            assert_one(&problems, "$.id", "must be a UUID");
        }
        let problems = check_edited(|m| m["id"] = json!(42));
        assert_one(&problems, "$.id", "expected string, found number");
    }

    #[test]
    fn manifest_version_as_string() {
        let problems = check_edited(|m| m["manifestVersion"] = json!("1"));
        assert_one(
            &problems,
            "$.manifestVersion",
            "expected integer, found string",
        );
    }

    #[test]
    fn manifest_version_zero_negative_or_float() {
        let problems = check_edited(|m| m["manifestVersion"] = json!(0));
        assert_one(&problems, "$.manifestVersion", "positive integer");
        let problems = check_edited(|m| m["manifestVersion"] = json!(-3));
        assert_one(&problems, "$.manifestVersion", "positive integer");
        let problems = check_str(
            &SEED_EXAMPLE.replace("\"manifestVersion\": 1,", "\"manifestVersion\": 1.0,"),
        );
        assert_one(&problems, "$.manifestVersion", "whole number");
    }

    #[test]
    fn bad_email() {
        for bad in [
            "nobody",
            "@example.com",
            "a@b",
            "a@@example.com",
            "a b@example.com",
            "a@.com",
        ] {
            let problems = check_edited(|m| m["email"] = json!(bad));
            assert_one(&problems, "$.email", "must be an email address");
        }
    }

    #[test]
    fn empty_or_mistyped_strings() {
        let problems = check_edited(|m| m["vendor"] = json!("  "));
        assert_one(&problems, "$.vendor", "must not be empty");
        let problems = check_edited(|m| m["displayName"] = json!(["ACME"]));
        assert_one(&problems, "$.displayName", "expected string, found array");
    }

    #[test]
    fn bad_description_url() {
        let problems = check_edited(|m| m["descriptionUrl"] = json!("example.com/details"));
        assert_one(&problems, "$.descriptionUrl", "absolute URL");
        let problems = check_edited(|m| m["descriptionUrl"] = json!("ftp://example.com/details"));
        assert_one(&problems, "$.descriptionUrl", "http:// or https://");
    }

    #[test]
    fn availability_invalid() {
        let problems = check_edited(|m| m["availability"] = json!("public"));
        assert_one(
            &problems,
            "$.availability",
            r#"must be one of "global", "org_private""#,
        );
    }

    #[test]
    fn global_without_toc_url() {
        let problems = check_edited(|m| remove(m, "tocUrl"));
        assert_one(
            &problems,
            "$.tocUrl",
            r#"required when availability is "global""#,
        );
    }

    #[test]
    fn org_private_without_toc_url_passes() {
        let problems = check_edited(|m| {
            m["availability"] = json!("org_private");
            remove(m, "tocUrl");
        });
        assert_eq!(problems, vec![]);
        // but when present it must still be a URL
        let problems = check_edited(|m| {
            m["availability"] = json!("org_private");
            m["tocUrl"] = json!("terms");
        });
        assert_one(&problems, "$.tocUrl", "absolute URL");
    }

    #[test]
    fn api_access_not_an_array() {
        let problems = check_edited(|m| m["apiAccess"] = json!({"scope": "spark:xapi_statuses"}));
        assert_one(&problems, "$.apiAccess", "expected array, found object");
    }

    #[test]
    fn api_access_empty_array_passes() {
        assert_eq!(check_edited(|m| m["apiAccess"] = json!([])), vec![]);
    }

    #[test]
    fn api_access_access_invalid() {
        let problems = check_edited(|m| m["apiAccess"][2]["access"] = json!("always"));
        assert_one(
            &problems,
            "$.apiAccess[2].access",
            r#"must be one of "required", "optional""#,
        );
    }

    #[test]
    fn api_access_entry_problems() {
        let problems = check_edited(|m| m["apiAccess"][1] = json!("spark:xapi_statuses"));
        assert_one(&problems, "$.apiAccess[1]", "expected object, found string");
        let problems = check_edited(|m| remove(&mut m["apiAccess"][3], "scope"));
        assert_one(&problems, "$.apiAccess[3].scope", "missing required field");
    }

    #[test]
    fn role_invalid() {
        let problems = check_edited(|m| m["apiAccess"][0]["role"] = json!("id_superuser"));
        assert_one(&problems, "$.apiAccess[0].role", "id_device_admin");
    }

    #[test]
    fn duplicate_scope() {
        let problems =
            check_edited(|m| m["apiAccess"][3]["scope"] = json!("spark-admin:devices_read"));
        assert_one(
            &problems,
            "$.apiAccess[3].scope",
            "already listed at $.apiAccess[0]",
        );
    }

    #[test]
    fn xapi_status_path_missing() {
        let problems = check_edited(|m| remove(&mut m["xapiAccess"]["status"][1], "path"));
        assert_one(
            &problems,
            "$.xapiAccess.status[1].path",
            "missing required field",
        );
    }

    #[test]
    fn xapi_path_with_whitespace_or_duplicate() {
        let problems = check_edited(|m| m["xapiAccess"]["events"][0]["path"] = json!("Boot Event"));
        assert_one(&problems, "$.xapiAccess.events[0].path", "whitespace");
        let problems =
            check_edited(|m| m["xapiAccess"]["status"][3]["path"] = json!("Standby.State"));
        assert_one(
            &problems,
            "$.xapiAccess.status[3].path",
            "duplicate path \"Standby.State\"",
        );
        // the same path in two different lists is fine
        let problems =
            check_edited(|m| m["xapiAccess"]["commands"][0]["path"] = json!("BootEvent"));
        assert_eq!(problems, vec![]);
    }

    #[test]
    fn xapi_access_shape() {
        let problems = check_edited(|m| m["xapiAccess"] = json!([]));
        assert_one(&problems, "$.xapiAccess", "expected object, found array");
        let problems = check_edited(|m| m["xapiAccess"]["commands"] = json!("Message.Send"));
        assert_one(
            &problems,
            "$.xapiAccess.commands",
            "expected array, found string",
        );
        let problems = check_edited(|m| m["xapiAccess"]["status"][0]["access"] = json!("maybe"));
        assert_one(&problems, "$.xapiAccess.status[0].access", "must be one of");
        assert_eq!(check_edited(|m| m["xapiAccess"] = json!({})), vec![]);
    }

    #[test]
    fn xapi_access_unknown_key() {
        let problems = check_edited(|m| m["xapiAccess"]["statuses"] = json!([]));
        assert_one(
            &problems,
            "$.xapiAccess.statuses",
            "unknown field \"statuses\"",
        );
    }

    #[test]
    fn provisioning_type_invalid() {
        let problems = check_edited(|m| m["provisioning"]["type"] = json!("http"));
        assert_one(
            &problems,
            "$.provisioning.type",
            r#"must be one of "manual", "https""#,
        );
    }

    #[test]
    fn provisioning_missing() {
        let problems = check_edited(|m| remove(m, "provisioning"));
        assert_one(&problems, "$.provisioning", "missing required field");
    }

    #[test]
    fn https_without_url() {
        let problems = check_edited(|m| m["provisioning"] = json!({"type": "https"}));
        assert_one(
            &problems,
            "$.provisioning.url",
            r#"required when provisioning.type is "https""#,
        );
    }

    #[test]
    fn https_with_http_url() {
        let problems = check_edited(|m| {
            m["provisioning"] = json!({"type": "https", "url": "http://example.com/provision"});
        });
        assert_one(&problems, "$.provisioning.url", "must be an https:// URL");
    }

    #[test]
    fn manual_url_is_optional_but_must_be_a_url() {
        let problems = check_edited(|m| {
            m["provisioning"] = json!({"type": "manual", "url": "http://example.com/activate"});
        });
        assert_eq!(problems, vec![]);
        let problems =
            check_edited(|m| m["provisioning"] = json!({"type": "manual", "url": "activate"}));
        assert_one(&problems, "$.provisioning.url", "absolute URL");
    }

    #[test]
    fn activation_guide_url_together_with_url() {
        let problems = check_edited(|m| {
            m["provisioning"] = json!({
                "type": "https",
                "url": "https://example.com/provision",
                "activationGuideUrl": "https://example.com/guide"
            });
        });
        assert_one(
            &problems,
            "$.provisioning.activationGuideUrl",
            "cannot be used together with provisioning.url",
        );
        let problems = check_edited(|m| {
            m["provisioning"] =
                json!({"type": "manual", "activationGuideUrl": "https://example.com/guide"});
        });
        assert_eq!(problems, vec![]);
    }

    #[test]
    fn unknown_top_level_field() {
        let problems = check_edited(|m| m["homepage"] = json!("https://example.com"));
        assert_one(&problems, "$.homepage", "unknown field \"homepage\"");
        let problems = check_edited(|m| {
            remove(m, "tocUrl");
            m["tocURL"] = json!("https://example.com/toc");
        });
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(problems[1].path, "$.tocURL");
        assert!(problems[1].message.contains("did you mean \"tocUrl\"?"));
        let problems = check_edited(|m| m["my field"] = json!(1));
        assert_one(&problems, "$[\"my field\"]", "unknown field");
    }

    #[test]
    fn json_syntax_error() {
        let problems = check_str(
            "{\n  \"id\": \"ac6b6972-538e-11ec-bf63-0242ac130002\",\n  \"manifestVersion\": ,\n}",
        );
        assert_one(&problems, "$", "invalid JSON at line 3, column 22");
    }

    #[test]
    fn root_must_be_an_object() {
        assert_one(&check_str("[]"), "$", "expected object, found array");
        assert_one(&check(&Value::Null), "$", "expected object, found null");
    }

    #[test]
    fn multiple_problems_all_reported_in_order() {
        let problems = check_edited(|m| {
            remove(m, "id");
            m["manifestVersion"] = json!("2");
            m["email"] = json!("acme");
            m["availability"] = json!("everyone");
            m["apiAccess"][1]["role"] = json!("root");
            m["xapiAccess"]["events"][1]["access"] = json!(true);
            m["provisioning"] = json!({"type": "https", "url": "http://x.example.com", "extra": 1});
            m["zzz"] = json!(null);
        });
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.id",
                "$.manifestVersion",
                "$.email",
                "$.availability",
                "$.apiAccess[1].role",
                "$.xapiAccess.events[1].access",
                "$.provisioning.url",
                "$.provisioning.extra",
                "$.zzz",
            ],
            "{problems:#?}"
        );
        assert_eq!(problems[5].message, "expected string, found boolean");
    }

    #[test]
    fn empty_object_reports_every_required_field() {
        let problems = check(&json!({}));
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.id",
                "$.manifestVersion",
                "$.displayName",
                "$.vendor",
                "$.email",
                "$.description",
                "$.availability",
                "$.apiAccess",
                "$.xapiAccess",
                "$.provisioning",
            ]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[a-zA-Z:@./* _-]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                let keys = prop_oneof![
                    proptest::sample::select(TOP_LEVEL_FIELDS.to_vec()).prop_map(str::to_owned),
                    proptest::sample::select(
                        [
                            XAPI_ACCESS_LISTS,
                            API_ACCESS_FIELDS,
                            PROVISIONING_FIELDS,
                            XAPI_ENTRY_FIELDS
                        ]
                        .concat()
                    )
                    .prop_map(str::to_owned),
                    "[a-z ]{0,6}",
                ];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map(keys, inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn never_panics_and_paths_are_rooted(value in any_json()) {
                for problem in check(&value) {
                    prop_assert!(problem.path.starts_with('$'));
                    prop_assert!(!problem.message.is_empty());
                }
            }

            #[test]
            fn check_str_never_panics(text in ".{0,200}") {
                let _ = check_str(&text);
            }

            #[test]
            fn grafting_a_value_onto_the_seed_never_panics(key in proptest::sample::select(TOP_LEVEL_FIELDS.to_vec()), value in any_json()) {
                let mut manifest = seed();
                manifest[key] = value;
                let _ = check(&manifest);
            }
        }
    }
}
