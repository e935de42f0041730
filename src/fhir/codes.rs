//! Code maps of the V2-to-FHIR guide (`mappings/codesystems`, its ConceptMaps), and the
//! coding-system URIs of HL7 table 0396.

/// HL7 table 0203 (identifier type).
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// HL7 table 0004 (patient class), for classes the v3 ActCode map does not cover.
pub const V2_0004: &str = "http://terminology.hl7.org/CodeSystem/v2-0004";
/// The v3 ActCode system (Encounter.class).
pub const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// The v3 NullFlavor system.
pub const V3_NULL_FLAVOR: &str = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor";
/// The v3 ObservationInterpretation system (OBX-8, table 0078).
pub const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// The v3 ParticipationType system (Encounter.participant.type).
pub const V3_PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// UCUM.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Table 0001 → AdministrativeGender (ConceptMap `table-0001-to-administrative-gender`).
pub fn gender(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "M" => Some("male"),
        "F" => Some("female"),
        "O" | "A" | "N" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    }
}

/// Table 0004 → Encounter.class, v3 ActCode (ConceptMap `table-0004-to-v3-act-code`):
/// the system and code.
pub fn encounter_class(code: &str) -> (&'static str, String) {
    let mapped = match code.trim().to_ascii_uppercase().as_str() {
        "I" => Some("IMP"),
        "O" => Some("AMB"),
        "E" => Some("EMER"),
        "P" => Some("PRENC"),
        "B" => Some("IMP"),
        "R" => Some("AMB"),
        _ => None,
    };
    match (mapped, code.trim()) {
        (Some(mapped), _) => (V3_ACT_CODE, mapped.to_owned()),
        (None, "") => (V3_NULL_FLAVOR, "UNK".to_owned()),
        (None, other) => (V2_0004, other.to_owned()),
    }
}

/// Table 0085 (observation result status) → ObservationStatus.
pub fn observation_status(code: &str) -> &'static str {
    match code.trim().to_ascii_uppercase().as_str() {
        "F" | "U" => "final",
        "P" | "S" => "preliminary",
        "C" => "corrected",
        "X" => "cancelled",
        "D" | "W" => "entered-in-error",
        "I" | "R" => "registered",
        "A" => "amended",
        _ => "unknown",
    }
}

/// Table 0123 (result status) → DiagnosticReportStatus.
pub fn report_status(code: &str) -> &'static str {
    match code.trim().to_ascii_uppercase().as_str() {
        "F" => "final",
        "P" => "preliminary",
        "C" => "corrected",
        "X" => "cancelled",
        "A" | "R" => "partial",
        "I" | "O" | "S" => "registered",
        _ => "unknown",
    }
}

/// Table 0322 (completion status) → Immunization.status.
pub fn immunization_status(code: &str) -> &'static str {
    match code.trim().to_ascii_uppercase().as_str() {
        "RE" | "NA" => "not-done",
        _ => "completed",
    }
}

/// Table 0200 (name type) → HumanName.use.
pub fn name_use(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "L" | "B" => Some("official"),
        "D" => Some("usual"),
        "M" => Some("maiden"),
        "N" => Some("nickname"),
        "A" | "S" => Some("anonymous"),
        "T" => Some("temp"),
        _ => None,
    }
}

/// Table 0190 (address type) → Address.use and Address.type.
pub fn address_use(code: &str) -> (Option<&'static str>, Option<&'static str>) {
    match code.trim().to_ascii_uppercase().as_str() {
        "H" => (Some("home"), None),
        "B" | "O" => (Some("work"), None),
        "C" => (Some("temp"), None),
        "BA" => (Some("billing"), None),
        "M" => (None, Some("postal")),
        "P" => (None, Some("physical")),
        _ => (None, None),
    }
}

/// Table 0202 (telecommunication equipment type) → ContactPoint.system.
pub fn contact_system(code: &str) -> Option<&'static str> {
    match code {
        "PH" | "CP" | "MD" => Some("phone"),
        "FX" => Some("fax"),
        "INTERNET" | "X.400" => Some("email"),
        "BP" => Some("pager"),
        _ => None,
    }
}

/// Table 0201 (telecommunication use) → ContactPoint.use.
pub fn contact_use(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "PRN" | "ORN" | "VHN" => Some("home"),
        "WPN" => Some("work"),
        "PRS" => Some("mobile"),
        _ => None,
    }
}

/// Table 0396 (coding system) → the FHIR system URI; `None` for local or unknown systems
/// (the coding is then written without a system).
pub fn coding_system(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    let uri = match upper.as_str() {
        "" => return None,
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNM" | "SNOMEDCT" | "SNOMED-CT" => "http://snomed.info/sct",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://hl7.org/fhir/sid/mvx",
        "I10" | "ICD10" | "ICD-10" => "http://hl7.org/fhir/sid/icd-10",
        "I10C" | "ICD10CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I9" | "I9C" | "ICD9" => "http://hl7.org/fhir/sid/icd-9-cm",
        "UCUM" => UCUM,
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "RXNORM" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "C4" | "CPT" | "CPT4" => "http://www.ama-assn.org/go/cpt",
        "NCIT" => "http://ncimeta.nci.nih.gov",
        "NUCC" => "http://nucc.org/provider-taxonomy",
        _ => {
            // HL7nnnn: an HL7 table.
            if let Some(number) = upper.strip_prefix("HL7")
                && number.len() == 4
                && number.chars().all(|c| c.is_ascii_digit())
            {
                return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{number}"));
            }
            return None;
        }
    };
    Some(uri.to_owned())
}
