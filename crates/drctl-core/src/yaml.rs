//! YAML reading, kept behind this module.
//!
//! Why not `serde_yaml`: it reports positions only for syntax errors and stops at the first
//! error, while `drctl validate` must name file:line:column for every problem and report all
//! of them at once. So the document is read into a position-carrying tree with
//! `yaml-rust2`'s event parser, under hard limits (size, depth, alias expansion: a "billion
//! laughs" document fails fast), and the model types are deserialized from that tree with
//! serde through [`NodeDe`], which stamps every error with the position of the node it
//! came from.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::Pos;

/// Largest file drctl will read as a runbook or configuration.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Largest number of nodes a document may expand to (aliases counted at every use).
pub const MAX_NODES: usize = 100_000;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar; `plain` is false for quoted and block scalars (never null / bool / number).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Self {
        Node { pos, value }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.get_entry(key).map(|(_, v)| v)
    }

    /// The key node and value node of `key` in a mapping.
    pub fn get_entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// A copy of this mapping without the given keys.
    pub fn without_keys(&self, keys: &[&str]) -> Node {
        match &self.value {
            Value::Map(m) => Node::new(
                self.pos,
                Value::Map(
                    m.iter()
                        .filter(|(k, _)| !k.as_str().is_some_and(|k| keys.contains(&k)))
                        .cloned()
                        .collect(),
                ),
            ),
            _ => self.clone(),
        }
    }

    /// Short description of the node's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Apply `f` to every scalar in the tree (used for `${VAR}` substitution).
    pub fn map_scalars<E>(
        &mut self,
        f: &mut impl FnMut(&str, Pos) -> Result<Option<String>, E>,
        errors: &mut Vec<E>,
    ) {
        match &mut self.value {
            Value::Scalar { text, .. } => match f(text, self.pos) {
                Ok(Some(new)) => *text = new,
                Ok(None) => {}
                Err(e) => errors.push(e),
            },
            Value::Seq(items) => items.iter_mut().for_each(|n| n.map_scalars(f, errors)),
            Value::Map(entries) => entries
                .iter_mut()
                .for_each(|(_, v)| v.map_scalars(f, errors)),
            Value::Null => {}
        }
    }
}

/// A syntax or limit error while reading YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(m: &Marker) -> Pos {
    // yaml-rust2 lines are 1-based, columns 0-based.
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

fn count_nodes(n: &Node) -> usize {
    1 + match &n.value {
        Value::Seq(s) => s.iter().map(count_nodes).sum(),
        Value::Map(m) => m.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum(),
        _ => 0,
    }
}

/// Parse one YAML document into a tree. Returns `Ok(None)` for an empty document.
/// Duplicate mapping keys are reported in `warnings` as errors of their own (the later
/// value wins), so that the rest of the document can still be checked.
pub fn load(src: &str, dup_keys: &mut Vec<LoadError>) -> Result<Option<Node>, LoadError> {
    let mut parser = Parser::new_from_str(src);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut total = 0usize;
    let mut root: Option<Node> = None;
    let mut docs = 0usize;

    loop {
        let (ev, mark) = parser.next_token().map_err(|e| LoadError {
            pos: pos_of(e.marker()),
            message: format!("not valid YAML: {}", e.info()),
        })?;
        let pos = pos_of(&mark);
        let finished: Option<(Node, usize)> = match ev {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                docs += 1;
                if docs > 1 {
                    return Err(LoadError {
                        pos,
                        message: "a file holds one document; found a second `---` document".into(),
                    });
                }
                None
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => None,
            Event::Alias(id) => {
                let (node, size) = anchors.get(&id).cloned().ok_or(LoadError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                total += size;
                if total > MAX_NODES {
                    return Err(LoadError {
                        pos,
                        message: format!(
                            "document expands to more than {MAX_NODES} nodes through aliases \
                             (a YAML alias bomb?); write the values out or use fewer aliases"
                        ),
                    });
                }
                Some((node, 0))
            }
            Event::Scalar(text, style, anchor, tag) => {
                total += 1;
                let plain = style == TScalarStyle::Plain && tag.is_none();
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                Some((Node::new(pos, value), anchor))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    total += 1;
                    Some((Node::new(pos, Value::Seq(items)), anchor))
                }
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => {
                    total += 1;
                    // A block mapping's start event is marked at its first `:`; the first
                    // key is where a reader looks for it.
                    let pos = entries.first().map_or(pos, |(k, _)| k.pos.min(pos));
                    Some((Node::new(pos, Value::Map(entries)), anchor))
                }
                None => None,
            },
        };
        if stack.len() > MAX_DEPTH {
            return Err(LoadError {
                pos,
                message: format!(
                    "nesting deeper than {MAX_DEPTH} levels; runbooks never need this"
                ),
            });
        }
        if total > MAX_NODES {
            return Err(LoadError {
                pos,
                message: format!("document has more than {MAX_NODES} nodes; split it up"),
            });
        }
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor > 0 {
            let size = count_nodes(&node);
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. }) {
                        return Err(LoadError {
                            pos: node.pos,
                            message: format!(
                                "mapping keys must be plain words, found {}",
                                node.type_name()
                            ),
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => {
                    if let Some(i) = entries.iter().position(|(ek, _)| ek.as_str() == k.as_str()) {
                        dup_keys.push(LoadError {
                            pos: k.pos,
                            message: format!(
                                "duplicate key `{}` (first at line {}); remove one",
                                k.as_str().unwrap_or_default(),
                                entries[i].0.pos.line
                            ),
                        });
                        entries.remove(i);
                    }
                    entries.push((k, node));
                }
            },
        }
    }
    Ok(root.filter(|r| r.value != Value::Null))
}

// ---------------------------------------------------------------------------------------
// serde deserialization from a Node

/// An error from deserializing a node; the position is filled in by the innermost node
/// that knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub message: String,
    /// For unknown fields: the word and what was expected (for "did you mean").
    pub unknown: Option<(String, Vec<&'static str>)>,
    /// Whether the message already names the field it is about.
    pub named: bool,
}

impl DeError {
    pub fn at(pos: Pos, message: impl Into<String>) -> Self {
        DeError {
            pos: Some(pos),
            message: message.into(),
            unknown: None,
            named: false,
        }
    }
    fn or_pos(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            message: msg.to_string(),
            unknown: None,
            named: false,
        }
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            message: crate::diag::unknown_message("field", field, expected),
            unknown: Some((field.to_string(), expected.to_vec())),
            named: false,
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            message: crate::diag::unknown_message("value", variant, expected),
            unknown: None,
            named: false,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        de::Error::custom(format_args!("missing field `{field}`"))
    }
}

/// Deserialize `T` from a node.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe(node)).map_err(|e| e.or_pos(node.pos))
}

/// A serde deserializer over a borrowed [`Node`].
pub struct NodeDe<'a>(pub &'a Node);

impl NodeDe<'_> {
    fn scalar(&self) -> Result<&str, DeError> {
        match &self.0.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(DeError::at(
                self.0.pos,
                format!("expected a single value, found {}", self.0.type_name()),
            )),
        }
    }
    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DeError> {
        let s = self.scalar()?;
        s.trim()
            .parse()
            .map_err(|_| DeError::at(self.0.pos, format!("expected {what}, found `{s}`")))
    }
}

macro_rules! de_number {
    ($($method:ident => $visit:ident : $ty:ty, $what:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit(self.parse::<$ty>($what)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, plain } => {
                if *plain {
                    match text.as_str() {
                        "true" | "True" | "TRUE" => return visitor.visit_bool(true),
                        "false" | "False" | "FALSE" => return visitor.visit_bool(false),
                        _ => {}
                    }
                    if let Ok(i) = text.parse::<i64>() {
                        return visitor.visit_i64(i);
                    }
                    if let Ok(f) = text.parse::<f64>() {
                        return visitor.visit_f64(f);
                    }
                }
                visitor.visit_str(text)
            }
            Value::Seq(_) => self.deserialize_seq(visitor),
            Value::Map(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar()? {
            "true" | "True" | "TRUE" => visitor.visit_bool(true),
            "false" | "False" | "FALSE" => visitor.visit_bool(false),
            s => Err(DeError::at(
                self.0.pos,
                format!("expected true or false, found `{s}`"),
            )),
        }
    }

    de_number! {
        deserialize_i8 => visit_i8: i8, "a whole number";
        deserialize_i16 => visit_i16: i16, "a whole number";
        deserialize_i32 => visit_i32: i32, "a whole number";
        deserialize_i64 => visit_i64: i64, "a whole number";
        deserialize_u8 => visit_u8: u8, "a whole number from 0 to 255";
        deserialize_u16 => visit_u16: u16, "a whole number from 0 to 65535";
        deserialize_u32 => visit_u32: u32, "a whole number of 0 or more";
        deserialize_u64 => visit_u64: u64, "a whole number of 0 or more";
        deserialize_f32 => visit_f32: f32, "a number";
        deserialize_f64 => visit_f64: f64, "a number";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.scalar()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(DeError::at(self.0.pos, "expected nothing here")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Seq(items) => visitor.visit_seq(SeqDe { iter: items.iter() }),
            // An empty value where a list is expected is an empty list.
            Value::Null => visitor.visit_seq(SeqDe { iter: [].iter() }),
            _ => Err(DeError::at(
                self.0.pos,
                format!("expected a list, found {}", self.0.type_name()),
            )),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Map(entries) => visitor
                .visit_map(MapDe {
                    iter: entries.iter(),
                    value: None,
                })
                .map_err(|e| e.or_pos(self.0.pos)),
            Value::Null => visitor.visit_map(MapDe {
                iter: [].iter(),
                value: None,
            }),
            _ => Err(DeError::at(
                self.0.pos,
                format!("expected a mapping, found {}", self.0.type_name()),
            )),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Scalar { text, .. } => visitor
                .visit_enum(text.as_str().into_deserializer())
                .map_err(|e: DeError| e.or_pos(self.0.pos)),
            Value::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                visitor
                    .visit_enum(EnumDe { key: k, value: v })
                    .map_err(|e| e.or_pos(k.pos))
            }
            _ => Err(DeError::at(
                self.0.pos,
                format!(
                    "expected a word or a mapping with one key, found {}",
                    self.0.type_name()
                ),
            )),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(n) => seed
                .deserialize(NodeDe(n))
                .map(Some)
                .map_err(|e| e.or_pos(n.pos)),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    value: Option<(&'a Node, &'a Node)>,
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some((k, v));
                seed.deserialize(NodeDe(k))
                    .map(Some)
                    .map_err(|e| e.or_pos(k.pos))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (k, v) = self.value.take().expect("value after key");
        seed.deserialize(NodeDe(v)).map_err(|mut e| {
            // The innermost field names itself: "`timeout`: bad duration ...".
            if !e.named {
                if let Some(name) = k.as_str() {
                    e.message = format!("`{name}`: {}", e.message);
                }
                e.named = true;
            }
            e.or_pos(v.pos)
        })
    }
}

struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = VariantDe<'a>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantDe<'a>), DeError> {
        let v = seed
            .deserialize(NodeDe(self.key))
            .map_err(|e| e.or_pos(self.key.pos))?;
        Ok((v, VariantDe(self.value)))
    }
}

struct VariantDe<'a>(&'a Node);

impl<'de> de::VariantAccess<'de> for VariantDe<'_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match self.0.value {
            Value::Null => Ok(()),
            _ => Err(DeError::at(self.0.pos, "this option takes no value")),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDe(self.0))
            .map_err(|e| e.or_pos(self.0.pos))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(NodeDe(self.0), visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(NodeDe(self.0), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_ok(s: &str) -> Node {
        load(s, &mut Vec::new()).unwrap().unwrap()
    }

    #[test]
    fn positions_are_one_based() {
        let n = load_ok("a: 1\nb:\n  c: x\n");
        let (k, v) = n.get("b").unwrap().get_entry("c").unwrap();
        assert_eq!(k.pos, Pos { line: 3, col: 3 });
        assert_eq!(v.pos, Pos { line: 3, col: 6 });
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut prev = "a";
        for n in names {
            s.push_str(&format!(
                "{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = n;
        }
        let t = std::time::Instant::now();
        let err = load(&s, &mut Vec::new()).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{}", err.message);
        assert!(t.elapsed().as_secs() < 2);
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let mut d = Vec::new();
        load("a: 1\na: 2\n", &mut d).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].pos, Pos { line: 2, col: 1 });
    }
}
