//! The OpenAPI 3 document, generated from [`super::ROUTES`] and the proto
//! descriptors, so that it cannot drift from what the gateway serves.

use prost_reflect::{
    EnumDescriptor, EnumValueDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Map, Value, json};

use super::{BodyTo, ROUTES, Reply, Route};

/// Whether a field can be a query parameter: a scalar or enum, or a list
/// of them.
pub fn is_query_field(field: &FieldDescriptor) -> bool {
    !field.is_map() && !matches!(field.kind(), Kind::Message(_) | Kind::Bytes)
}

/// `JOB_STATE_PENDING` of enum `JobState` is also `pending`.
pub fn short_enum_name(value: &EnumValueDescriptor) -> String {
    let mut prefix = String::new();
    for (i, c) in value.parent_enum().name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    value
        .name()
        .strip_prefix(&prefix)
        .unwrap_or(value.name())
        .to_ascii_lowercase()
}

/// The values a client may send (the zero value means "unset").
pub fn enum_names(e: &EnumDescriptor) -> Vec<String> {
    e.values()
        .filter(|v| v.number() != 0)
        .map(|v| short_enum_name(&v))
        .collect()
}

fn schema_ref(message: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", message.name()) })
}

/// The JSON schema of one value of a field's kind (proto3 JSON mapping).
fn kind_schema(kind: &Kind, schemas: &mut Map<String, Value>) -> Value {
    match kind {
        Kind::String => json!({ "type": "string" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int32", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "integer", "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0 })
        }
        Kind::Float | Kind::Double => json!({ "type": "number" }),
        Kind::Enum(e) => {
            // Full names in replies; short ones are accepted too.
            let mut names: Vec<String> = e
                .values()
                .filter(|v| v.number() != 0)
                .map(|v| v.name().to_owned())
                .collect();
            names.extend(enum_names(e));
            json!({ "type": "string", "enum": names })
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({
                "type": "string",
                "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                "description": "seconds with an s suffix, e.g. \"90s\" or \"1.5s\"",
            }),
            _ => {
                add_message(m, schemas);
                schema_ref(m)
            }
        },
    }
}

fn field_schema(field: &FieldDescriptor, schemas: &mut Map<String, Value>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are entry messages")
        };
        let value = entry.map_entry_value_field();
        return json!({
            "type": "object",
            "additionalProperties": kind_schema(&value.kind(), schemas),
        });
    }
    let one = kind_schema(&field.kind(), schemas);
    if field.is_list() {
        json!({ "type": "array", "items": one })
    } else {
        one
    }
}

/// An object schema of `message`'s fields, less `skip`.
fn object_schema(
    message: &MessageDescriptor,
    skip: &[&str],
    schemas: &mut Map<String, Value>,
) -> Value {
    let mut properties = Map::new();
    for field in message.fields() {
        if skip.contains(&field.name()) {
            continue;
        }
        properties.insert(field.name().to_owned(), field_schema(&field, schemas));
    }
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

fn add_message(message: &MessageDescriptor, schemas: &mut Map<String, Value>) {
    if schemas.contains_key(message.name()) {
        return;
    }
    // Reserve the name first: messages may refer to themselves.
    schemas.insert(message.name().to_owned(), Value::Null);
    let schema = object_schema(message, &[], schemas);
    schemas.insert(message.name().to_owned(), schema);
}

/// The error statuses every route may answer, with what they mean.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Invalid input: the problem names the field and the reason",
    ),
    ("401", "No valid bearer token"),
    ("403", "The caller's role may not do this"),
    ("404", "No such resource, or not the caller's"),
    (
        "409",
        "Already exists, or the idempotency key names another job",
    ),
    ("413", "The request body is over 1 MiB"),
    ("415", "A request body that is not application/json"),
    (
        "429",
        "Too many requests from this tenant or address, too many open streams, or pending jobs over the cap",
    ),
    ("500", "Internal error"),
    ("503", "The database is unavailable; retry shortly"),
];

fn operation(route: &Route, schemas: &mut Map<String, Value>) -> Value {
    let method = route.method_descriptor();
    let input = method.input();
    let path_fields = route.path_fields();
    let mut parameters = Vec::new();
    for name in &path_fields {
        let field = input.get_field_by_name(name).expect("path names fields");
        parameters.push(json!({
            "name": name, "in": "path", "required": true,
            "schema": field_schema(&field, schemas),
        }));
    }
    if route.body == BodyTo::None {
        for field in input.fields() {
            if path_fields.contains(&field.name()) || !is_query_field(&field) {
                continue;
            }
            let mut p = json!({
                "name": field.name(), "in": "query", "required": false,
                "schema": field_schema(&field, schemas),
            });
            if field.is_list() {
                p["style"] = "form".into();
                p["explode"] = true.into();
            }
            parameters.push(p);
        }
    }
    let mut op = json!({
        "operationId": method.name(),
        "summary": route.summary,
        "tags": [method.parent_service().name()],
        "parameters": parameters,
        "security": [{ "bearer": [] }],
    });
    let body_schema = match route.body {
        BodyTo::None => None,
        BodyTo::Whole => Some(object_schema(&input, &path_fields, schemas)),
        BodyTo::Field(name) => match input.get_field_by_name(name).map(|f| f.kind()) {
            Some(Kind::Message(m)) => {
                add_message(&m, schemas);
                Some(schema_ref(&m))
            }
            _ => None,
        },
    };
    if let Some(schema) = body_schema {
        op["requestBody"] = json!({
            "required": matches!(route.body, BodyTo::Field(_)),
            "content": { "application/json": { "schema": schema } },
        });
    }
    let output = method.output();
    add_message(&output, schemas);
    let ok = match route.reply {
        Reply::Json => json!({ "application/json": { "schema": schema_ref(&output) } }),
        Reply::JsonLines => json!({ "application/x-ndjson": { "schema": schema_ref(&output) } }),
        Reply::Text => json!({ "text/plain": { "schema": { "type": "string" } } }),
        // The document in the format asked for.
        Reply::Document => json!({
            "application/json": { "schema": { "type": "object" } },
            "text/csv": { "schema": { "type": "string" } },
            "text/html": { "schema": { "type": "string" } },
        }),
    };
    let mut responses = Map::new();
    responses.insert("200".into(), json!({ "description": "OK", "content": ok }));
    for (code, description) in ERRORS {
        responses.insert(
            (*code).into(),
            json!({
                "description": description,
                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
            }),
        );
    }
    op["responses"] = Value::Object(responses);
    op
}

/// The anonymous HTTP probes: not gRPC methods, so not in [`ROUTES`].
fn probes() -> [(&'static str, Value); 2] {
    let text = |example: &str| json!({ "text/plain": { "schema": { "type": "string", "example": example } } });
    [
        (
            crate::health::HEALTHZ,
            json!({
                "operationId": "Healthz",
                "summary": "Liveness: the process answers. No token needed.",
                "tags": ["Health"],
                "parameters": [],
                "security": [],
                "responses": {
                    "200": { "description": "Alive", "content": text("ok") },
                },
            }),
        ),
        (
            crate::health::READYZ,
            json!({
                "operationId": "Readyz",
                "summary": "Readiness: the database answers a trivial query. No token needed.",
                "tags": ["Health"],
                "parameters": [],
                "security": [],
                "responses": {
                    "200": { "description": "Ready", "content": text("ready") },
                    "503": {
                        "description": "Not ready: the database is unavailable, or the server is shutting down",
                        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
                    },
                },
            }),
        ),
    ]
}

/// The document, built once.
pub static DOCUMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(document);

/// The whole OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "grpc_code": { "type": "string" },
                "field": { "type": "string", "description": "the input field at fault" },
                "reason": { "type": "string" },
            },
        }),
    );
    let mut paths = Map::new();
    for route in ROUTES {
        let op = operation(route, &mut schemas);
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[route.method.as_str().to_ascii_lowercase()] = op;
    }
    for (path, op) in probes() {
        paths.insert(path.to_owned(), json!({ "get": op }));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "finpool API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON face of finpool.v1: the same operations, rules and answers as gRPC.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
            },
        },
        "security": [{ "bearer": [] }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_with_its_errors() {
        let doc = document();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
            for code in ["200", "400", "401", "403", "404", "429", "503"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{} lacks {code}",
                    route.path
                );
            }
        }
        // The probes are there, anonymous.
        for path in [crate::health::HEALTHZ, crate::health::READYZ] {
            let op = &doc["paths"][path]["get"];
            assert_eq!(op["security"], json!([]), "{path}");
            assert!(op["responses"]["200"].is_object(), "{path}");
        }
        assert!(doc["paths"][crate::health::READYZ]["get"]["responses"]["503"].is_object());
        // The job spec is described field by field, unknown fields refused.
        let spec = &doc["components"]["schemas"]["JobSpec"];
        assert_eq!(spec["additionalProperties"], false);
        assert!(spec["properties"]["resources"].is_object());
    }
}
