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
/// The v3 ObservationInterpretation system (OBX-8, table 0078, `CM InterpretationCodes`).
pub const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
/// The v3 ParticipationType system (Encounter.participant.type).
pub const V3_PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// UCUM.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Table 0001 → AdministrativeGender (`CM AdministrativeSex`, ConceptMap
/// `table-hl70001-to-administrative-gender`).
pub fn gender(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "M" => Some("male"),
        "F" => Some("female"),
        "O" | "A" | "N" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    }
}

/// Table 0004 → Encounter.class, v3 ActCode (`CM PatientClass[EncounterClass]`, ConceptMap
/// `table-hl70004-to-v3-actcode`): the system and code; classes the map keeps as they are
/// (B, C, N, R, U …) stay v2-0004 codes.
pub fn encounter_class(code: &str) -> (&'static str, String) {
    let mapped = match code.trim().to_ascii_uppercase().as_str() {
        "I" => Some("IMP"),
        "O" => Some("AMB"),
        "E" => Some("EMER"),
        "P" => Some("PRENC"),
        _ => None,
    };
    match (mapped, code.trim()) {
        (Some(mapped), _) => (V3_ACT_CODE, mapped.to_owned()),
        (None, "") => (V3_NULL_FLAVOR, "UNK".to_owned()),
        (None, other) => (V2_0004, other.to_owned()),
    }
}

/// Table 0085 (observation result status) → ObservationStatus
/// (`CM ObservationResultStatusCodesInterpretation`: A, C, D, F, P, W, X). The codes the map
/// leaves open are local choices here (U final, S preliminary, I/R registered); anything
/// else is `unknown` (the status is required).
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

/// Table 0123 (result status) → DiagnosticReportStatus (`CM ResultStatus[Non-Queries]`:
/// O, I, S registered, P, C, R partial, F, X). A → partial is a local choice; an empty or
/// unmapped status is `unknown` (the status is required) rather than a refusal.
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

/// Table 0322 (completion status) → Immunization.status (`CM CompletionStatus`).
pub fn immunization_status(code: &str) -> &'static str {
    match code.trim().to_ascii_uppercase().as_str() {
        "RE" | "NA" => "not-done",
        _ => "completed",
    }
}

/// Table 0200 (name type) → HumanName.use (`CM NameType`).
pub fn name_use(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "L" | "R" => Some("official"),
        "D" => Some("usual"),
        "M" => Some("maiden"),
        "N" => Some("nickname"),
        "MSK" => Some("anonymous"),
        "NAV" | "TEMP" => Some("temp"),
        "BAD" => Some("old"),
        _ => None,
    }
}

/// Table 0190 (address type) → Address.use and Address.type (`CM AddressType[Use]`,
/// `CM AddressType[Type]`).
pub fn address_use(code: &str) -> (Option<&'static str>, Option<&'static str>) {
    match code.trim().to_ascii_uppercase().as_str() {
        "H" => (Some("home"), None),
        "B" | "O" => (Some("work"), None),
        "C" => (Some("temp"), None),
        "BA" => (Some("old"), None),
        "BI" => (Some("billing"), None),
        "M" | "SH" => (None, Some("postal")),
        _ => (None, None),
    }
}

/// Table 0202 (telecommunication equipment type) → ContactPoint.system
/// (`CM TelecommunicationEquipmentType`).
pub fn contact_system(code: &str) -> Option<&'static str> {
    match code {
        "PH" | "CP" => Some("phone"),
        "FX" => Some("fax"),
        "INTERNET" | "X.400" => Some("email"),
        "BP" => Some("pager"),
        "MD" | "SAT" | "TDD" | "TTY" => Some("other"),
        _ => None,
    }
}

/// Table 0201 (telecommunication use) → ContactPoint.use (`CM TelecommunicationUseCode`).
pub fn contact_use(code: &str) -> Option<&'static str> {
    match code.trim().to_ascii_uppercase().as_str() {
        "PRN" => Some("home"),
        "WPN" => Some("work"),
        "PRS" => Some("mobile"),
        _ => None,
    }
}

/// Table 0396 (coding system) → the FHIR system URI (HL7 terminology's URIs); `None` for
/// local or unknown systems (the coding is then written without a system).
pub fn coding_system(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    let uri = match upper.as_str() {
        "" => return None,
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNOMEDCT" | "SNOMED-CT" => "http://snomed.info/sct",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://hl7.org/fhir/sid/mvx",
        "I10" | "ICD10" | "ICD-10" => "http://hl7.org/fhir/sid/icd-10",
        "I10C" | "ICD10CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I9C" | "I9CDX" => "http://hl7.org/fhir/sid/icd-9-cm",
        "UCUM" => UCUM,
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "RXNORM" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "C4" | "CPT" | "CPT4" => "http://www.ama-assn.org/go/cpt",
        "NCIT" => "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
        "HCPT" => "http://nucc.org/provider-taxonomy",
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

/// Table 0078 codes `CM InterpretationCodes` maps to v3 ObservationInterpretation (the same
/// code); others (AC, HM, QCF, TOX …) keep the message's own system, if any.
pub fn interpretation(code: &str) -> bool {
    matches!(
        code,
        "<" | ">"
            | "A"
            | "AA"
            | "B"
            | "D"
            | "DET"
            | "H"
            | "HH"
            | "HU"
            | "I"
            | "IND"
            | "L"
            | "LL"
            | "LU"
            | "MS"
            | "N"
            | "NEG"
            | "NR"
            | "POS"
            | "R"
            | "RR"
            | "S"
            | "SDD"
            | "SYN-R"
            | "SYN-S"
            | "U"
            | "VS"
            | "W"
            | "WR"
    )
}

/// Encounter.status from the patient class (table 0004) when not discharged
/// (`CM PatientClass[EncounterStatus]`: P planned, U unknown, others in progress).
pub fn encounter_status(patient_class: &str) -> &'static str {
    match patient_class.trim().to_ascii_uppercase().as_str() {
        "P" => "planned",
        "U" => "unknown",
        _ => "in-progress",
    }
}
