//! HL7 v2 data types to FHIR R4 data types, after the HL7 "V2-to-FHIR" implementation
//! guide's data type maps (`mappings/datatypes`: `CX[Identifier]`, `XPN[HumanName]`,
//! `XAD[Address]`, `XTN[ContactPoint]`, `CWE[CodeableConcept]`, `DTM[dateTime]`,
//! `XCN[Practitioner]` reduced to a display). Empty parts are left out, never written as "".

use super::Field;
use super::codes;
use super::model::{
    Address, CodeableConcept, Coding, ContactPoint, HumanName, Identifier, Reference, ValueOnly,
    text,
};

/// `CX[Identifier]`: CX.1 value, CX.4 the assigning authority as `system` when it carries
/// a universal id (ISO OID or URI) else as `assigner.display`, CX.5 the identifier type
/// (table 0203). `None` without a value.
pub fn identifier(cx: &Field) -> Option<Identifier> {
    let value = text(cx.component(1))?;
    let (namespace, universal, kind) = (
        cx.subcomponent(4, 1),
        cx.subcomponent(4, 2),
        cx.subcomponent(4, 3),
    );
    let system = match kind.to_ascii_uppercase().as_str() {
        "ISO" if !universal.is_empty() => Some(format!("urn:oid:{universal}")),
        "URI" | "URL" if !universal.is_empty() => Some(universal),
        _ => None,
    };
    let type_code = cx.component(5);
    Some(Identifier {
        kind: (!type_code.is_empty()).then(|| CodeableConcept::of(codes::V2_0203, &type_code)),
        assigner: if system.is_none() && !namespace.is_empty() {
            Some(Reference::display(namespace))
        } else {
            None
        },
        system,
        value,
    })
}

/// `XPN[HumanName]`: XPN.1 family (FN.1), XPN.2 and XPN.3 given, XPN.4 suffix, XPN.5
/// prefix, XPN.7 use (table 0200, `NameType` concept map).
pub fn human_name(xpn: &Field) -> HumanName {
    HumanName {
        use_: codes::name_use(&xpn.component(7)),
        family: text(xpn.subcomponent(1, 1)),
        given: strings([xpn.component(2), xpn.component(3)]),
        prefix: strings([xpn.component(5)]),
        suffix: strings([xpn.component(4)]),
    }
}

/// `XAD[Address]`: XAD.1 (SAD.1) and XAD.2 lines, XAD.3 city, XAD.4 state, XAD.5 postal
/// code, XAD.6 country, XAD.7 use (table 0190, `AddressUse` concept map).
pub fn address(xad: &Field) -> Address {
    let (use_, kind) = codes::address_use(&xad.component(7));
    Address {
        use_,
        kind,
        line: strings([xad.subcomponent(1, 1), xad.component(2)]),
        city: text(xad.component(3)),
        state: text(xad.component(4)),
        postal_code: text(xad.component(5)),
        country: text(xad.component(6)),
    }
}

/// `XTN[ContactPoint]`: XTN.1 (or XTN.4 for e-mail, XTN.12, or XTN.6/XTN.7) as value, XTN.3
/// the system (table 0202), XTN.2 the use (table 0201). `default_use` when XTN.2 is empty
/// (PID-13 is home, PID-14 work).
pub fn contact_point(xtn: &Field, default_use: &'static str) -> Option<ContactPoint> {
    let equipment = xtn.component(3).to_ascii_uppercase();
    // No equipment type but an e-mail address: an e-mail (`XTN[ContactPoint]`).
    let system = if equipment.is_empty() && !xtn.component(4).is_empty() {
        Some("email")
    } else {
        codes::contact_system(&equipment)
    };
    let value = if system == Some("email") && !xtn.component(4).is_empty() {
        xtn.component(4)
    } else if !xtn.component(12).is_empty() {
        xtn.component(12)
    } else if !xtn.component(1).is_empty() {
        xtn.component(1)
    } else {
        [xtn.component(6), xtn.component(7)]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if value.is_empty() {
        return None;
    }
    let use_ = match codes::contact_use(&xtn.component(2)) {
        Some(code) => code,
        None if equipment == "CP" => "mobile",
        None => default_use,
    };
    Some(ContactPoint {
        system: system.unwrap_or("phone"),
        value,
        use_,
    })
}

/// `CWE[CodeableConcept]`: CWE.1–3 the first coding, CWE.4–6 the alternate, CWE.9 (or the
/// first display) the text; coding systems by table 0396.
pub fn codeable_concept(cwe: &Field) -> CodeableConcept {
    let mut coding = Vec::new();
    let mut displays = Vec::new();
    for first in [1, 4] {
        let code = cwe.component(first);
        let display = cwe.component(first + 1);
        if code.is_empty() && display.is_empty() {
            continue;
        }
        displays.push(display.clone());
        coding.push(Coding {
            system: codes::coding_system(&cwe.component(first + 2)),
            code: text(code),
            display: text(display),
        });
    }
    let original = cwe.component(9);
    let text = if original.is_empty() {
        displays.into_iter().find(|display| !display.is_empty())
    } else {
        Some(original)
    };
    CodeableConcept { coding, text }
}

/// `XCN` reduced to a reference's display (`family, given`) and its id as identifier.
pub fn practitioner_reference(xcn: &Field) -> Reference {
    let family = xcn.subcomponent(2, 1);
    let given = xcn.component(3);
    let display = match (family.is_empty(), given.is_empty()) {
        (false, false) => format!("{family}, {given}"),
        (false, true) => family,
        (true, false) => given,
        (true, true) => String::new(),
    };
    Reference {
        reference: None,
        identifier: text(xcn.component(1)).map(|value| ValueOnly { value }),
        display: text(display),
    }
}

fn strings<const N: usize>(parts: [String; N]) -> Vec<String> {
    parts.into_iter().filter(|part| !part.is_empty()).collect()
}

/// `DTM[date]`: the date part (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`), or `None` when the text is
/// not a date.
pub fn date(dtm: &str) -> Option<String> {
    let digits: String = dtm.chars().take_while(char::is_ascii_digit).collect();
    if digits.get(..4).is_some_and(|year| year == "0000") {
        return None;
    }
    match digits.len() {
        4 => Some(digits),
        6 | 7 => valid_month(&digits[4..6]).then(|| format!("{}-{}", &digits[..4], &digits[4..6])),
        n if n >= 8 => {
            let (year, month, day) = (&digits[..4], &digits[4..6], &digits[6..8]);
            let valid = chrono::NaiveDate::from_ymd_opt(
                year.parse().ok()?,
                month.parse().ok()?,
                day.parse().ok()?,
            )
            .is_some();
            valid.then(|| format!("{year}-{month}-{day}"))
        }
        _ => None,
    }
}

fn valid_month(month: &str) -> bool {
    matches!(month.parse::<u32>(), Ok(1..=12))
}

/// `DTM[dateTime]`: `YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]` to a FHIR dateTime. FHIR needs
/// an offset whenever a time is given: the value's own, else `zone` (the message's MSH-7
/// offset); with neither, the time cannot be placed and only the date is kept.
pub fn date_time(dtm: &str, zone: Option<&str>) -> Option<String> {
    let text = dtm.trim();
    let (stamp, own_zone) = match text.find(['+', '-']) {
        Some(at) => (&text[..at], Some(&text[at..])),
        None => (text, None),
    };
    let (whole, fraction) = match stamp.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (stamp, None),
    };
    if !whole.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let day = date(whole)?;
    if whole.len() < 10 {
        return Some(day);
    }
    let offset = own_zone.and_then(offset).or_else(|| zone.and_then(offset));
    let Some(offset) = offset else {
        return Some(day);
    };
    let hour = &whole[8..10];
    let minute = whole.get(10..12).unwrap_or("00");
    let second = whole.get(12..14).unwrap_or("00");
    if hour.parse::<u32>().ok()? > 23
        || minute.parse::<u32>().ok()? > 59
        || second.parse::<u32>().ok()? > 60
    {
        return None;
    }
    let fraction = fraction
        .filter(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
        .map(|digits| format!(".{digits}"))
        .unwrap_or_default();
    Some(format!("{day}T{hour}:{minute}:{second}{fraction}{offset}"))
}

/// `TM[time]`: `HHMM[SS[.S…]]` (an offset is dropped: FHIR `time` has none) to
/// `hh:mm:ss[.s…]`; `None` when it is not a time.
pub fn time(tm: &str) -> Option<String> {
    let text = tm.trim();
    let text = text.find(['+', '-']).map_or(text, |at| &text[..at]);
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if !(whole.len() == 2 || whole.len() == 4 || whole.len() == 6)
        || !whole.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    let hour = &whole[..2];
    let minute = whole.get(2..4).unwrap_or("00");
    let second = whole.get(4..6).unwrap_or("00");
    if hour.parse::<u32>().ok()? > 23
        || minute.parse::<u32>().ok()? > 59
        || second.parse::<u32>().ok()? > 59
    {
        return None;
    }
    let fraction = fraction
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
        .map(|digits| format!(".{digits}"))
        .unwrap_or_default();
    Some(format!("{hour}:{minute}:{second}{fraction}"))
}

/// `+0100` to `+01:00` (`None` when it is not an offset).
pub fn offset(zone: &str) -> Option<String> {
    let (sign, digits) = zone.split_at(1);
    if !matches!(sign, "+" | "-")
        || digits.len() != 4
        || !digits.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let (hours, minutes) = digits.split_at(2);
    let (hours, minutes_value) = (hours.parse::<u32>().ok()?, minutes.parse::<u32>().ok()?);
    if hours > 14 || minutes_value > 59 || (hours == 14 && minutes_value > 0) {
        return None;
    }
    let hours = format!("{hours:02}");
    Some(format!("{sign}{hours}:{minutes}"))
}

/// The offset a DTM carries (`20240101120000-0500` → `-0500`).
pub fn zone_of(dtm: &str) -> Option<&str> {
    let at = dtm.find(['+', '-'])?;
    Some(&dtm[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_keep_their_precision_and_need_an_offset() {
        assert_eq!(date("19620320").as_deref(), Some("1962-03-20"));
        assert_eq!(date("196203").as_deref(), Some("1962-03"));
        assert_eq!(date("19621320"), None);
        assert_eq!(date("19620230"), None);
        assert_eq!(
            date_time("20261122083000", Some("-0500")).as_deref(),
            Some("2026-11-22T08:30:00-05:00")
        );
        assert_eq!(
            date_time("202611220830+0100", None).as_deref(),
            Some("2026-11-22T08:30:00+01:00")
        );
        assert_eq!(
            date_time("20261122083000.1234-0000", None).as_deref(),
            Some("2026-11-22T08:30:00.1234-00:00")
        );
        assert_eq!(
            date_time("20261122083000", None).as_deref(),
            Some("2026-11-22")
        );
        assert_eq!(date_time("2026", Some("+0100")).as_deref(), Some("2026"));
        assert_eq!(date_time("20261122256000", Some("+0100")), None);
        assert_eq!(date_time("yesterday", None), None);
        assert_eq!(offset("+0530").as_deref(), Some("+05:30"));
        assert_eq!(offset("0530"), None);
        assert_eq!(offset("+1430"), None);
        assert_eq!(offset("+1400").as_deref(), Some("+14:00"));
        assert_eq!(date("00000101"), None);
        assert_eq!(time("0830").as_deref(), Some("08:30:00"));
        assert_eq!(time("083015.5-0500").as_deref(), Some("08:30:15.5"));
        assert_eq!(time("2560"), None);
    }
}
