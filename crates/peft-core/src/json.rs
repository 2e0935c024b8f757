//! Reading configuration JSON (`adapter_config.json`, `config.json`) into typed structs with an
//! error that names the key at fault.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserialises `value`, or gives the key at fault and the parser's message.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| (field_path(&e), e.into_inner().to_string()))
}

/// The key a deserialisation error is about (`rope_scaling.factor`), or `(top level)` for an
/// error about the object itself (e.g. a missing field, which the message names).
pub fn field_path<E>(e: &serde_path_to_error::Error<E>) -> String {
    match e.path().to_string() {
        p if p == "." => "(top level)".to_string(),
        p => p,
    }
}

/// Whether a JSON value holds the default of an optional feature: null, false, empty.
pub fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}
