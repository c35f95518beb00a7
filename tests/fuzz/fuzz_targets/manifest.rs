//! `manifest check` on an arbitrary document: `check_str` on the text, and `check` on the
//! JSON it parses to. Besides "never panics": both agree on valid JSON, invalid JSON is one
//! problem at `$`, every problem is located under `$` and says something.
#![no_main]

use actors::protocol::manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let from_text = manifest::check_str(&text);
    for p in &from_text {
        assert!(p.path.starts_with('$'), "{p}");
        assert!(!p.message.is_empty(), "{p}");
        let _ = p.to_string();
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => assert_eq!(manifest::check(&value), from_text),
        Err(_) => {
            assert_eq!(from_text.len(), 1);
            assert_eq!(from_text[0].path, "$");
            assert!(from_text[0].message.starts_with("invalid JSON at line "));
        }
    }
    // The bytes as they are (not lossily decoded), as a reader of a file would see them.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = manifest::check(&value);
    }
});
