//! The CEL variables bound for one message.
//!
//! Values are the text of the field: escape sequences decoded, MSH-18 (or the default)
//! character set decoded, each value cut at [`MAX_VALUE_BYTES`]. Only the variables some
//! expression references are built.
//!
//! **Invariant:** every key of `msh`, `pid`, `pv1` and `obx` that an expression references is
//! bound for every message. A segment the message lacks binds exactly what a present segment
//! with empty fields binds: each key `""`, `pid.id_list` `[]` (as `obx_list` and
//! `segments(...)` are `[]` without OBX). So `pid.id != ""` on a master-file message (no PID)
//! is false, not an evaluation error; whether the message carries a segment is
//! `size(segments("PID")) > 0`. Expressions written for the earlier binding (an absent
//! segment as an empty map, `has(pid.id)` false without PID) are warned about at load
//! ([`super::warnings`]).

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
/// Most list entries (`obx_list`, `pid.id_list`, `segments(...)`, fields of a segment in
/// `segments(...)`) a rule sees.
pub const MAX_LIST_ENTRIES: usize = 1000;

/// Name of the hidden variable that carries the message to `field()` and `segments()`. CEL
/// source cannot spell an identifier starting with `@`.
pub const MESSAGE_VARIABLE: &str = "@message";

/// Variables an expression may use.
pub const VARIABLES: &[&str] = &["msh", "pid", "pv1", "obx", "obx_list", "inbound", "dicom"];

/// One key of a map variable: its name, the field it reads, and the component (`None`: the
/// whole first repetition).
pub type KeySpec = (&'static str, usize, Option<usize>);

/// `msh`: MSH fields.
pub const MSH_KEYS: &[KeySpec] = &[
    ("msg_type", 9, Some(1)),
    ("trigger", 9, Some(2)),
    ("structure", 9, Some(3)),
    ("sending_app", 3, Some(1)),
    ("sending_fac", 4, Some(1)),
    ("receiving_app", 5, Some(1)),
    ("receiving_fac", 6, Some(1)),
    ("control_id", 10, None),
    ("version", 12, Some(1)),
    ("processing_id", 11, Some(1)),
    ("charset", 18, None),
];
/// `pid`: PID fields (`id_list` is every repetition of PID-3, component 1).
pub const PID_KEYS: &[KeySpec] = &[
    ("id", 3, Some(1)),
    ("id_list", 3, None),
    ("name", 5, None),
    ("family", 5, Some(1)),
    ("given", 5, Some(2)),
    ("dob", 7, Some(1)),
    ("sex", 8, None),
    ("ssn", 19, None),
    ("country", 11, Some(6)),
];
/// `pv1`: PV1 fields.
pub const PV1_KEYS: &[KeySpec] = &[
    ("patient_class", 2, None),
    ("assigned_location", 3, None),
    ("attending_doctor", 7, None),
    ("admit_datetime", 44, Some(1)),
];
/// `obx` and each entry of `obx_list`: OBX fields.
pub const OBX_KEYS: &[KeySpec] = &[
    ("value_type", 2, None),
    ("identifier", 3, Some(1)),
    ("value", 5, None),
    ("unit", 6, Some(1)),
    ("status", 11, None),
];

/// `dicom`: a DICOM object's identifiers (the number is the place in
/// [`crate::dicom::object::CEL_KEYS`] plus one); every key `""` for an HL7 message.
pub const DICOM_KEYS: &[KeySpec] = &[
    ("modality", 1, None),
    ("sop_class_uid", 2, None),
    ("sop_instance_uid", 3, None),
    ("study_uid", 4, None),
    ("series_uid", 5, None),
    ("accession", 6, None),
    ("patient_id", 7, None),
    ("calling_ae", 8, None),
];

/// The map variables, in the order of [`Needed::keys`].
pub const MAP_VARIABLES: &[(&str, &[KeySpec])] = &[
    ("msh", MSH_KEYS),
    ("pid", PID_KEYS),
    ("pv1", PV1_KEYS),
    ("obx", OBX_KEYS),
    ("dicom", DICOM_KEYS),
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
            dicom: None,
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
    /// A DICOM object's identifiers, when the message is an object's header view.
    pub dicom: Option<&'a crate::dicom::Identifiers>,
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
                let fields = segment.fields_up_to(MAX_LIST_ENTRIES);
                for (number, raw) in fields.into_iter().enumerate().skip(1) {
                    map.insert(
                        cel::objects::Key::Int(i64::try_from(number).unwrap_or(i64::MAX)),
                        Value::from(self.text(raw)),
                    );
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

/// Which variables to build for each message, and of the map variables which keys: only
/// what some expression references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needed {
    /// Per map variable of [`MAP_VARIABLES`], a bit per key to build (all bits when the
    /// variable is used other than by selecting a named key).
    pub keys: [u16; 5],
    /// `obx_list`
    pub obx_list: bool,
    /// `inbound`
    pub inbound: bool,
    /// `field()` or `segments()`
    pub message: bool,
}

impl Needed {
    /// Mark a variable used as a whole.
    pub fn add(&mut self, variable: &str) {
        match variable {
            "obx_list" => self.obx_list = true,
            "inbound" => self.inbound = true,
            _ => {
                if let Some(index) = MAP_VARIABLES.iter().position(|(name, _)| *name == variable) {
                    self.keys[index] = u16::MAX;
                }
            }
        }
    }

    /// Mark one key of a map variable; false when the variable has no such key.
    pub fn select(&mut self, variable: &str, key: &str) -> bool {
        let Some(index) = MAP_VARIABLES.iter().position(|(name, _)| *name == variable) else {
            return false;
        };
        match MAP_VARIABLES[index]
            .1
            .iter()
            .position(|(name, _, _)| *name == key)
        {
            Some(bit) => {
                self.keys[index] |= 1 << bit;
                true
            }
            None => false,
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

    /// A map of the keys in `mask` (bits in the order of `keys`) read from `segment`; an
    /// absent segment reads as one whose fields are all empty (every key `""`, lists `[]`).
    fn segment_map(
        &self,
        segment: Option<Segment<'a>>,
        keys: &[KeySpec],
        mask: u16,
    ) -> Box<dyn Val + 'a> {
        let last = keys.iter().map(|(_, number, _)| *number).max().unwrap_or(0);
        let fields = segment
            .map(|segment| segment.fields_up_to(last))
            .unwrap_or_default();
        let delimiters = self.message.delimiters();
        let mut entries = Vec::with_capacity(keys.len());
        for (bit, &(name, number, component)) in keys.iter().enumerate() {
            if mask & (1 << bit) == 0 {
                continue;
            }
            let raw = fields.get(number).copied().unwrap_or_default();
            if name == "id_list" {
                let ids: Vec<Box<dyn Val + 'a>> = (0..MAX_LIST_ENTRIES)
                    .map_while(|index| crate::hl7::split_piece(raw, delimiters.repetition, index))
                    .filter(|repetition| !repetition.is_empty())
                    .map(|repetition| {
                        text(self.text_cow(split(repetition, delimiters.component, 0)))
                    })
                    .collect();
                entries.push((name, Box::new(CelList::from(ids)) as Box<dyn Val + 'a>));
                continue;
            }
            let first = split(raw, delimiters.repetition, 0);
            let value = match component {
                Some(component) => split(first, delimiters.component, component - 1),
                None => first,
            };
            entries.push((name, text(self.text_cow(value))));
        }
        map(entries)
    }

    /// The `msh` map (only the keys in `mask`).
    pub fn msh(&self, mask: u16) -> Box<dyn Val + 'a> {
        self.segment_map(self.message.segments().next(), MSH_KEYS, mask)
    }

    /// The `dicom` map (only the keys in `mask`; every key `""` for an HL7 message).
    pub fn dicom(&self, mask: u16) -> Box<dyn Val + 'a> {
        let values = self.dicom.map(crate::dicom::Identifiers::cel_values);
        let entries = DICOM_KEYS
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, &(name, number, _))| {
                let value = values.map_or("", |values| values[number - 1]);
                (name, text(Cow::Borrowed(value)))
            })
            .collect();
        map(entries)
    }

    /// The `pid` map (every key `""` without a PID segment).
    pub fn pid(&self, mask: u16) -> Box<dyn Val + 'a> {
        self.segment_map(self.message.segment(b"PID", 1), PID_KEYS, mask)
    }

    /// The `pv1` map (every key `""` without a PV1 segment).
    pub fn pv1(&self, mask: u16) -> Box<dyn Val + 'a> {
        self.segment_map(self.message.segment(b"PV1", 1), PV1_KEYS, mask)
    }

    /// The first OBX as a map (every key `""` without one).
    pub fn obx(&self, mask: u16) -> Box<dyn Val + 'a> {
        self.segment_map(self.message.segment(b"OBX", 1), OBX_KEYS, mask)
    }

    /// Every OBX as a list of maps.
    pub fn obx_list(&self) -> Box<dyn Val + 'a> {
        let list: Vec<Box<dyn Val + 'a>> = self
            .message
            .segments()
            .filter(|segment| segment.name() == b"OBX")
            .take(MAX_LIST_ENTRIES)
            .map(|segment| self.segment_map(Some(segment), OBX_KEYS, u16::MAX))
            .collect();
        Box::new(CelList::from(list))
    }
}
