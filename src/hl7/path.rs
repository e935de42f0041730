//! Field paths: `MSH-9.1`, `PID-3[2].1`, `OBX[3]-5`, `PID-5.1.2`, `ZPI-1`.
//!
//! Grammar: `SEG[n]-F[r].C.S` where `SEG` is a segment name of three upper-case letters or
//! digits, `[n]` picks the n-th segment of that name (default 1), `F` is the field number,
//! `[r]` the repetition (default 1), `.C` the component and `.S` the subcomponent. Every index
//! is 1-based. Without `.C` the path names the whole repetition, separators included.
//!
//! Transforms take [`PathPattern`]s: the same grammar plus `[*]` for every occurrence or
//! repetition, and a segment alone (`NTE`, `NTE[*]`) for whole segments.

use std::fmt;
use std::str::FromStr;

/// A parsed field path; build one with [`str::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath {
    /// Segment name, e.g. `PID`.
    pub segment: [u8; 3],
    /// 1-based occurrence of the segment within the message.
    pub segment_index: usize,
    /// 1-based field number (`MSH-1` is the field separator itself).
    pub field: usize,
    /// 1-based repetition of the field.
    pub repetition: usize,
    /// 1-based component, or `None` for the whole repetition.
    pub component: Option<usize>,
    /// 1-based subcomponent, or `None` for the whole component.
    pub subcomponent: Option<usize>,
}

/// Why a string is not a field path. The message quotes the path, never message data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "field path {path:?} is invalid: {reason}; expected a form like PID-3, PID-3[2].1, OBX[3]-5 or PID-5.1.2 (numbers from 1 to 99999)"
)]
pub struct PathError {
    path: String,
    reason: &'static str,
}

impl FromStr for FieldPath {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| PathError {
            path: text.to_owned(),
            reason,
        };
        let pattern = parse(text, false)?;
        let (Pick::One(segment_index), Some(target)) = (pattern.segment_index, pattern.field)
        else {
            return Err(fail(
                "a '-' and a field number must follow the segment name",
            ));
        };
        let Pick::One(repetition) = target.repetition else {
            return Err(fail(
                "[*] picks every repetition, which only transforms take",
            ));
        };
        Ok(Self {
            segment: pattern.segment,
            segment_index,
            field: target.field,
            repetition,
            component: target.component,
            subcomponent: target.subcomponent,
        })
    }
}

/// Which occurrences of a segment or repetitions of a field a [`PathPattern`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pick {
    /// The n-th (1-based).
    One(usize),
    /// Every one there is (`[*]`).
    Every,
}

impl Pick {
    /// The 1-based positions picked among `count`.
    pub fn positions(self, count: usize) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::One(index) => index..=index,
            Self::Every => 1..=count,
        }
    }
}

/// The part of a [`PathPattern`] below the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPattern {
    /// 1-based field number.
    pub field: usize,
    /// The repetitions named.
    pub repetition: Pick,
    /// 1-based component, or `None` for the whole repetition.
    pub component: Option<usize>,
    /// 1-based subcomponent, or `None` for the whole component.
    pub subcomponent: Option<usize>,
}

/// A path that may name many places (transforms): `OBX[*]-3.1` (every OBX), `PID-3[*].4`
/// (every repetition), or a whole segment (`NTE`, `NTE[2]`, `NTE[*]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathPattern {
    /// Segment name.
    pub segment: [u8; 3],
    /// The occurrences named.
    pub segment_index: Pick,
    /// The field and below, or `None` for the whole segment.
    pub field: Option<FieldPattern>,
}

impl PathPattern {
    /// The one place this pattern names, when it names exactly one field value.
    pub fn single(&self) -> Option<FieldPath> {
        match (self.segment_index, self.field) {
            (
                Pick::One(segment_index),
                Some(FieldPattern {
                    field,
                    repetition: Pick::One(repetition),
                    component,
                    subcomponent,
                }),
            ) => Some(FieldPath {
                segment: self.segment,
                segment_index,
                field,
                repetition,
                component,
                subcomponent,
            }),
            _ => None,
        }
    }
}

impl FromStr for PathPattern {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text, true)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pick = |formatter: &mut fmt::Formatter<'_>, pick: Pick| match pick {
            Pick::One(1) => Ok(()),
            Pick::One(index) => write!(formatter, "[{index}]"),
            Pick::Every => formatter.write_str("[*]"),
        };
        formatter.write_str(&String::from_utf8_lossy(&self.segment))?;
        pick(formatter, self.segment_index)?;
        if let Some(target) = self.field {
            write!(formatter, "-{}", target.field)?;
            pick(formatter, target.repetition)?;
            for part in [target.component, target.subcomponent]
                .into_iter()
                .flatten()
            {
                write!(formatter, ".{part}")?;
            }
        }
        Ok(())
    }
}

/// The grammar of both path kinds; `[*]` and a segment alone only when `patterns`.
fn parse(text: &str, patterns: bool) -> Result<PathPattern, PathError> {
    let fail = |reason| PathError {
        path: text.to_owned(),
        reason,
    };
    let bytes = text.as_bytes();
    if bytes.len() < 3
        || !bytes[..3]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(fail("it must start with a three-character segment name"));
    }
    let segment = [bytes[0], bytes[1], bytes[2]];
    let mut rest = &text[3..];
    let mut segment_index = Pick::One(1);
    if let Some(after) = rest.strip_prefix('[') {
        let (index, remaining) = take_index(after, patterns)
            .ok_or_else(|| fail("the segment occurrence must be a positive number in brackets"))?;
        segment_index = index;
        rest = remaining;
    }
    if patterns && rest.is_empty() {
        return Ok(PathPattern {
            segment,
            segment_index,
            field: None,
        });
    }
    let Some(after_dash) = rest.strip_prefix('-') else {
        return Err(fail(
            "a '-' and a field number must follow the segment name",
        ));
    };
    let digits = after_dash
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after_dash.len());
    let field = parse_positive(&after_dash[..digits])
        .ok_or_else(|| fail("the field number must be a positive number"))?;
    rest = &after_dash[digits..];
    let mut repetition = Pick::One(1);
    if let Some(after) = rest.strip_prefix('[') {
        let (index, remaining) = take_index(after, patterns)
            .ok_or_else(|| fail("the repetition must be a positive number in brackets"))?;
        repetition = index;
        rest = remaining;
    }
    let mut parts = Vec::new();
    while let Some(after_dot) = rest.strip_prefix('.') {
        let digits = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        let value = parse_positive(&after_dot[..digits])
            .ok_or_else(|| fail("components and subcomponents must be positive numbers"))?;
        parts.push(value);
        rest = &after_dot[digits..];
    }
    if !rest.is_empty() {
        return Err(fail("unexpected characters at the end"));
    }
    if parts.len() > 2 {
        return Err(fail(
            "at most a component and a subcomponent may follow the field",
        ));
    }
    Ok(PathPattern {
        segment,
        segment_index,
        field: Some(FieldPattern {
            field,
            repetition,
            component: parts.first().copied(),
            subcomponent: parts.get(1).copied(),
        }),
    })
}

impl fmt::Display for FieldPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&String::from_utf8_lossy(&self.segment))?;
        if self.segment_index != 1 {
            write!(formatter, "[{}]", self.segment_index)?;
        }
        write!(formatter, "-{}", self.field)?;
        if self.repetition != 1 {
            write!(formatter, "[{}]", self.repetition)?;
        }
        if let Some(component) = self.component {
            write!(formatter, ".{component}")?;
        }
        if let Some(subcomponent) = self.subcomponent {
            write!(formatter, ".{subcomponent}")?;
        }
        Ok(())
    }
}

/// The largest index a path may hold (a field, repetition, component or occurrence): far
/// beyond any real message, and small enough that writing at it stays cheap.
pub const MAX_INDEX: usize = 99_999;

fn parse_positive(digits: &str) -> Option<usize> {
    match digits.parse::<usize>() {
        Ok(0) | Err(_) => None,
        Ok(value) if value > MAX_INDEX => None,
        Ok(value) => Some(value),
    }
}

/// Parse `N]` (or `*]` when `every` is allowed) and return it and the text after the bracket.
fn take_index(text: &str, every: bool) -> Option<(Pick, &str)> {
    let close = text.find(']')?;
    let pick = match &text[..close] {
        "*" if every => Pick::Every,
        digits => Pick::One(parse_positive(digits)?),
    };
    Some((pick, &text[close + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> FieldPath {
        text.parse().expect("valid path")
    }

    #[test]
    fn parses_every_documented_form() {
        let simple = path("MSH-9.1");
        assert_eq!(&simple.segment, b"MSH");
        assert_eq!(
            (simple.segment_index, simple.field, simple.repetition),
            (1, 9, 1)
        );
        assert_eq!((simple.component, simple.subcomponent), (Some(1), None));

        let repeated = path("PID-3[2].1");
        assert_eq!((repeated.field, repeated.repetition), (3, 2));
        assert_eq!(repeated.component, Some(1));

        let occurrence = path("OBX[3]-5");
        assert_eq!((occurrence.segment_index, occurrence.field), (3, 5));
        assert_eq!(occurrence.component, None);

        let sub = path("PID-5.1.2");
        assert_eq!((sub.component, sub.subcomponent), (Some(1), Some(2)));
        assert_eq!(&path("ZP1-1").segment, b"ZP1");
    }

    #[test]
    fn display_round_trips() {
        for text in ["MSH-9.1", "PID-3[2].1", "OBX[3]-5", "PID-5.1.2", "ZPI-12"] {
            assert_eq!(path(text).to_string(), text);
        }
    }

    #[test]
    fn patterns_take_every_occurrence_and_whole_segments() {
        let every: PathPattern = "OBX[*]-3[*].1".parse().expect("pattern");
        assert_eq!(every.segment_index, Pick::Every);
        let target = every.field.expect("a field");
        assert_eq!((target.field, target.repetition), (3, Pick::Every));
        assert_eq!(target.component, Some(1));
        assert_eq!(every.single(), None);
        let segment: PathPattern = "NTE[2]".parse().expect("pattern");
        assert_eq!((segment.segment_index, segment.field), (Pick::One(2), None));
        let one: PathPattern = "PID-3[2].1".parse().expect("pattern");
        assert_eq!(one.single(), Some(path("PID-3[2].1")));
        for text in [
            "OBX[*]-3.1",
            "NTE",
            "NTE[*]",
            "PID-3[*]",
            "PID-5.1.2",
            "OBX[2]-5",
        ] {
            assert_eq!(text.parse::<PathPattern>().expect(text).to_string(), text);
        }
        for only_patterns in ["OBX[*]-3", "PID-3[*]", "NTE"] {
            assert!(
                only_patterns.parse::<FieldPath>().is_err(),
                "{only_patterns}"
            );
        }
        for bad in ["OBX[**]-3", "OBX[*", "PID-3[*]x", "nte"] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_paths_with_reason() {
        for bad in [
            "",
            "PI-3",
            "pid-3",
            "PID",
            "PID-",
            "PID-0",
            "PID-3[0]",
            "PID-3[x]",
            "PID-3.",
            "PID-3.1.2.3",
            "PID-3x",
            "OBX[-5",
            "PID-100000",
            "PID-18446744073709551616",
        ] {
            let error = bad.parse::<FieldPath>().expect_err(bad);
            assert!(error.to_string().contains("is invalid"), "{error}");
        }
    }
}
