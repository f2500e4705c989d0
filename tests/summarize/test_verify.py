from __future__ import annotations

import pytest

from mediad.data.records import ClinicalRecord
from mediad.summarize import SummaryTemplate, verify_section, verify_summary


def section_problems(template: SummaryTemplate, record: ClinicalRecord, title: str,
                     text: str, exclude: tuple[str, ...] = ()) -> list[str]:
    section = template.sections[template.titles.index(title)]
    fields = [f for f in template.summary_fields() if f not in exclude]
    return verify_section(template, section, text, record, fields)


@pytest.mark.parametrize(
    ("title", "text"),
    [
        ("Demographics", "A 74-year-old woman with 16 years of education."),
        ("Demographics", "Age 74.3 years, female, 16 years of education."),
        ("Cognition", "MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 10.67; FAQ not recorded."),
        ("Genetics and risk", "One APOE e4 allele; CSF amyloid-beta, total tau and phospho-tau"
                              " were not recorded."),
        ("Vascular", "Hypertension present; no diabetes; smoking history not recorded; "
                     "BMI 27.1."),
    ],
)
def test_faithful_sentences_pass(template: SummaryTemplate, record: ClinicalRecord, title: str,
                                 text: str) -> None:
    assert section_problems(template, record, title, text) == []


@pytest.mark.parametrize(
    ("title", "text", "expected"),
    [
        ("Cognition", "MMSE 29/30, CDR-SB 0.5, ADAS-Cog-13 10.67.", "number 29 is not in"),
        ("Cognition", "CDR-SB 0.5, ADAS-Cog-13 10.67; FAQ not recorded.", "mmse (28) is missing"),
        ("Demographics", "A 74-year-old man with 16 years of education.", "says male"),
        ("Vascular", "No hypertension; no diabetes; BMI 27.1.", "hypertension is yes in the "
                                                               "record, no in the text"),
        ("Vascular", "Hypertension and diabetes; smoking not recorded; BMI 27.1.",
         "diabetes is no in the record, yes"),
        ("Vascular", "Hypertension present; no diabetes; former smoker; BMI 27.1.",
         "smoking is not recorded, but the text gives it"),
        ("Genetics and risk", "Two APOE e4 alleles; CSF not recorded.", "APOE4 is 1"),
        ("Cognition", "MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 10.67, consistent with MCI.",
         "names a diagnosis"),
        ("Cognition", "MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 10.67; early Alzheimer's.",
         "names a diagnosis"),
        ("Demographics", "Subject 011_S_0002 is a 74-year-old woman with 16 years of "
                         "education.", "identifier"),
        ("Demographics", "A 74-year-old woman with 16 years of education and MMSE 28/30.",
         "mentions mmse (belongs to another section)"),
        ("Cognition", "Demographics: MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 10.67.",
         "contains a section header"),
        ("Vascular", "", "empty"),
    ],
)
def test_each_kind_of_error_is_caught(template: SummaryTemplate, record: ClinicalRecord,
                                      title: str, text: str, expected: str) -> None:
    problems = section_problems(template, record, title, text)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what SmolLM2 wrote for a record with ADAS13 not recorded and FAQ 0: a value
        # invented for one field and a recorded one dropped, every number in the record
        ("MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 0/30, FAQ not recorded.",
         ["adas13 is not recorded in the record, but the text gives 0, 30",
          "faq is recorded, but the text says not recorded"]),
        ("MMSE 28/30, CDR-SB 0.5, ADAS-Cog-13 not recorded, FAQ 0/30, FAQ 0/30.",
         ["faq is stated 2 times"]),
        ("MMSE 0.5/30, CDR-SB 28, ADAS-Cog-13 not recorded, FAQ 0/30.",
         ["mmse is 28 in the record, the text gives 0.5",
          "cdr_sb is 0.5 in the record, the text gives 28"]),
    ],
)
def test_numbers_are_bound_to_their_fields(template: SummaryTemplate, record: ClinicalRecord,
                                           text: str, expected: list[str]) -> None:
    record = record.model_copy(update={"adas13": None, "faq": 0})
    problems = section_problems(template, record, "Cognition", text)
    for reason in expected:
        assert any(reason in p for p in problems), problems
    # the same facts, each with its own field, once: accepted
    good = "Mini-Mental State Examination (MMSE) 28/30, CDR-SB 0.5, ADAS-Cog-13 not recorded, " \
           "FAQ 0/30."
    assert section_problems(template, record, "Cognition", good) == []


def test_numbers_before_their_words_are_bound(template: SummaryTemplate,
                                              record: ClinicalRecord) -> None:
    swapped = "A 16-year-old woman with 74 years of education."
    problems = section_problems(template, record, "Demographics", swapped)
    assert any("age is 74.3 in the record, the text gives 16" in p for p in problems)
    assert any("education_years is 16 in the record, the text gives 74" in p for p in problems)
    # what SmolLM2 wrote: the 16 reads as the age and as the education; refused
    garbled = "A 74-year-old woman; age 16 years of education."
    problems = section_problems(template, record, "Demographics", garbled)
    assert any("number 16 is tied to no field" in p for p in problems), problems
    twice = "A 74-year-old woman, aged 74, with 16 years of education."
    problems = section_problems(template, record, "Demographics", twice)
    assert any("age is stated 2 times" in p for p in problems), problems


def test_a_field_left_out_by_config_may_not_appear(template: SummaryTemplate,
                                                   record: ClinicalRecord) -> None:
    text = "MMSE 28/30, ADAS-Cog-13 10.67; FAQ not recorded."
    problems = section_problems(template, record, "Cognition", text, exclude=("mmse", "cdr_sb"))
    assert any("mentions mmse (not included)" in p for p in problems)


def test_whole_summary_structure(template: SummaryTemplate, record: ClinicalRecord) -> None:
    fields = template.summary_fields()
    good = template.render(record, fields)
    lines = good.splitlines()
    assert verify_summary(template, good, record, fields) == []
    missing = "\n".join(lines[:2] + lines[3:])
    assert "missing section 'Genetics and risk'" in verify_summary(template, missing, record,
                                                                    fields)
    swapped = "\n".join([lines[1], lines[0], *lines[2:]])
    assert "sections out of order" in verify_summary(template, swapped, record, fields)
    extra = good + "\nDiagnosis: AD"
    assert any("text outside the template" in p
               for p in verify_summary(template, extra, record, fields))
    tampered = good.replace('"Lives alone."', '"Lives alone. Likely AD."')
    assert "Notes: free text changed" in verify_summary(template, tampered, record, fields)
    flipped = good.replace("Age 74.3 years; female;", "Age 74.3 years; male;")
    assert any("says male" in p for p in verify_summary(template, flipped, record, fields))
