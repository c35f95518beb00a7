//! Device models: each simulated Room device holds realistic xAPI status values and changes
//! them like a meeting room does (people come and go, standby cycles, temperature drifts,
//! calls start and end), producing webhook/queue messages with only the changed keys.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// One device's model state.
pub struct DeviceModel {
    pub device_id: String,
    pub workspace_id: String,
    pub name: String,
    pub product: String,
    values: BTreeMap<&'static str, Value>,
    last_ts: Option<DateTime<Utc>>,
}

const STANDBY: [&str; 4] = ["On", "Halfwake", "Standby", "Off"];
const EVENTS: [&str; 3] = [
    "BootEvent",
    "UserInterface.Message.Prompt.Response",
    "Bookings.Start",
];
const PRODUCTS: [&str; 4] = [
    "Cisco Room Bar",
    "Cisco Board Pro 75",
    "Cisco Desk Pro",
    "Cisco Room Kit Pro",
];

impl DeviceModel {
    pub fn new(device_id: String, workspace_id: String, index: usize, rng: &mut StdRng) -> Self {
        let mut values = BTreeMap::new();
        values.insert("Standby.State", json!("Standby"));
        values.insert("RoomAnalytics.PeopleCount.Current", json!(0));
        values.insert("RoomAnalytics.PeoplePresence", json!("No"));
        values.insert(
            "RoomAnalytics.AmbientTemperature",
            json!(format!("{:.1}", rng.random_range(19.0..24.0))),
        );
        values.insert(
            "RoomAnalytics.RelativeHumidity",
            json!(rng.random_range(30..55)),
        );
        values.insert(
            "RoomAnalytics.Sound.Level.A",
            json!(rng.random_range(25..40)),
        );
        values.insert("SystemUnit.State.NumberOfActiveCalls", json!(0));
        values.insert("Audio.Microphones.Mute", json!("Off"));
        Self {
            device_id,
            workspace_id,
            name: format!("Room {:03}", index + 1),
            product: PRODUCTS[index % PRODUCTS.len()].to_string(),
            values,
            last_ts: None,
        }
    }

    /// The device's current status values (what `GET /xapi/status` answers from).
    pub fn status_values(&self) -> &BTreeMap<&'static str, Value> {
        &self.values
    }

    /// A timestamp strictly later than the previous one of this device.
    fn next_ts(&mut self) -> String {
        // Millisecond precision, as sent: compare what the receiver will see.
        let mut now =
            DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now);
        if let Some(last) = self.last_ts
            && now <= last
        {
            now = last + chrono::Duration::milliseconds(1);
        }
        self.last_ts = Some(now);
        now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn envelope(&mut self, app_id: &str, org_id: &str, kind: &str) -> Value {
        json!({
            "appId": app_id, "deviceId": self.device_id, "workspaceId": self.workspace_id,
            "orgId": org_id, "timestamp": self.next_ts(), "type": kind,
        })
    }

    /// Changes one to three values (or removes/restores the microphone mute) and returns a
    /// status message with only what changed; about one in ten is an events message instead.
    pub fn step(&mut self, app_id: &str, org_id: &str, rng: &mut StdRng) -> Value {
        if rng.random_ratio(1, 10) {
            let mut msg = self.envelope(app_id, org_id, "events");
            let key = EVENTS[rng.random_range(0..EVENTS.len())];
            let value = match key {
                "BootEvent" => json!({"Level": "Full"}),
                "Bookings.Start" => json!({"Id": rng.random_range(1..1000)}),
                _ => json!({"FeedbackId": "survey", "OptionId": rng.random_range(1..6)}),
            };
            msg["events"] =
                json!([{ "key": key, "value": value, "timestamp": msg["timestamp"].clone() }]);
            return msg;
        }
        let mut updated = serde_json::Map::new();
        let mut removed = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            match rng.random_range(0..6) {
                0 => {
                    let people = rng.random_range(0..9);
                    self.set(
                        &mut updated,
                        "RoomAnalytics.PeopleCount.Current",
                        json!(people),
                    );
                    self.set(
                        &mut updated,
                        "RoomAnalytics.PeoplePresence",
                        json!(if people > 0 { "Yes" } else { "No" }),
                    );
                }
                1 => {
                    let s = STANDBY[rng.random_range(0..STANDBY.len())];
                    self.set(&mut updated, "Standby.State", json!(s));
                }
                2 => {
                    let t: f64 = self.values["RoomAnalytics.AmbientTemperature"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(21.0);
                    let next = (t + rng.random_range(-0.5..0.5)).clamp(16.0, 30.0);
                    self.set(
                        &mut updated,
                        "RoomAnalytics.AmbientTemperature",
                        json!(format!("{next:.1}")),
                    );
                }
                3 => {
                    let calls = rng.random_range(0..2);
                    self.set(
                        &mut updated,
                        "SystemUnit.State.NumberOfActiveCalls",
                        json!(calls),
                    );
                }
                4 => {
                    let level = rng.random_range(25..70);
                    self.set(&mut updated, "RoomAnalytics.Sound.Level.A", json!(level));
                }
                _ => {
                    if self.values.remove("Audio.Microphones.Mute").is_some() {
                        updated.remove("Audio.Microphones.Mute");
                        removed.push(json!("Audio.Microphones.Mute"));
                    } else {
                        self.set(&mut updated, "Audio.Microphones.Mute", json!("On"));
                        removed.retain(|r| r != "Audio.Microphones.Mute");
                    }
                }
            }
        }
        let mut msg = self.envelope(app_id, org_id, "status");
        msg["changes"] = json!({ "updated": updated, "removed": removed });
        msg["isFullSync"] = json!(false);
        msg
    }

    fn set(&mut self, updated: &mut serde_json::Map<String, Value>, key: &'static str, v: Value) {
        if self.values.get(key) != Some(&v) {
            self.values.insert(key, v.clone());
            updated.insert(key.to_string(), v);
        }
    }

    /// The hourly full sync: every current status key.
    pub fn full_sync(&mut self, app_id: &str, org_id: &str) -> Value {
        let mut msg = self.envelope(app_id, org_id, "status");
        let updated: serde_json::Map<String, Value> = self
            .values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        msg["changes"] = json!({ "updated": updated, "removed": [] });
        msg["isFullSync"] = json!(true);
        msg
    }
}
