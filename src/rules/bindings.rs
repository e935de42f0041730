//! The CEL variables bound for one message.
//!
//! Values are the text of the field: escape sequences decoded, MSH-18 (or the default)
//! character set decoded, each value cut at [`MAX_VALUE_BYTES`]. A segment the message lacks
//! binds an empty map. Only the variables some expression references are built.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use cel::Value;
use cel::common::types::{CelList, CelMap, CelMapKey, CelString, Type};
use cel::common::value::{StaticVal, Val};

use crate::hl7::{Charset, FieldPath, Message, Segment, unescape};

/// Longest value (in bytes) a rule sees; longer fields (an embedded PDF in OBX-5) are cut.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most list entries (`obx_list`, `pid.id_list`, `segments(...)`) a rule sees.
pub const MAX_LIST_ENTRIES: usize = 1000;

/// Name of the hidden variable that carries the message to `field()` and `segments()`. CEL
/// source cannot spell an identifier starting with `@`.
pub const MESSAGE_VARIABLE: &str = "@message";

/// Variables an expression may use.
pub const VARIABLES: &[&str] = &["msh", "pid", "pv1", "obx", "obx_list", "inbound"];

/// Keys of each map variable, for load-time checks of `msh.msg_type`-style selections.
pub const MAP_KEYS: &[(&str, &[&str])] = &[
    (
        "msh",
        &[
            "msg_type",
            "trigger",
            "structure",
            "sending_app",
            "sending_fac",
            "receiving_app",
            "receiving_fac",
            "control_id",
            "version",
            "processing_id",
            "charset",
        ],
    ),
    (
        "pid",
        &[
            "id", "id_list", "name", "family", "given", "dob", "sex", "ssn", "country",
        ],
    ),
    (
        "pv1",
        &[
            "patient_class",
            "assigned_location",
            "attending_doctor",
            "admit_datetime",
        ],
    ),
    (
        "obx",
        &["value_type", "identifier", "value", "unit", "status"],
    ),
];

/// The message as the hidden variable, for `field()` and `segments()`.
#[derive(Debug)]
pub struct MessageValue {
    /// The parsed message.
    pub message: Message,
    /// Its character set.
    pub charset: Charset,
}

static MESSAGE_TYPE: Type = Type::new_unspecified_type("mfoundry.Message");

impl Val for MessageValue {
    fn get_type(&self) -> &Type {
        &MESSAGE_TYPE
    }
    fn cel_type() -> &'static Type {
        &MESSAGE_TYPE
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(Self {
            message: self.message.clone(),
            charset: self.charset,
        })
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for MessageValue {}

impl MessageValue {
    /// The view the bindings are built from.
    pub fn view(&self) -> View<'_> {
        View {
            message: &self.message,
            charset: self.charset,
        }
    }
}

/// A message and its character set, borrowed, from which the variables are built.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The parsed message.
    pub message: &'a Message,
    /// The character set its text is decoded with.
    pub charset: Charset,
}

impl View<'_> {
    /// Decode a raw value: escapes, then the character set, then the length cap.
    pub fn text(&self, raw: &[u8]) -> String {
        let unescaped = unescape(raw, self.message.delimiters());
        let cut = &unescaped[..unescaped.len().min(MAX_VALUE_BYTES)];
        self.charset.decode(cut).into_owned()
    }

    /// Text at a field path, `""` when absent.
    pub fn path_text(&self, path: &FieldPath) -> String {
        self.message
            .get(path)
            .map(|raw| self.text(raw))
            .unwrap_or_default()
    }

    /// `segments(name)`: every segment of that name as a map from field number to the text
    /// of the whole field (every repetition and component, separators kept), plus `"name"`.
    pub fn segments(&self, name: &str) -> Value {
        let list: Vec<Value> = self
            .message
            .segments()
            .filter(|segment| segment.name() == name.as_bytes())
            .take(MAX_LIST_ENTRIES)
            .map(|segment| {
                let mut map: HashMap<cel::objects::Key, Value> = HashMap::new();
                map.insert("name".to_owned().into(), Value::from(name.to_owned()));
                let mut number = 1;
                while let Some(raw) = segment.field(number) {
                    map.insert(
                        cel::objects::Key::Int(i64::try_from(number).unwrap_or(i64::MAX)),
                        Value::from(self.text(raw)),
                    );
                    number += 1;
                }
                Value::Map(map.into())
            })
            .collect();
        Value::List(Arc::new(list))
    }
}

fn split(bytes: &[u8], separator: Option<u8>, index: usize) -> &[u8] {
    crate::hl7::split_piece(bytes, separator, index).unwrap_or_default()
}

/// Which variables to build for each message (those some expression references).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needed {
    /// `msh`
    pub msh: bool,
    /// `pid`
    pub pid: bool,
    /// `pv1`
    pub pv1: bool,
    /// `obx`
    pub obx: bool,
    /// `obx_list`
    pub obx_list: bool,
    /// `inbound`
    pub inbound: bool,
    /// `field()` or `segments()`
    pub message: bool,
}

impl Needed {
    /// Mark a referenced variable.
    pub fn add(&mut self, variable: &str) {
        match variable {
            "msh" => self.msh = true,
            "pid" => self.pid = true,
            "pv1" => self.pv1 = true,
            "obx" => self.obx = true,
            "obx_list" => self.obx_list = true,
            "inbound" => self.inbound = true,
            _ => {}
        }
    }
}

/// A boxed CEL map from static keys to values.
fn map<'a>(entries: Vec<(&'static str, Box<dyn Val + 'a>)>) -> Box<dyn Val + 'a> {
    let map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = entries
        .into_iter()
        .map(|(key, value)| (CelMapKey::from(key), value))
        .collect();
    Box::new(CelMap::from(map))
}

/// A boxed CEL string, borrowed when the text could be.
fn text(value: Cow<'_, str>) -> Box<dyn Val + '_> {
    Box::new(CelString::from(value))
}

impl<'a> View<'a> {
    /// Like [`View::text`], but borrows the message bytes when no decoding is needed (UTF-8,
    /// or ASCII in an ASCII-compatible set, without escape sequences): the common case.
    fn text_cow(&self, raw: &'a [u8]) -> Cow<'a, str> {
        let cut = |bytes: &'a [u8]| &bytes[..bytes.len().min(MAX_VALUE_BYTES)];
        if let Cow::Borrowed(plain) = unescape(raw, self.message.delimiters()) {
            let plain = cut(plain);
            let ascii_compatible = self.charset.encoding().is_ascii_compatible();
            if self.charset == Charset::UTF_8 || (ascii_compatible && plain.is_ascii()) {
                // A cut inside a multi-byte character makes this fail: decode below instead.
                if let Ok(text) = std::str::from_utf8(plain) {
                    return Cow::Borrowed(text);
                }
            }
        }
        Cow::Owned(self.text(raw))
    }

    fn at_cow(
        &self,
        segment: Option<Segment<'a>>,
        field: usize,
        component: Option<usize>,
    ) -> Cow<'a, str> {
        let Some(segment) = segment else {
            return Cow::Borrowed("");
        };
        let raw = segment.field(field).unwrap_or_default();
        let delimiters = self.message.delimiters();
        let first = split(raw, delimiters.repetition, 0);
        let value = match component {
            Some(component) => split(first, delimiters.component, component - 1),
            None => first,
        };
        self.text_cow(value)
    }

    /// The `msh` map.
    pub fn msh(&self) -> Box<dyn Val + 'a> {
        let header = self.message.segments().next();
        map(vec![
            ("msg_type", text(self.at_cow(header, 9, Some(1)))),
            ("trigger", text(self.at_cow(header, 9, Some(2)))),
            ("structure", text(self.at_cow(header, 9, Some(3)))),
            ("sending_app", text(self.at_cow(header, 3, Some(1)))),
            ("sending_fac", text(self.at_cow(header, 4, Some(1)))),
            ("receiving_app", text(self.at_cow(header, 5, Some(1)))),
            ("receiving_fac", text(self.at_cow(header, 6, Some(1)))),
            ("control_id", text(self.at_cow(header, 10, None))),
            ("version", text(self.at_cow(header, 12, Some(1)))),
            ("processing_id", text(self.at_cow(header, 11, Some(1)))),
            ("charset", text(self.at_cow(header, 18, None))),
        ])
    }

    /// The `pid` map (empty without a PID segment).
    pub fn pid(&self) -> Box<dyn Val + 'a> {
        let Some(pid) = self.message.segment(b"PID", 1) else {
            return map(Vec::new());
        };
        let delimiters = self.message.delimiters();
        let ids = pid.field(3).unwrap_or_default();
        let id_list: Vec<Box<dyn Val + 'a>> = (0..MAX_LIST_ENTRIES)
            .map_while(|index| crate::hl7::split_piece(ids, delimiters.repetition, index))
            .filter(|repetition| !repetition.is_empty())
            .map(|repetition| text(self.text_cow(split(repetition, delimiters.component, 0))))
            .collect();
        let pid = Some(pid);
        map(vec![
            ("id", text(self.at_cow(pid, 3, Some(1)))),
            ("id_list", Box::new(CelList::from(id_list))),
            ("name", text(self.at_cow(pid, 5, None))),
            ("family", text(self.at_cow(pid, 5, Some(1)))),
            ("given", text(self.at_cow(pid, 5, Some(2)))),
            ("dob", text(self.at_cow(pid, 7, Some(1)))),
            ("sex", text(self.at_cow(pid, 8, None))),
            ("ssn", text(self.at_cow(pid, 19, None))),
            ("country", text(self.at_cow(pid, 11, Some(6)))),
        ])
    }

    /// The `pv1` map (empty without a PV1 segment).
    pub fn pv1(&self) -> Box<dyn Val + 'a> {
        let Some(pv1) = self.message.segment(b"PV1", 1) else {
            return map(Vec::new());
        };
        let pv1 = Some(pv1);
        map(vec![
            ("patient_class", text(self.at_cow(pv1, 2, None))),
            ("assigned_location", text(self.at_cow(pv1, 3, None))),
            ("attending_doctor", text(self.at_cow(pv1, 7, None))),
            ("admit_datetime", text(self.at_cow(pv1, 44, Some(1)))),
        ])
    }

    fn obx_map(&self, obx: Segment<'a>) -> Box<dyn Val + 'a> {
        let obx = Some(obx);
        map(vec![
            ("value_type", text(self.at_cow(obx, 2, None))),
            ("identifier", text(self.at_cow(obx, 3, Some(1)))),
            ("value", text(self.at_cow(obx, 5, None))),
            ("unit", text(self.at_cow(obx, 6, Some(1)))),
            ("status", text(self.at_cow(obx, 11, None))),
        ])
    }

    /// The first OBX as a map (empty without one).
    pub fn obx(&self) -> Box<dyn Val + 'a> {
        match self.message.segment(b"OBX", 1) {
            Some(obx) => self.obx_map(obx),
            None => map(Vec::new()),
        }
    }

    /// Every OBX as a list of maps.
    pub fn obx_list(&self) -> Box<dyn Val + 'a> {
        let list: Vec<Box<dyn Val + 'a>> = self
            .message
            .segments()
            .filter(|segment| segment.name() == b"OBX")
            .take(MAX_LIST_ENTRIES)
            .map(|segment| self.obx_map(segment))
            .collect();
        Box::new(CelList::from(list))
    }
}
