//! The conversion on messages of the three families: resources, references, codes with
//! their systems, dates with offsets, and refusals.

use super::*;
use bytes::Bytes;
use serde_json::{Value, json};

const ADT: &str = "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|MFOUNDRY|HUB|20261122083000-0500||ADT^A01^ADT_A01|MSG00001|P|2.5.1\rEVN|A01|20261122083000\rPID|1||PATID1234^^^GHH&2.16.840.1.113883.19.5&ISO^MR~123456789^^^USSSA^SS||EVERYWOMAN^EVE^E^JR^DR^^L||19620320|F|||2222 HOME STREET^^GREENSBORO^NC^27401-1020^USA^H||^PRN^PH^^1^555^5552004~^NET^Internet^eve@example.org|^WPN^PH^^1^555^5553001||||||||||||||||N\rPV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0|||||||||||||||||||||||||||||20261122080000\r";

const ORU: &str = "MSH|^~\\&|LAB|LABFAC|MFOUNDRY|HUB|20261122090000+0100||ORU^R01|LAB00042|P|2.5\rPID|1||555444^^^LAB^MR||DOE^JANE||19800101|F\rOBR|1|ORD1|FIL1|24331-1^LIPID PANEL^LN|||20261122081500||||||||||||||||||F\rOBX|1|NM|2093-3^CHOLESTEROL^LN||196|mg/dL^mg/dL^UCUM|<200|N|||F\rNTE|1||fasting\rOBX|2|ST|8251-1^NOTE^LN||hemolysed \\T\\ repeated||||||P\rOBX|3|CWE|882-1^ABO+Rh^LN||A+^A positive^L||||||C\r";

const VXU: &str = "MSH|^~\\&|EHR|CLINIC|IIS|STATE|20261122100000-0600||VXU^V04^VXU_V04|VX1|P|2.5.1\rPID|1||7777^^^CLINIC&2.16.840.1.113883.19.6&ISO^MR||CHILD^ANNA||20200101|F\rORC|RE||197023\rRXA|0|1|20261120103000|20261120103000|08^HepB pediatric^CVX|0.5|mL^mL^UCUM||00^new immunization record^NIP001||||||LOT123|20271231|MSD^Merck^MVX|||CP|A\rRXR|C28161^Intramuscular^NCIT|LT^Left Thigh^HL70163\r";

fn convert(text: &str) -> Result<Value, Unsupported> {
    let message = Message::parse(Bytes::from(text.to_owned())).expect("parses");
    to_value(bundle(
        &message,
        Charset::UTF_8,
        Ids {
            instance_id: 7,
            message_id: 42,
            entry: 42,
            connector: "fhir",
        },
    ))
}

fn to_value(bundle: Result<Bundle, Unsupported>) -> Result<Value, Unsupported> {
    bundle.map(|bundle| serde_json::to_value(bundle).expect("serializes"))
}

fn resources<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| &entry["resource"])
        .filter(|resource| resource["resourceType"] == kind)
        .collect()
}

#[test]
fn adt_gives_a_patient_and_an_encounter() {
    let bundle = convert(ADT).expect("converts");
    assert_eq!(bundle["type"], "transaction");
    let patient = resources(&bundle, "Patient")[0];
    assert_eq!(
        patient["identifier"][0]["system"],
        "urn:oid:2.16.840.1.113883.19.5"
    );
    assert_eq!(patient["identifier"][0]["value"], "PATID1234");
    assert_eq!(patient["identifier"][0]["type"]["coding"][0]["code"], "MR");
    assert_eq!(patient["identifier"][1]["assigner"]["display"], "USSSA");
    assert_eq!(patient["name"][0]["family"], "EVERYWOMAN");
    assert_eq!(patient["name"][0]["given"], json!(["EVE", "E"]));
    assert_eq!(patient["name"][0]["use"], "official");
    assert_eq!(patient["name"][0]["prefix"], json!(["DR"]));
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1962-03-20");
    assert_eq!(patient["deceasedBoolean"], false);
    assert_eq!(patient["address"][0]["city"], "GREENSBORO");
    assert_eq!(patient["address"][0]["use"], "home");
    let telecom = patient["telecom"].as_array().expect("telecom");
    assert!(
        telecom.contains(&json!({"system": "phone", "value": "555 5552004", "use": "home"})),
        "{telecom:?}"
    );
    assert!(
        telecom.contains(&json!({"system": "email", "value": "eve@example.org", "use": "home"})),
        "{telecom:?}"
    );
    let patient_entry = &bundle["entry"][0];
    assert_eq!(patient_entry["request"]["method"], "PUT");
    assert_eq!(
        patient_entry["request"]["url"],
        "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|PATID1234"
    );
    let encounter = resources(&bundle, "Encounter")[0];
    assert_eq!(encounter["status"], "in-progress");
    assert_eq!(encounter["class"]["code"], "IMP");
    assert_eq!(encounter["subject"]["reference"], patient_entry["fullUrl"]);
    assert_eq!(
        encounter["period"]["start"], "2026-11-22T08:00:00-05:00",
        "MSH-7's offset"
    );
    assert_eq!(
        encounter["location"][0]["location"]["display"],
        "2000 2012 01"
    );
    assert_eq!(
        encounter["participant"][0]["individual"]["display"],
        "ATTEND, AARON"
    );

    let discharge = convert(&ADT.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03")).expect("A03");
    assert_eq!(resources(&discharge, "Encounter")[0]["status"], "finished");
    // CM PatientClass[EncounterStatus]: a pre-admit is planned; B stays a v2-0004 class.
    let planned = convert(&ADT.replace("PV1|1|I|", "PV1|1|P|")).expect("P");
    assert_eq!(resources(&planned, "Encounter")[0]["status"], "planned");
    let obstetrics = convert(&ADT.replace("PV1|1|I|", "PV1|1|B|")).expect("B");
    assert_eq!(
        resources(&obstetrics, "Encounter")[0]["class"],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "B"})
    );
    // CM AddressType: BA is a bad (old) address.
    let old = convert(&ADT.replace("^USA^H|", "^USA^BA|")).expect("BA");
    assert_eq!(resources(&old, "Patient")[0]["address"][0]["use"], "old");
}

#[test]
fn oru_gives_a_report_with_its_observations() {
    let bundle = convert(ORU).expect("converts");
    let report = resources(&bundle, "DiagnosticReport")[0];
    assert_eq!(report["status"], "final");
    assert_eq!(report["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(report["effectiveDateTime"], "2026-11-22T08:15:00+01:00");
    assert_eq!(report["result"].as_array().map(Vec::len), Some(3));
    let observations = resources(&bundle, "Observation");
    assert_eq!(observations[0]["valueQuantity"]["value"], json!(196));
    let message = Message::parse(Bytes::from(ORU.replace("||196|", "||+03.20|"))).expect("parses");
    let ids = Ids {
        instance_id: 7,
        message_id: 42,
        entry: 42,
        connector: "fhir",
    };
    let precise = super::bundle(&message, Charset::UTF_8, ids).expect("converts");
    let text = serde_json::to_string(&precise).expect("json");
    assert!(text.contains("\"value\":3.20"), "precision kept: {text}");
    assert_eq!(
        observations[0]["valueQuantity"]["system"],
        "http://unitsofmeasure.org"
    );
    assert_eq!(observations[0]["referenceRange"][0]["text"], "<200");
    assert_eq!(
        observations[0]["interpretation"][0]["coding"][0]["code"],
        "N"
    );
    assert_eq!(observations[0]["note"][0]["text"], "fasting");
    assert_eq!(observations[1]["valueString"], "hemolysed & repeated");
    assert_eq!(observations[1]["status"], "preliminary");
    assert_eq!(
        observations[2]["valueCodeableConcept"]["coding"][0]["code"],
        "A+"
    );
    assert!(
        observations[2]["valueCodeableConcept"]["coding"][0]
            .get("system")
            .is_none(),
        "a local system is left out"
    );
    assert_eq!(observations[2]["status"], "corrected");
    let references: Vec<&Value> = report["result"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["reference"])
        .collect();
    let urls: Vec<&Value> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| &e["fullUrl"])
        .collect();
    assert_eq!(references, urls);
}

#[test]
fn vxu_gives_an_immunization() {
    let bundle = convert(VXU).expect("converts");
    let immunization = resources(&bundle, "Immunization")[0];
    assert_eq!(immunization["status"], "completed");
    assert_eq!(
        immunization["vaccineCode"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/cvx"
    );
    assert_eq!(immunization["vaccineCode"]["coding"][0]["code"], "08");
    assert_eq!(
        immunization["occurrenceDateTime"],
        "2026-11-20T10:30:00-06:00"
    );
    assert_eq!(immunization["doseQuantity"]["value"], json!(0.5));
    assert_eq!(immunization["lotNumber"], "LOT123");
    assert_eq!(immunization["expirationDate"], "2027-12-31");
    assert_eq!(immunization["primarySource"], true);
    assert_eq!(immunization["route"]["coding"][0]["code"], "C28161");
    assert_eq!(
        immunization["site"]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v2-0163"
    );
}

#[test]
fn structured_numerics_and_times_get_their_own_value_types() {
    let base = "MSH|^~\\&|LAB|F|HUB|H|20260101120000+0100||ORU^R01|S1|P|2.5\rPID|1||1^^^L^MR||A^B\rOBR|1|||X^Y^LN\r";
    let bundle = convert(&format!(
        "{base}OBX|1|SN|A^a^LN||<^5|mg^milligram^UCUM\rOBX|2|SN|B^b^LN||^1^-^5|mg^mg^UCUM\rOBX|3|SN|C^c^LN||^1^:^128\rOBX|4|TM|D^d^LN||0830\rOBX|5|SN|E^e^LN||<>^1\r"
    ))
    .expect("converts");
    let observations = resources(&bundle, "Observation");
    assert_eq!(observations[0]["valueQuantity"]["comparator"], "<");
    assert_eq!(observations[0]["valueQuantity"]["unit"], "milligram");
    assert_eq!(observations[0]["valueQuantity"]["code"], "mg");
    assert_eq!(observations[1]["valueRange"]["high"]["value"], json!(5));
    assert_eq!(
        observations[2]["valueRatio"]["denominator"]["value"],
        json!(128)
    );
    assert_eq!(observations[3]["valueTime"], "08:30:00");
    assert_eq!(
        observations[4]["valueString"], "<> 1",
        "not a structured numeric FHIR knows"
    );
}

#[test]
fn the_same_entry_converts_to_the_same_bundle_and_others_are_refused() {
    assert_eq!(convert(ORU), convert(ORU));
    let refused = convert(&ORU.replace("ORU^R01", "ORM^O01")).expect_err("ORM");
    assert!(
        refused.to_string().contains("ORM^O01") && refused.to_string().contains("ORU^R01"),
        "{refused}"
    );
    let no_segments =
        convert("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|X|P|2.5\r").expect_err("nothing to convert");
    assert!(
        no_segments.to_string().contains("none of the segments"),
        "{no_segments}"
    );
}
