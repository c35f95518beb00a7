//! Which device-API calls a tenant may make, decided locally before anything reaches Webex:
//! the OAuth scope each kind of call needs, and xAPI paths matched against the `xapiAccess`
//! patterns the customer's admin granted. Also the syntax checks of names, configuration keys
//! and JSON-patch operations. Pure: no I/O.
use serde_json::Value;

/// At most this many status names in one `GET /xapi/status` (a Webex limit); more are batched.
pub const MAX_STATUS_NAMES_PER_CALL: usize = 10;
/// At most this many operations in one configuration patch.
pub const MAX_PATCH_OPS: usize = 100;
/// Longest accepted xAPI path or configuration key.
const MAX_PATH_LEN: usize = 256;

/// The kinds of device-API call (also the `kind` label of their metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    Devices,
    Workspaces,
    Status,
    Command,
    ConfigGet,
    ConfigPatch,
}

impl CallKind {
    pub const ALL: [CallKind; 6] = [
        Self::Devices,
        Self::Workspaces,
        Self::Status,
        Self::Command,
        Self::ConfigGet,
        Self::ConfigPatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Devices => "devices",
            Self::Workspaces => "workspaces",
            Self::Status => "status",
            Self::Command => "command",
            Self::ConfigGet => "config_get",
            Self::ConfigPatch => "config_patch",
        }
    }

    /// The OAuth scope Webex requires for this kind of call.
    pub fn required_scope(self) -> &'static str {
        match self {
            Self::Devices | Self::ConfigGet => "spark-admin:devices_read",
            Self::Workspaces => "spark-admin:workspaces_read",
            Self::Status => "spark:xapi_statuses",
            Self::Command => "spark:xapi_commands",
            Self::ConfigPatch => "spark-admin:devices_write",
        }
    }

    /// Whether repeating the call after an unknown outcome is harmless. A command that timed
    /// out may have run on the device: it is never sent twice.
    pub fn idempotent(self) -> bool {
        !matches!(self, Self::Command)
    }
}

/// Why a call was refused locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("the tenant was not granted the scope {scope} that {kind} calls need")]
    MissingScope {
        kind: &'static str,
        scope: &'static str,
    },
    #[error("{what} {path} is outside the tenant's granted xapiAccess ({granted})")]
    NotGranted {
        what: &'static str,
        path: String,
        granted: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl AccessError {
    /// True for refusals by policy (403), false for malformed requests (400).
    pub fn is_forbidden(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// What a tenant was granted: scopes and the xAPI status/command patterns.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    scopes: Vec<String>,
    statuses: Vec<String>,
    commands: Vec<String>,
}

impl Grants {
    /// From the tenant record: `scopes` and `xapi_access`, which Webex sends as
    /// `{"commands": [...], "statuses": [...], "events": [...]}` (activation, updateApproved,
    /// appUrl `xapiAccessKeys`). Manifest-shaped lists (`status: [{"path": ...}]`) are read too.
    pub fn new(scopes: &[String], xapi_access: &Value) -> Self {
        let list = |keys: &[&str]| -> Vec<String> {
            keys.iter()
                .filter_map(|k| xapi_access.get(*k).and_then(Value::as_array))
                .flatten()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.trim().to_string()),
                    Value::Object(o) => o.get("path").and_then(Value::as_str).map(str::to_string),
                    _ => None,
                })
                .collect()
        };
        Self {
            scopes: scopes.to_vec(),
            statuses: list(&["statuses", "status"]),
            commands: list(&["commands"]),
        }
    }

    pub fn check_scope(&self, kind: CallKind) -> Result<(), AccessError> {
        let scope = kind.required_scope();
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(AccessError::MissingScope {
                kind: kind.as_str(),
                scope,
            })
        }
    }

    /// A status path (wildcards allowed) the tenant may read.
    pub fn check_status(&self, name: &str) -> Result<(), AccessError> {
        let requested = Path::parse(name, true)
            .map_err(|e| AccessError::Invalid(format!("status name {name:?}: {e}")))?;
        if self.statuses.iter().any(|g| covers(g, &requested)) {
            Ok(())
        } else {
            Err(AccessError::NotGranted {
                what: "status",
                path: name.to_string(),
                granted: self.statuses.join(", "),
            })
        }
    }

    /// A command the tenant may run (no wildcards, no indices).
    pub fn check_command(&self, name: &str) -> Result<(), AccessError> {
        let requested = Path::parse(name, false)
            .map_err(|e| AccessError::Invalid(format!("command name {name:?}: {e}")))?;
        if requested.segments.iter().any(|s| s.index.is_some()) {
            return Err(AccessError::Invalid(format!(
                "command name {name:?}: commands take no [index]"
            )));
        }
        if self.commands.iter().any(|g| covers(g, &requested)) {
            Ok(())
        } else {
            Err(AccessError::NotGranted {
                what: "command",
                path: name.to_string(),
                granted: self.commands.join(", "),
            })
        }
    }
}

/// One `Name` or `Name[3]` / `Name[*]` segment of an xAPI path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    name: String,
    /// `Some(None)` is `[*]`, `Some(Some(n))` is `[n]`.
    index: Option<Option<u32>>,
}

/// Why an xAPI path (a status, command or configuration key) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PathError {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_PATH_LEN} characters")]
    TooLong,
    #[error("wildcards are not allowed here")]
    Wildcard,
    #[error("a path needs at least one name")]
    NoName,
    #[error("segment {0:?}: unbalanced brackets")]
    Brackets(String),
    #[error("segment {0:?}: index must be a number or *")]
    Index(String),
    #[error("segment {0:?}: names are letters, digits, '_' or '-'")]
    Name(String),
}

/// A parsed xAPI path; `wildcard` when it ends with `.*` (everything below).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    segments: Vec<Segment>,
    wildcard: bool,
}

impl Path {
    fn parse(raw: &str, allow_wildcard: bool) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let mut parts: Vec<&str> = raw.split('.').collect();
        let wildcard = parts.last() == Some(&"*");
        if wildcard {
            if !allow_wildcard {
                return Err(PathError::Wildcard);
            }
            parts.pop();
        }
        let segments = parts
            .into_iter()
            .map(parse_segment)
            .collect::<Result<Vec<_>, _>>()?;
        if segments.is_empty() {
            return Err(PathError::NoName);
        }
        Ok(Self { segments, wildcard })
    }
}

fn parse_segment(s: &str) -> Result<Segment, PathError> {
    let (name, index) = match s.find('[') {
        None => (s, None),
        Some(open) => {
            let Some(inner) = s[open + 1..].strip_suffix(']') else {
                return Err(PathError::Brackets(s.to_string()));
            };
            let idx = if inner == "*" {
                None
            } else {
                Some(
                    inner
                        .parse::<u32>()
                        .map_err(|_| PathError::Index(s.to_string()))?,
                )
            };
            (&s[..open], Some(idx))
        }
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(PathError::Name(s.to_string()));
    }
    Ok(Segment {
        name: name.to_string(),
        index,
    })
}

/// Whether the granted pattern covers every path the request can reach. `RoomAnalytics.*`
/// covers `RoomAnalytics`, `RoomAnalytics.PeopleCount.Current` and `RoomAnalytics.*`;
/// `Peripherals.ConnectedDevice[*].X` covers any instance; a request's wildcard is covered
/// only by a wildcard at or above it. Names compare case-insensitively, as xAPI does.
fn covers(granted: &str, requested: &Path) -> bool {
    let Ok(g) = Path::parse(granted, true) else {
        return false;
    };
    let n = g.segments.len();
    if requested.segments.len() < n {
        return false;
    }
    let prefix_ok = g.segments.iter().zip(&requested.segments).all(|(gs, rs)| {
        gs.name.eq_ignore_ascii_case(&rs.name)
            && match (gs.index, rs.index) {
                // No index or [*] granted: every instance.
                (None | Some(None), _) => true,
                (Some(Some(a)), Some(Some(b))) => a == b,
                (Some(Some(_)), _) => false,
            }
    });
    if !prefix_ok {
        return false;
    }
    if g.wildcard {
        return true;
    }
    requested.segments.len() == n && !requested.wildcard
}

/// Validates status names and splits them into calls of at most
/// [`MAX_STATUS_NAMES_PER_CALL`], dropping repeats.
pub fn status_batches(names: &[String]) -> Result<Vec<Vec<String>>, AccessError> {
    if names.is_empty() {
        return Err(AccessError::Invalid(
            "at least one status name is needed".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| seen.insert(n.to_ascii_lowercase()))
        .collect();
    Ok(unique
        .chunks(MAX_STATUS_NAMES_PER_CALL)
        .map(<[String]>::to_vec)
        .collect())
}

/// A configuration key (`Audio.Ultrasound.MaxVolume`, `FacilityService.Service[1].Name`,
/// optionally ending in `.*` for a subtree).
pub fn check_config_key(key: &str) -> Result<(), AccessError> {
    let p = Path::parse(key, true)
        .map_err(|e| AccessError::Invalid(format!("configuration key {key:?}: {e}")))?;
    if p.segments.iter().any(|s| s.index == Some(None)) {
        return Err(AccessError::Invalid(format!(
            "configuration key {key:?}: use a concrete [n] index"
        )));
    }
    Ok(())
}

/// Suffix of a JSON-patch path: the configured value of a key.
const CONFIGURED_VALUE: &str = "/sources/configured/value";

/// Checks a configuration JSON patch: an array of `replace` (with `value`) or `remove`
/// operations on `<Key>/sources/configured/value`.
pub fn check_config_patch(ops: &Value) -> Result<Vec<Value>, AccessError> {
    let invalid = |m: String| AccessError::Invalid(m);
    let list = ops
        .as_array()
        .ok_or_else(|| invalid("a configuration patch is a JSON array of operations".into()))?;
    if list.is_empty() || list.len() > MAX_PATCH_OPS {
        return Err(invalid(format!(
            "a configuration patch has 1 to {MAX_PATCH_OPS} operations"
        )));
    }
    for (i, op) in list.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let Some(key) = path.strip_suffix(CONFIGURED_VALUE) else {
            return Err(invalid(format!(
                "operation {i}: path must be <Key>{CONFIGURED_VALUE}"
            )));
        };
        check_config_key(key).map_err(|e| invalid(format!("operation {i}: {e}")))?;
        if key.ends_with(".*") {
            return Err(invalid(format!("operation {i}: no wildcards in a patch")));
        }
        match kind {
            "replace" if op.get("value").is_some() => {}
            "replace" => return Err(invalid(format!("operation {i}: replace needs a value"))),
            "remove" => {}
            other => {
                return Err(invalid(format!(
                    "operation {i}: op {other:?} is not replace or remove"
                )));
            }
        }
    }
    Ok(list.clone())
}

/// Merges status trees of several batched calls into one.
pub fn merge_json(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge_json(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, other) => *slot = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn grants() -> Grants {
        Grants::new(
            &[
                "spark:xapi_statuses".into(),
                "spark:xapi_commands".into(),
                "spark-admin:devices_read".into(),
            ],
            &json!({
                "commands": ["Message.Send", "Bookings.*"],
                "statuses": ["RoomAnalytics.*", "Standby.State",
                             "Peripherals.ConnectedDevice[*].RoomAnalytics.*"],
                "events": ["BootEvent"],
            }),
        )
    }

    #[test]
    fn statuses_within_the_grant() {
        let g = grants();
        for ok in [
            "RoomAnalytics.PeopleCount.Current",
            "RoomAnalytics",
            "RoomAnalytics.*",
            "roomanalytics.peoplecount.current",
            "Standby.State",
            "Peripherals.ConnectedDevice[3].RoomAnalytics.AmbientTemperature",
            "Peripherals.ConnectedDevice[*].RoomAnalytics.*",
            "Peripherals.ConnectedDevice.RoomAnalytics.*",
        ] {
            assert_eq!(g.check_status(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn statuses_outside_the_grant() {
        let g = grants();
        for no in [
            "Standby",
            "Standby.*",
            "Standby.State.Extra",
            "Audio.Volume",
            "Peripherals.ConnectedDevice[1].Name",
            "Peripherals.*",
            "*",
        ] {
            let e = g.check_status(no).unwrap_err();
            assert!(e.is_forbidden() || no == "*", "{no}: {e}");
        }
    }

    #[test]
    fn commands_exact_or_under_a_wildcard() {
        let g = grants();
        assert_eq!(g.check_command("Message.Send"), Ok(()));
        assert_eq!(g.check_command("Bookings.List"), Ok(()));
        assert!(matches!(
            g.check_command("SystemUnit.Boot"),
            Err(AccessError::NotGranted { .. })
        ));
        assert!(matches!(
            g.check_command("Message.Send.Extra"),
            Err(AccessError::NotGranted { .. })
        ));
        assert!(matches!(
            g.check_command("Message.*"),
            Err(AccessError::Invalid(_))
        ));
        assert!(matches!(
            g.check_command("Message/../Send"),
            Err(AccessError::Invalid(_))
        ));
    }

    #[test]
    fn scopes_per_kind() {
        let g = grants();
        assert_eq!(g.check_scope(CallKind::Status), Ok(()));
        assert_eq!(g.check_scope(CallKind::Devices), Ok(()));
        assert_eq!(
            g.check_scope(CallKind::ConfigPatch),
            Err(AccessError::MissingScope {
                kind: "config_patch",
                scope: "spark-admin:devices_write"
            })
        );
        assert!(g.check_scope(CallKind::Workspaces).is_err());
    }

    #[test]
    fn manifest_shaped_access_is_read() {
        let g = Grants::new(
            &[],
            &json!({"status": [{"path": "Audio.Volume", "access": "required"}], "commands": []}),
        );
        assert_eq!(g.check_status("Audio.Volume"), Ok(()));
        assert!(g.check_command("Audio.Volume.Set").is_err());
    }

    #[test]
    fn batches_of_ten_without_repeats() {
        let names: Vec<String> = (0..23).map(|i| format!("A.B{i}")).collect();
        let mut with_dupes = names.clone();
        with_dupes.push("a.b3".into());
        let b = status_batches(&with_dupes).unwrap();
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 3]);
        assert!(status_batches(&[]).is_err());
    }

    #[test]
    fn config_keys_and_patches() {
        assert!(check_config_key("FacilityService.Service[1].Name").is_ok());
        assert!(check_config_key("Audio.*").is_ok());
        assert!(check_config_key("FacilityService.Service[*].Name").is_err());
        assert!(check_config_key("Audio..Volume").is_err());
        let ok = json!([
            {"op": "replace", "path": "Audio.Ultrasound.MaxVolume/sources/configured/value", "value": 50},
            {"op": "remove", "path": "FacilityService.Service[1].Name/sources/configured/value"}
        ]);
        assert_eq!(check_config_patch(&ok).unwrap().len(), 2);
        for bad in [
            json!({}),
            json!([]),
            json!([{"op": "add", "path": "A.B/sources/configured/value", "value": 1}]),
            json!([{"op": "replace", "path": "A.B/sources/configured/value"}]),
            json!([{"op": "replace", "path": "A.B", "value": 1}]),
            json!([{"op": "replace", "path": "A.*/sources/configured/value", "value": 1}]),
        ] {
            assert!(check_config_patch(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merges_trees() {
        let mut a = json!({"RoomAnalytics": {"PeopleCount": {"Current": 2}}});
        merge_json(
            &mut a,
            json!({"RoomAnalytics": {"AmbientTemperature": "21.5"}, "Standby": {"State": "On"}}),
        );
        assert_eq!(
            a,
            json!({"RoomAnalytics": {"PeopleCount": {"Current": 2}, "AmbientTemperature": "21.5"},
                   "Standby": {"State": "On"}})
        );
    }

    proptest! {
        /// A grant always covers itself and everything one level below a wildcard grant;
        /// parsing never panics on arbitrary input.
        #[test]
        fn grants_cover_themselves(segs in proptest::collection::vec("[A-Za-z][A-Za-z0-9]{0,8}", 1..5),
                                   extra in "[A-Za-z][A-Za-z0-9]{0,8}", junk in ".{0,40}") {
            let exact = segs.join(".");
            let g = Grants::new(&[], &json!({"statuses": [exact.clone(), format!("{exact}.*")], "commands": [exact.clone()]}));
            prop_assert_eq!(g.check_status(&exact), Ok(()));
            prop_assert_eq!(g.check_status(&format!("{exact}.{extra}")), Ok(()));
            prop_assert_eq!(g.check_command(&exact), Ok(()));
            let below = format!("{exact}.{extra}");
            prop_assert!(g.check_command(&below).is_err());
            let _ = g.check_status(&junk);
            let _ = g.check_command(&junk);
        }
    }
}
