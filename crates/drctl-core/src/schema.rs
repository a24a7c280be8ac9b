//! JSON Schemas of runbooks and drctl.yml, generated from the parser's own types.
//!
//! Steps are internally tagged (`kind:`) with common fields beside the kind's own; each
//! kind's schema is its payload struct's schema merged with the common fields, so that
//! `additionalProperties: false` holds per kind, as the parser does.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::config::{Config, Target, TARGET_TYPES};
use crate::runbook::{self, Check, CHECK_TYPES, STEP_KINDS};

fn gen() -> SchemaGenerator {
    schemars::generate::SchemaSettings::draft07().into_generator()
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Merge a payload schema with extra properties and a tag, forbidding anything else.
fn tagged_variant(
    g: &mut SchemaGenerator,
    payload: Value,
    tag: &str,
    name: &str,
    extra: &Map<String, Value>,
    extra_required: &[&str],
) -> Value {
    let _ = g;
    let mut props = obj(payload.get("properties").unwrap_or(&json!({})));
    for (k, v) in extra {
        props.insert(k.clone(), v.clone());
    }
    props.insert(tag.to_string(), json!({ "const": name }));
    let mut required: Vec<Value> = payload
        .get("required")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    required.push(json!(tag));
    required.extend(extra_required.iter().map(|r| json!(r)));
    let mut out = json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    });
    if let Some(d) = payload.get("description") {
        out["description"] = d.clone();
    }
    out
}

fn sub<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

/// Inline a struct's schema (not a $ref) so that its properties can be merged.
fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    T::json_schema(g).to_value()
}

fn check_schema(g: &mut SchemaGenerator) -> Value {
    let variants: Vec<Value> = CHECK_TYPES
        .iter()
        .map(|t| {
            let payload = match *t {
                "docker" => inline::<runbook::DockerCheck>(g),
                "tcp" => inline::<runbook::TcpCheck>(g),
                "http" => inline::<runbook::HttpCheck>(g),
                "postgres" => inline::<runbook::PostgresCheck>(g),
                "redis" => inline::<runbook::RedisCheck>(g),
                "qdrant" => inline::<runbook::QdrantCheck>(g),
                _ => inline::<runbook::CommandCheck>(g),
            };
            tagged_variant(g, payload, "type", t, &Map::new(), &[])
        })
        .collect();
    let _ = std::marker::PhantomData::<Check>;
    json!({ "oneOf": variants })
}

fn step_schema(g: &mut SchemaGenerator, defs: &mut Map<String, Value>) -> Value {
    let mut common = Map::new();
    common.insert(
        "id".into(),
        json!({"type": "string", "description": "Unique step id."}),
    );
    common.insert("name".into(), json!({"type": "string"}));
    common.insert("needs".into(), json!({"type": "array", "items": {"type": "string"}, "description": "Steps this one waits for; without it, the step written before."}));
    common.insert("timeout".into(), sub::<crate::duration::Dur>(g));
    common.insert("retry".into(), sub::<runbook::Retry>(g));
    common.insert("on_failure".into(), sub::<runbook::OnFailure>(g));
    defs.insert("Check".into(), check_schema(g));
    let variants: Vec<Value> = STEP_KINDS
        .iter()
        .map(|k| {
            let payload = match *k {
                "stop" | "start" | "restart" => inline::<runbook::ServicesStep>(g),
                "up" => inline::<runbook::UpStep>(g),
                "down" => inline::<runbook::DownStep>(g),
                "health" => json!({
                    "properties": {
                        "check": {"$ref": "#/definitions/Check"},
                        "interval": sub::<crate::duration::Dur>(g),
                    },
                    "required": ["check"],
                }),
                "backup" => inline::<runbook::BackupStep>(g),
                "restore" => inline::<runbook::RestoreStep>(g),
                "verify" => inline::<runbook::VerifyStep>(g),
                "exec" => inline::<runbook::ExecStep>(g),
                "notify" => inline::<runbook::NotifyStep>(g),
                "confirm" => inline::<runbook::ConfirmStep>(g),
                _ => json!({
                    "properties": {"steps": {"type": "array", "items": {"$ref": "#/definitions/Step"}}},
                    "required": ["steps"],
                }),
            };
            tagged_variant(g, payload, "kind", k, &common, &["id"])
        })
        .collect();
    json!({ "oneOf": variants })
}

fn finish(mut root: Value, mut g: SchemaGenerator, extra_defs: Map<String, Value>) -> Value {
    let mut defs: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    defs.extend(extra_defs);
    root["definitions"] = Value::Object(defs);
    root
}

/// The JSON Schema of a runbook file.
pub fn runbook_schema() -> Value {
    let mut g = gen();
    let mut defs = Map::new();
    let step = step_schema(&mut g, &mut defs);
    defs.insert("Step".into(), step);
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "drctl runbook (version 1)",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "steps"],
        "properties": {
            "version": {"const": 1},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "objectives": sub::<runbook::Objectives>(&mut g),
            "vars": {"type": "object", "additionalProperties": {"type": "string"}},
            "defaults": sub::<runbook::Defaults>(&mut g),
            "backup": sub::<runbook::Selection>(&mut g),
            "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/definitions/Step"}},
            "rollback": {"type": "array", "items": {"$ref": "#/definitions/Step"}},
        },
    });
    finish(root, g, defs)
}

/// The JSON Schema of drctl.yml.
pub fn config_schema() -> Value {
    let mut g = gen();
    let targets: Vec<Value> = TARGET_TYPES
        .iter()
        .map(|t| {
            let payload = match *t {
                "volume" => inline::<crate::config::VolumeTarget>(&mut g),
                "postgres" => inline::<crate::config::PostgresTarget>(&mut g),
                "redis" => inline::<crate::config::RedisTarget>(&mut g),
                "qdrant" => inline::<crate::config::QdrantTarget>(&mut g),
                _ => inline::<crate::config::PathTarget>(&mut g),
            };
            tagged_variant(&mut g, payload, "type", t, &Map::new(), &[])
        })
        .collect();
    let _ = std::marker::PhantomData::<(Target, Config)>;
    let mut defs = Map::new();
    defs.insert("Target".into(), json!({ "oneOf": targets }));
    let root = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "drctl.yml (version 1)",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "stack", "repository"],
        "properties": {
            "version": {"const": 1},
            "stack": sub::<crate::config::Stack>(&mut g),
            "repository": sub::<crate::config::Repository>(&mut g),
            "runbooks_dir": {"type": "string"},
            "state_dir": {"type": "string"},
            "objectives": sub::<runbook::Objectives>(&mut g),
            "targets": {"type": "object", "additionalProperties": {"$ref": "#/definitions/Target"}},
            "retention": sub::<crate::config::Retention>(&mut g),
            "schedules": {"type": "array", "items": sub::<crate::config::Schedule>(&mut g)},
            "notifications": {"type": "array", "items": sub::<crate::config::Notification>(&mut g)},
        },
    });
    finish(root, g, defs)
}
