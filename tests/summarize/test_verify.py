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
