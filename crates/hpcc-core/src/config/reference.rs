//! The configuration reference (`docs/CONFIG.md`), generated from the config types: their
//! JSON schemas ([`schemars`], which reads the serde attributes, so renames, defaults, tagged
//! enums and flattened tables come out as the parser sees them) rendered as one Markdown table
//! per TOML table. `cargo xtask config-reference` writes the file; a unit test fails when it
//! differs from what the types give, so a key cannot be added without its line in the
//! reference.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The files, in the reference's order: a heading and the schema of each.
fn files() -> Vec<(&'static str, &'static str, Value)> {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|settings| {
        settings.inline_subschemas = true;
    });
    let generator = || settings.clone().into_generator();
    vec![
        (
            "Client: `~/.config/hpcc/config.toml`",
            "The wrapper's and the local daemon's file (`HPCC_CONFIG` names another). \
             Top-level and `[daemon]` keys can also be set in the environment as \
             `HPCC_<KEY>` and `HPCC_DAEMON_<KEY>` (upper case), which win over the file; \
             `HPCC_REMOTE` and `HPCC_REMOTE_COMPILE` replace the `[[remote]]` and \
             `[remote_compile]` tables.",
            generator()
                .into_root_schema_for::<super::Config>()
                .to_value(),
        ),
        (
            "Scheduler: `hpcc-scheduler --config FILE`",
            "`hpcc-scheduler check-config FILE` checks a file and what it points at.",
            generator()
                .into_root_schema_for::<super::SchedulerConfig>()
                .to_value(),
        ),
        (
            "Worker: `hpcc-worker --config FILE`",
            "`hpcc-worker check-config FILE` checks a file and what it points at.",
            generator()
                .into_root_schema_for::<super::WorkerConfig>()
                .to_value(),
        ),
    ]
}

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Every key of hpcc's three files, generated from the types that parse them by \
         `cargo xtask config-reference` (a test fails when this file and the types differ). \
         All three are TOML and refuse unknown keys. Sizes are bytes or a string with a \
         binary unit (`\"512M\"`, `\"5G\"`); a key with no default and not marked required \
         is unset unless given.\n",
    );
    for (heading, intro, schema) in files() {
        let _ = write!(out, "\n## {heading}\n\n{intro}\n");
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        let walker = Walker {
            defs: &defs,
            rendered: Default::default(),
        };
        walker.table(&mut out, "", false, &schema);
    }
    out
}

struct Walker<'a> {
    defs: &'a Value,
    /// The definitions (`$ref`s) already given a section, and its path: a type that holds
    /// itself (a cluster's endpoints are remote stores) is described once and referred to.
    rendered: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Walker<'_> {
    /// `schema` with a `$ref` to this file's definitions replaced by what it names.
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|reference| reference.strip_prefix("#/$defs/"))
        {
            Some(name) => self.defs.get(name).unwrap_or(schema),
            None => schema,
        }
    }

    /// One TOML table at `path` (`""` for the top level): its keys in a Markdown table, then
    /// its sub-tables, each in a section of its own.
    fn table(&self, out: &mut String, path: &str, array: bool, schema: &Value) {
        let schema = self.resolve(schema);
        let title = match (path, array) {
            ("", _) => "Top level".to_owned(),
            (path, false) => format!("`[{path}]`"),
            (path, true) => format!("`[[{path}]]`"),
        };
        let _ = write!(out, "\n### {title}\n\n");
        if !path.is_empty() {
            if let Some(description) = description(schema) {
                let _ = write!(out, "{description}\n\n");
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let required = required(schema);
        let mut nested = Vec::new();
        if let Some(properties) = properties {
            rows(out, path, properties, &required, &mut nested, self);
        }
        // A tagged enum (`type = "…"`): the keys each variant adds.
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            for variant in variants {
                let variant = self.resolve(variant);
                let Some(properties) = variant.get("properties").and_then(Value::as_object) else {
                    continue;
                };
                let tag = properties
                    .iter()
                    .find_map(|(key, value)| Some((key, value.get("const")?.as_str()?)));
                let Some((tag_key, tag_value)) = tag else {
                    continue;
                };
                let _ = write!(out, "\n#### `{tag_key} = \"{tag_value}\"`\n\n");
                if let Some(description) = description(variant) {
                    let _ = write!(out, "{description}\n\n");
                }
                let mut rest = properties.clone();
                rest.remove(tag_key);
                rows(out, path, &rest, &required_of(variant), &mut nested, self);
            }
        }
        for (key, array, schema) in nested {
            let sub = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            self.table(out, &sub, array, &schema);
        }
    }

    /// The path of the section already describing the definition `schema` (or its items)
    /// refers to.
    fn described(&self, schema: &Value) -> Option<String> {
        let reference = schema
            .get("$ref")
            .or_else(|| schema.get("items")?.get("$ref"))?
            .as_str()?
            .strip_prefix("#/$defs/")?;
        self.rendered.borrow().get(reference).cloned()
    }

    /// Notes that the section at `path` describes what `schema` refers to, if anything.
    fn describing(&self, schema: &Value, path: &str) {
        let reference = schema
            .get("$ref")
            .or_else(|| schema.get("items").and_then(|items| items.get("$ref")))
            .and_then(Value::as_str)
            .and_then(|reference| reference.strip_prefix("#/$defs/"));
        if let Some(name) = reference {
            self.rendered
                .borrow_mut()
                .entry(name.to_owned())
                .or_insert_with(|| path.to_owned());
        }
    }

    /// The object a key holds, if it is a table (or a list of tables), resolved.
    fn sub_table(&self, schema: &Value) -> Option<(bool, Value)> {
        let schema = self.resolve(schema);
        if is_object(schema) {
            return Some((false, schema.clone()));
        }
        let items = self.resolve(schema.get("items")?);
        is_object(items).then(|| (true, items.clone()))
    }
}

fn is_object(schema: &Value) -> bool {
    schema.get("properties").is_some()
        || schema
            .get("oneOf")
            .and_then(Value::as_array)
            .is_some_and(|variants| variants.iter().any(|v| v.get("properties").is_some()))
}

/// Writes the Markdown table of `properties`; tables among them go to `nested` instead, with
/// a row saying where they are.
fn rows(
    out: &mut String,
    path: &str,
    properties: &Map<String, Value>,
    required: &[String],
    nested: &mut Vec<(String, bool, Value)>,
    walker: &Walker<'_>,
) {
    out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (key, schema) in properties {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Some(section) = walker.described(schema) {
            let _ = writeln!(
                out,
                "| `{key}` | tables, each with the keys of `[[{section}]]` |  | {} |",
                description(schema).unwrap_or_default()
            );
            continue;
        }
        walker.describing(schema, &full);
        let meaning = description(schema)
            .or_else(|| description(walker.resolve(schema)))
            .unwrap_or_default();
        let schema = walker.resolve(schema);
        let (kind, default) = match walker.sub_table(schema) {
            Some((array, table)) => {
                let kind = if array {
                    format!("tables, `[[{full}]]` below")
                } else {
                    format!("table, `[{full}]` below")
                };
                nested.push((key.clone(), array, table));
                (kind, "".to_owned())
            }
            None => (type_name(schema), default_of(schema)),
        };
        let default = if required.iter().any(|name| name == key) {
            "required".to_owned()
        } else {
            default
        };
        let _ = writeln!(out, "| `{key}` | {kind} | {default} | {meaning} |");
    }
}

fn required(schema: &Value) -> Vec<String> {
    required_of(schema)
}

fn required_of(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A schema's description on one line, with table pipes escaped.
fn description(schema: &Value) -> Option<String> {
    let text = schema.get("description")?.as_str()?;
    Some(
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            // Rustdoc links read as plain code here.
            .replace("[`", "`")
            .replace("`]", "`")
            .replace('|', "\\|"),
    )
}

/// A key's type in TOML's words.
fn type_name(schema: &Value) -> String {
    if schema.get("format").and_then(Value::as_str) == Some("byte-size") {
        return "size".to_owned();
    }
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = variants
            .iter()
            .filter_map(|variant| variant.get("const").and_then(Value::as_str))
            .map(|name| format!("`\"{name}\"`"))
            .collect();
        if !names.is_empty() {
            return names.join(" \\| ");
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(name)) => vec![name.as_str()],
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut words: Vec<String> = types
        .iter()
        .filter(|name| **name != "null")
        .map(|name| match *name {
            "array" => {
                let item = schema
                    .get("items")
                    .map(type_name)
                    .unwrap_or_else(|| "value".into());
                format!("list of {item}")
            }
            "boolean" => "bool".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    if words.is_empty() {
        words.push("value".into());
    }
    words.join(" or ")
}

/// A key's default as it would be written in TOML; empty when it has none.
fn default_of(schema: &Value) -> String {
    match schema.get("default") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(items)) if items.is_empty() => "`[]`".to_owned(),
        Some(Value::String(text)) if text.is_empty() => "`\"\"`".to_owned(),
        Some(value) => format!("`{value}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file in the repository is what the types give: a key added to a config type
    /// without `cargo xtask config-reference` fails here.
    #[test]
    fn the_reference_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == markdown(),
            "docs/CONFIG.md is not what the config types give: run `cargo xtask config-reference`"
        );
    }

    /// Every key the parsers accept has a row, nested ones included, and rows carry their
    /// defaults: checked against keys picked from each file and table.
    #[test]
    fn every_kind_of_key_has_its_row() {
        let text = markdown();
        for row in [
            "| `max_size` | size | `\"5G\"` |",
            "| `transport` | `\"unix\"` \\| `\"tcp\"` | `\"unix\"` |",
            "| `tenant_id` | string | required |",
            "| `routing_key` | string | required |",
            "| `bucket` | string | required |",
            "| `cluster_endpoints` | list of string |",
            "| `pids_max` | integer |",
        ] {
            assert!(text.contains(row), "no row starting {row:?}");
        }
        for section in [
            "### `[daemon]`",
            "### `[[remote]]`",
            "#### `type = \"redis\"`",
            "### `[remote_compile]`",
            "### `[[tenants]]`",
            "### `[[sharing_groups]]`",
            "### `[cache]`",
            "### `[[cache.remote]]`",
            "### `[vm.jail]`",
            "### `[vm.jailer]`",
        ] {
            assert!(text.contains(section), "no section {section:?}");
        }
    }

    /// Each description is a doc comment of the type: none is missing.
    #[test]
    fn every_key_is_described() {
        for line in markdown().lines().filter(|line| line.starts_with("| `")) {
            assert!(
                !line.ends_with("|  |"),
                "a key without a description: {line}"
            );
        }
    }
}
