"""Clinical records and cohort manifests: one internal schema, three source vocabularies.

Records arrive as MediAD's own columns, as an ADNIMERGE export or as NACC UDS columns. Each
vocabulary is a :class:`ColumnMap` from source columns onto :class:`ClinicalRecord` fields.
Reading never stops at the first problem: every bad cell becomes an :class:`~mediad.errors.Issue`
naming the file, line, subject, field, value and what was expected. Columns we do not use are
listed once as information. Missing values stay ``None`` (never imputed); categorical source
codes are translated and each translation is reported (``PTGENDER 'Female' -> sex 'female'``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mediad.errors import InputError, Issue

__all__ = [
    "COGNITIVE_SCORES",
    "DIAGNOSES",
    "LABEL_DEFINING_FIELDS",
    "NUMERIC_FIELDS",
    "RECORD_FIELDS",
    "SCHEMA_FILES",
    "VOCABULARIES",
    "ClinicalRecord",
    "ColumnMap",
    "Diagnosis",
    "ManifestRow",
    "RecordTable",
    "detect_vocabulary",
    "has_no_scores",
    "json_schemas",
    "load_manifest",
    "load_records",
    "read_table",
    "select_record",
    "to_adnimerge_row",
]

Diagnosis = Literal["CN", "MCI", "AD"]
Sex = Literal["female", "male"]
DIAGNOSES: tuple[str, ...] = ("CN", "MCI", "AD")

#: Fields that ADNI uses to *define* the diagnosis; using them as inputs inflates accuracy.
LABEL_DEFINING_FIELDS: tuple[str, ...] = ("mmse", "cdr_sb")
#: The cognitive and functional scores: what a record from outside a study's assessment
#: visit (a memory-clinic referral, a form filled in by hand) most often lacks.
COGNITIVE_SCORES: tuple[str, ...] = ("mmse", "cdr_sb", "adas13", "faq")


def has_no_scores(record: ClinicalRecord) -> bool:
    """Whether a record holds none of the :data:`COGNITIVE_SCORES` (one is enough to count
    as scored)."""
    return all(getattr(record, f) is None for f in COGNITIVE_SCORES)


class ClinicalRecord(BaseModel):
    """One visit of one subject. ``None`` means "not recorded", never zero or normal."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ClinicalRecord")

    subject_id: str = Field(min_length=1, max_length=64, description="Pseudonymous subject id.")
    visit: str = Field("bl", min_length=1, max_length=32, description="Visit code, e.g. bl, m12.")
    age: float | None = Field(None, ge=18, le=110, description="Age at the visit, years.")
    sex: Sex | None = None
    education_years: float | None = Field(None, ge=0, le=30, description="Years of education.")
    apoe4: int | None = Field(None, ge=0, le=2, description="Number of APOE e4 alleles.")
    mmse: float | None = Field(None, ge=0, le=30, description="Mini-Mental State Exam, 0-30.")
    cdr_sb: float | None = Field(None, ge=0, le=18, description="CDR sum of boxes, 0-18.")
    adas13: float | None = Field(None, ge=0, le=85, description="ADAS-Cog 13, 0-85.")
    faq: float | None = Field(None, ge=0, le=30, description="Functional Activities Q., 0-30.")
    hypertension: bool | None = None
    diabetes: bool | None = None
    smoking: bool | None = Field(None, description="Ever smoked (NACC TOBAC100).")
    bmi: float | None = Field(None, ge=10, le=80, description="Body-mass index, kg/m^2.")
    csf_abeta: float | None = Field(None, ge=0, le=10000, description="CSF A-beta 1-42, pg/mL.")
    csf_tau: float | None = Field(None, ge=0, le=10000, description="CSF total tau, pg/mL.")
    csf_ptau: float | None = Field(None, ge=0, le=1000, description="CSF phospho-tau 181, pg/mL.")
    notes: str | None = Field(None, max_length=2000, description="Free text (data only).")
    diagnosis: Diagnosis | None = Field(None, description="Label (CN/MCI/AD); never a model input.")
    site: str | None = Field(None, max_length=64, description="Acquisition site, for audits only.")

    def missing_fields(self) -> list[str]:
        """Input fields that are not recorded (label and bookkeeping fields excluded)."""
        skip = {"subject_id", "visit", "diagnosis", "site"}
        return [k for k in type(self).model_fields if k not in skip and getattr(self, k) is None]


class ManifestRow(ClinicalRecord):
    """A cohort manifest row: a record plus the MRI that goes with it (may be absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ManifestRow")

    mri_path: str | None = Field(None, description="NIfTI path, relative to the manifest's folder.")


RECORD_FIELDS: tuple[str, ...] = tuple(ClinicalRecord.model_fields)
NUMERIC_FIELDS: tuple[str, ...] = (
    "age", "education_years", "apoe4", "mmse", "cdr_sb", "adas13", "faq", "bmi",
    "csf_abeta", "csf_tau", "csf_ptau",
)
BOOL_FIELDS: tuple[str, ...] = ("hypertension", "diabetes", "smoking")

# ---------------------------------------------------------------------------------------
# Cell parsers: raw text -> (value, note). ``MISSING`` means "not recorded".


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_NA_TOKENS = {"", "na", "n/a", "nan", "none", "null", "-", "."}


class CellError(ValueError):
    """A cell that cannot be read; the message says what was expected."""


Parser = Callable[[str], Any]


def _is_na(raw: str) -> bool:
    return raw.strip().lower() in _NA_TOKENS


def number(*missing_codes: float) -> Parser:
    """A numeric cell; ``missing_codes`` are the source's own "not available" codes.

    Censored values such as ``>1700`` or ``<8`` (ADNI CSF assays) become the limit itself.
    """

    def parse(raw: str) -> Any:
        text = raw.strip()
        if _is_na(text):
            return MISSING
        censor = ""
        if text[:1] in "<>":
            censor, text = text[0], text[1:].strip()
        try:
            value = float(text)
        except ValueError:
            raise CellError("expected a number") from None
        if not math.isfinite(value):
            raise CellError("expected a finite number")
        if not censor and value in missing_codes:
            return MISSING
        return value

    return parse


def integer(*missing_codes: float) -> Parser:
    base = number(*missing_codes)

    def parse(raw: str) -> Any:
        value = base(raw)
        if value is MISSING:
            return MISSING
        if value != int(value):
            raise CellError("expected a whole number")
        return int(value)

    return parse


def categorical(mapping: Mapping[str, Any], missing: Iterable[str] = ()) -> Parser:
    """A coded cell: source code -> internal value (case-insensitive); ``None`` values drop."""
    table = {str(k).strip().lower(): v for k, v in mapping.items()}
    missing_set = {m.strip().lower() for m in missing}

    def parse(raw: str) -> Any:
        key = raw.strip().lower()
        # "1.0" in a numeric export means code "1"
        if re.fullmatch(r"-?\d+\.0+", key):
            key = key.split(".")[0]
        if _is_na(key) or key in missing_set:
            return MISSING
        if key not in table:
            allowed = ", ".join(sorted({str(k) for k in mapping}))
            raise CellError(f"unknown code; expected one of: {allowed}")
        value = table[key]
        return MISSING if value is None else value

    parse.mapping = table  # type: ignore[attr-defined]
    return parse


def text(raw: str) -> Any:
    return MISSING if _is_na(raw) else raw.strip()


_YES_NO = {"1": True, "0": False, "yes": True, "no": False, "true": True, "false": False,
           "y": True, "n": False}


@dataclass(frozen=True)
class ColumnMap:
    """How one vocabulary's columns become internal fields.

    Attributes:
        name: vocabulary name (``mediad``, ``adnimerge``, ``nacc``).
        columns: source column -> (internal field, parser). Several source columns may feed
            one field; the first non-missing one in ``priority`` order wins.
        subject_columns: source columns that may hold the subject id, in order of preference.
        priority: for fields fed by several columns, the order in which they are tried.
    """

    name: str
    columns: Mapping[str, tuple[str, Parser]]
    subject_columns: tuple[str, ...]
    priority: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_MEDIAD_PARSERS: dict[str, Parser] = {
    **{f: number() for f in NUMERIC_FIELDS},
    "apoe4": integer(),
    **{f: categorical(_YES_NO) for f in BOOL_FIELDS},
    "sex": categorical({"female": "female", "male": "male", "f": "female", "m": "male"}),
    "diagnosis": categorical({d: d for d in DIAGNOSES}),
    "subject_id": text, "visit": text, "notes": text, "site": text, "mri_path": text,
}
MEDIAD_MAP = ColumnMap(
    "mediad", {c: (c, p) for c, p in _MEDIAD_PARSERS.items()}, subject_columns=("subject_id",)
)

# ADNIMERGE: DX_bl codes (baseline) and DX codes (visit; older exports use conversions).
_ADNI_DX_BL = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "MCI": "MCI", "AD": "AD"}
_ADNI_DX = {
    "CN": "CN", "NL": "CN", "MCI": "MCI", "Dementia": "AD", "AD": "AD",
    "NL to MCI": "MCI", "MCI to Dementia": "AD", "NL to Dementia": "AD",
    "MCI to NL": "CN", "Dementia to MCI": "MCI", "MCI to AD": "AD",
}
ADNIMERGE_MAP = ColumnMap(
    "adnimerge",
    {
        "PTID": ("subject_id", text),
        "RID": ("subject_id", text),
        "VISCODE": ("visit", text),
        "AGE": ("age", number(-4)),  # baseline age; Years_bl is added (see _adni_age)
        "Years_bl": ("_years_bl", number(-4)),
        "PTGENDER": ("sex", categorical({"Female": "female", "Male": "male"})),
        "PTEDUCAT": ("education_years", number(-4)),
        "APOE4": ("apoe4", integer(-4)),
        "MMSE": ("mmse", number(-4)),
        "CDRSB": ("cdr_sb", number(-4)),
        "ADAS13": ("adas13", number(-4)),
        "FAQ": ("faq", number(-4)),
        "ABETA": ("csf_abeta", number(-4)),
        "TAU": ("csf_tau", number(-4)),
        "PTAU": ("csf_ptau", number(-4)),
        "DX": ("diagnosis", categorical(_ADNI_DX)),
        "DX_bl": ("_dx_bl", categorical(_ADNI_DX_BL)),
        "SITE": ("site", text),
        # Not ADNIMERGE columns: joined by users from ADNI's medical-history / vitals tables.
        "HYPERTENSION": ("hypertension", categorical(_YES_NO, missing=["-4"])),
        "DIABETES": ("diabetes", categorical(_YES_NO, missing=["-4"])),
        "SMOKING": ("smoking", categorical(_YES_NO, missing=["-4"])),
        "BMI": ("bmi", number(-4)),
        "NOTES": ("notes", text),
        "mri_path": ("mri_path", text),
    },
    subject_columns=("PTID", "RID"),
    priority={"subject_id": ("PTID", "RID")},
)

# NACC UDS: -4 not available, 8/88/888 not applicable, 9/99/999 unknown (field-dependent).
_NACC_PRESENT = {"0": False, "1": True, "2": True}  # HYPERTEN/DIABETES: 1 recent, 2 remote
NACC_MAP = ColumnMap(
    "nacc",
    {
        "NACCID": ("subject_id", text),
        "VISITNUM": ("visit", text),
        "NACCVNUM": ("visit", text),
        "NACCAGE": ("age", number(-4, 888, 999)),
        "SEX": ("sex", categorical({"1": "male", "2": "female"}, missing=["-4", "9"])),
        "EDUC": ("education_years", number(-4, 99)),
        "NACCNE4S": ("apoe4", integer(-4, 9)),
        "NACCMMSE": ("mmse", number(-4, 88, 95, 96, 97, 98, -1)),
        "CDRSUM": ("cdr_sb", number(-4)),
        "NACCFAQ": ("faq", number(-4, 88, 99)),
        "HYPERTEN": ("hypertension", categorical(_NACC_PRESENT, missing=["-4", "8", "9"])),
        "DIABETES": ("diabetes", categorical(_NACC_PRESENT, missing=["-4", "8", "9"])),
        "TOBAC100": ("smoking", categorical({"0": False, "1": True}, missing=["-4", "9"])),
        "NACCBMI": ("bmi", number(-4, 888.8, 888)),
        # NACCUDSD: 1 normal, 2 impaired-not-MCI, 3 MCI, 4 dementia. Dementia is AD only
        # when NACCALZD says Alzheimer's is the presumed aetiology (see _nacc_label).
        "NACCUDSD": ("_udsd", categorical({"1": "CN", "2": None, "3": "MCI", "4": "dementia"})),
        "NACCALZD": ("_alzd", categorical({"0": False, "1": True}, missing=["8", "-4"])),
        "NACCADC": ("site", text),
        "mri_path": ("mri_path", text),
    },
    subject_columns=("NACCID",),
    priority={"visit": ("VISITNUM", "NACCVNUM")},
)

VOCABULARIES: dict[str, ColumnMap] = {m.name: m for m in (MEDIAD_MAP, ADNIMERGE_MAP, NACC_MAP)}


def detect_vocabulary(columns: Sequence[str], require_id: bool = True) -> ColumnMap:
    """Tell MediAD, ADNIMERGE and NACC tables apart from their id columns.

    A single patient's record may have no id (``require_id=False``); it is then told apart
    by which vocabulary knows most of its columns.
    """
    cols = set(columns)
    if "subject_id" in cols:
        return MEDIAD_MAP
    if "NACCID" in cols:
        return NACC_MAP
    if cols & {"RID", "PTID"}:
        return ADNIMERGE_MAP
    if not require_id:
        known = {name: len(cols & set(m.columns)) for name, m in VOCABULARIES.items()}
        best = max(known, key=lambda k: known[k])
        if known[best]:
            return VOCABULARIES[best]
        raise InputError(
            "none of the columns is a known record field (e.g. age, sex, mmse in MediAD "
            f"names, or AGE, PTGENDER, MMSE in ADNIMERGE names); found: "
            f"{', '.join(list(columns)[:12])}")
    raise InputError(
        "cannot tell which vocabulary this table uses: expected a subject id column, "
        "'subject_id' (MediAD), 'RID' or 'PTID' (ADNIMERGE), or 'NACCID' (NACC UDS); "
        f"found columns: {', '.join(list(columns)[:12])}"
    )


# ---------------------------------------------------------------------------------------
# Reading files


@dataclass
class RawTable:
    """Cells as read, before any mapping; ``lines`` are 1-based file lines of each row."""

    path: str
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int | None]


def read_table(path: str | Path, encoding: str = "utf-8") -> RawTable:
    """Read a CSV (one row a visit) or JSON (an object or a list of objects) as text cells.

    Raises:
        InputError: the file is missing, empty, not in ``encoding``, has a duplicated column
            name, or is not valid JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    data = p.read_bytes()
    try:
        content = data.decode("utf-8-sig" if encoding.lower().replace("-", "") == "utf8"
                              else encoding)
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(
            f"{p}:{line}: the file is not {encoding} text (byte 0x{bad} at offset {exc.start}); "
            "re-save it as UTF-8, or give its encoding (e.g. latin-1: --encoding on the "
            "command line, the Text encoding choice in the app)"
        ) from None
    except LookupError:
        raise InputError(f"unknown text encoding {encoding!r}") from None
    if not content.strip():
        raise InputError(f"{p}: the file is empty")
    if p.suffix.lower() == ".json":
        return _read_json(p, content)
    return _read_csv(p, content)


def _read_csv(p: Path, content: str) -> RawTable:
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise InputError(f"{p}: cannot read a CSV header ({exc})") from None
    header = [h.strip() for h in header]
    dup = [name for name, n in Counter(header).items() if n > 1]
    if dup:
        raise InputError(
            f"{p}:1: column name(s) appear more than once: {', '.join(map(repr, dup))}; "
            "each column must be unique, or we cannot tell which value to use"
        )
    if any(h == "" for h in header):
        raise InputError(f"{p}:1: the header has an empty column name (position "
                         f"{header.index('') + 1})")
    rows, lines = [], []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            line = reader.line_num
            if len(cells) != len(header):
                raise InputError(
                    f"{p}:{line}: row has {len(cells)} cells but the header has {len(header)}"
                )
            rows.append(dict(zip(header, cells, strict=True)))
            lines.append(line)
    except csv.Error as exc:
        raise InputError(f"{p}:{reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise InputError(f"{p}: the CSV has a header but no data rows")
    return RawTable(str(p), header, rows, lines)


def _read_json(p: Path, content: str) -> RawTable:
    try:
        obj = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    objs = obj if isinstance(obj, list) else [obj]
    if not objs or not all(isinstance(o, dict) for o in objs):
        raise InputError(f"{p}: expected a JSON object or a list of objects (one per visit)")
    columns: list[str] = []
    for o in objs:
        columns.extend(k for k in o if k not in columns)
    rows = [{k: "" if v is None else str(v) for k, v in o.items()} for o in objs]
    return RawTable(str(p), columns, rows, [None] * len(rows))


# ---------------------------------------------------------------------------------------
# Mapping rows onto the internal schema


@dataclass
class RecordTable:
    """The result of reading a table: valid rows, every issue, and what was mapped to what.

    Attributes:
        path: the source file.
        vocabulary: ``mediad``, ``adnimerge`` or ``nacc``.
        rows: valid rows, in file order (``ManifestRow``; ``mri_path`` is ``None`` for plain
            record tables).
        lines: the file line of each valid row (``None`` for JSON).
        issues: errors (rows dropped), warnings and information.
        translations: (source column, source value, internal field, internal value) -> count.
        ignored_columns: source columns that feed no field.
    """

    path: str
    vocabulary: str
    rows: list[ManifestRow]
    lines: list[int | None]
    issues: list[Issue]
    translations: Counter
    ignored_columns: list[str]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def records(self) -> list[ClinicalRecord]:
        keys = set(RECORD_FIELDS)
        return [ClinicalRecord(**r.model_dump(include=keys)) for r in self.rows]

    def translation_lines(self) -> list[str]:
        return [
            f"{col} {src!r} -> {fld} {dst!r} ({n} row{'s' if n != 1 else ''})"
            for (col, src, fld, dst), n in sorted(self.translations.items(), key=str)
        ]


def _range_text(name: str) -> str:
    info = ManifestRow.model_fields.get(name)
    lo = hi = None
    for m in getattr(info, "metadata", []):
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    if lo is not None and hi is not None:
        return f"expected {lo:g} to {hi:g}"
    return ""


def _pydantic_issues(exc: ValidationError, base: Issue, raw: dict[str, Any]) -> list[Issue]:
    out = []
    for err in exc.errors():
        fld = str(err["loc"][0]) if err["loc"] else None
        msg = err["msg"]
        if fld and err["type"] in {"less_than_equal", "greater_than_equal"}:
            msg = f"out of range; {_range_text(fld)}"
        elif err["type"] == "extra_forbidden":
            msg = "not a field of the record"
        out.append(Issue("error", msg, base.file, base.line, base.subject, fld,
                         raw.get(fld, err.get("input"))))
    return out


def _combine(vocab: ColumnMap, values: dict[str, Any], notes: Counter) -> None:
    """Vocabulary-specific derived fields (visit age, NACC dementia aetiology, DX_bl)."""
    years_bl = values.pop("_years_bl", MISSING)
    if vocab is ADNIMERGE_MAP and values.get("age", MISSING) is not MISSING and (
        years_bl is not MISSING
    ):
        # ADNIMERGE's AGE is the age at baseline; the age at this visit adds Years_bl.
        values["age"] = round(values["age"] + years_bl, 1)
    dx_bl = values.pop("_dx_bl", MISSING)
    if values.get("diagnosis", MISSING) is MISSING and dx_bl is not MISSING and (
        str(values.get("visit", "bl")).lower() in {"bl", "sc", "scmri"}
    ):
        values["diagnosis"] = dx_bl
        notes[("DX_bl", "(baseline visit, DX empty)", "diagnosis", dx_bl)] += 1
    udsd = values.pop("_udsd", MISSING)
    alzd = values.pop("_alzd", MISSING)
    if udsd is not MISSING:
        if udsd == "dementia":
            label = "AD" if alzd is True else MISSING
            why = "NACCALZD=1" if alzd is True else "aetiology not AD or unknown: no label"
            notes[("NACCUDSD", f"4 ({why})", "diagnosis", label if label else None)] += 1
            if label is not MISSING:
                values["diagnosis"] = label
        else:
            values["diagnosis"] = udsd


_DISPLAY = {"_dx_bl": "baseline diagnosis", "_udsd": "diagnosis", "_alzd": "AD aetiology"}


#: The id given to a single patient's record that has none (it is never written anywhere).
ANONYMOUS_ID = "patient"


def map_table(raw: RawTable, vocabulary: str | None = None,
              require_id: bool | None = None) -> RecordTable:
    """Map raw cells onto :class:`ManifestRow` objects, collecting every issue.

    Args:
        raw: cells as read.
        vocabulary: force a vocabulary instead of detecting it.
        require_id: whether rows need a subject id; by default only tables of more than one
            row do (a single patient's record may come without one).
    """
    if require_id is None:
        require_id = len(raw.rows) > 1
    vocab = VOCABULARIES[vocabulary] if vocabulary else detect_vocabulary(raw.columns,
                                                                           require_id)
    used = [c for c in raw.columns if c in vocab.columns]
    ignored = [c for c in raw.columns if c not in vocab.columns]

    def rank(col: str) -> int:  # within a field, preferred source columns are read first
        preferred = vocab.priority.get(vocab.columns[col][0], ())
        return preferred.index(col) if col in preferred else 0

    order = sorted(used, key=rank)
    issues: list[Issue] = []
    if ignored:
        issues.append(Issue(
            "info", f"{len(ignored)} column(s) not used by MediAD and ignored: "
            + ", ".join(ignored[:40]) + (" ..." if len(ignored) > 40 else ""), raw.path))
    translations: Counter = Counter()
    rows: list[ManifestRow] = []
    lines: list[int | None] = []
    seen: dict[tuple[str, str], int | None] = {}
    for index, (cells, line) in enumerate(zip(raw.rows, raw.lines, strict=True)):
        subject = next((cells[c].strip() for c in vocab.subject_columns
                        if c in cells and not _is_na(cells[c])), None)
        base = Issue("error", "", raw.path, line if line is not None else None, subject)
        if line is None:
            base = Issue("error", "", raw.path, None, subject or f"(item {index + 1})")
        values: dict[str, Any] = {}
        row_issues: list[Issue] = []
        for col in order:
            fld, parse = vocab.columns[col]
            cell = cells.get(col, "")
            try:
                value = parse(cell)
            except CellError as exc:
                row_issues.append(Issue("error", str(exc), base.file, base.line, base.subject,
                                        f"{fld} (column {col})" if col != fld else fld, cell))
                continue
            if value is MISSING or values.get(fld, MISSING) is not MISSING:
                continue
            values[fld] = value
            if cell.strip()[:1] in "<>":
                translations[(col, f"{cell.strip()} (censored)", fld, value)] += 1
            elif getattr(parse, "mapping", None) is not None and vocab is not MEDIAD_MAP:
                translations[(col, cell.strip(), _DISPLAY.get(fld, fld), value)] += 1
        _combine(vocab, values, translations)
        if not subject and not require_id:
            subject = ANONYMOUS_ID
        if not subject:
            row_issues.append(Issue("error", "the subject id is missing (columns "
                                    f"{'/'.join(vocab.subject_columns)})", base.file,
                                    base.line, None, "subject_id", ""))
        values["subject_id"] = subject or "?"
        key = (str(subject), str(values.get("visit", "bl")))
        if subject and key in seen:
            first = seen[key]
            row_issues.append(Issue(
                "error", "duplicate subject-visit row (first seen "
                + (f"at line {first})" if first else "earlier)"),
                base.file, base.line, subject, "visit", key[1]))
        seen.setdefault(key, line)
        try:
            row = ManifestRow(**values)
        except ValidationError as exc:
            row_issues.extend(_pydantic_issues(exc, base, values))
        if row_issues:
            issues.extend(row_issues)
            continue
        rows.append(row)
        lines.append(line)
    return RecordTable(raw.path, vocab.name, rows, lines, issues, translations, ignored)


def load_records(path: str | Path, *, encoding: str = "utf-8", strict: bool = True,
                 vocabulary: str | None = None) -> RecordTable:
    """Read a records file (CSV/JSON, any known vocabulary).

    Args:
        path: CSV or JSON file.
        encoding: text encoding of the file.
        strict: raise when any row has an error; otherwise bad rows are dropped and listed.
        vocabulary: force a vocabulary instead of detecting it.

    Raises:
        InputError: the file cannot be read, or (``strict``) any row is invalid.
    """
    table = map_table(read_table(path, encoding), vocabulary)
    if strict:
        InputError.raise_if_errors(table.issues, summary=f"{path}: {len(table.errors)} "
                                   "problem(s) in the records")
    return table


def select_record(table: RecordTable, subject: str | None = None,
                  visit: str | None = None) -> ClinicalRecord:
    """One record of a table: the only one, or the one ``subject`` (and ``visit``) names.

    A real export (ADNIMERGE) holds many subjects and visits; a single patient's file one.

    Raises:
        InputError: no row matches, or several do and no choice narrows them to one (the
            message lists the choices).
    """
    records = table.records()
    picked = [r for r in records if (subject is None or r.subject_id == subject)
              and (visit is None or r.visit == visit)]
    if len(picked) == 1:
        return picked[0]
    choices = ", ".join(f"{r.subject_id}/{r.visit}" for r in records[:20]) + (
        f" and {len(records) - 20} more" if len(records) > 20 else "")
    wanted = "/".join(x for x in (subject, visit) if x)
    if not picked:
        raise InputError(f"{Path(table.path).name}: no record for {wanted or 'this choice'}; "
                         f"it holds {choices}")
    raise InputError(f"{Path(table.path).name}: {len(picked)} records match "
                     f"{wanted or '(no subject or visit given)'}; choose one subject and visit "
                     f"(--subject, --visit) among {choices}")


def load_manifest(path: str | Path, *, encoding: str = "utf-8", strict: bool = True,
                  check_paths: bool = True, base_dir: str | Path | None = None,
                  confine: bool = False) -> RecordTable:
    """Read a cohort manifest: a records table with an ``mri_path`` column.

    Relative MRI paths are resolved against ``base_dir`` (default: the manifest's folder);
    a path that does not exist is an error naming the subject. A row without a path is valid
    (record only).

    Args:
        path: the manifest CSV/JSON.
        encoding: its text encoding.
        strict: raise on any error; otherwise bad rows are listed in ``issues``.
        check_paths: check that each MRI file exists.
        base_dir: the folder relative paths start from.
        confine: refuse absolute paths and paths that leave ``base_dir`` (for manifests
            uploaded to a server, which must not read arbitrary files).

    Raises:
        InputError: as :func:`load_records`, plus a missing ``mri_path`` column or files.
    """
    manifest = Path(path)
    base = Path(base_dir) if base_dir is not None else manifest.parent
    raw = read_table(manifest, encoding)
    if "mri_path" not in raw.columns:
        raise InputError(f"{manifest}: a manifest needs an 'mri_path' column (it may be empty "
                         "for subjects without an MRI)")
    table = map_table(raw, require_id=True)
    resolved: list[ManifestRow] = []
    for row, line in zip(table.rows, table.lines, strict=True):
        if row.mri_path:
            p = Path(row.mri_path)
            problem = None
            if confine and p.is_absolute():
                problem = "absolute paths are not allowed here; give a path relative to " \
                          "the data folder"
            elif confine and not (base / p).resolve().is_relative_to(base.resolve()):
                problem = "the path leaves the data folder"
            p = p if p.is_absolute() else (base / p)
            if problem is None and check_paths and not p.is_file():
                problem = "MRI file not found"
            if problem:
                table.issues.append(Issue("error", problem, str(manifest), line,
                                          row.subject_id, "mri_path", row.mri_path))
            row = row.model_copy(update={"mri_path": str(p)})
        resolved.append(row)
    table.rows = resolved
    if strict:
        InputError.raise_if_errors(table.issues, summary=f"{manifest}: {len(table.errors)} "
                                   "problem(s) in the manifest")
    return table


def to_adnimerge_row(row: ClinicalRecord, rid: int) -> dict[str, str]:
    """Write a record with ADNIMERGE column names (plus MediAD's vascular extension columns)."""
    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    dx = {"CN": "CN", "MCI": "MCI", "AD": "Dementia"}.get(row.diagnosis or "", "")
    dx_bl = {"CN": "CN", "MCI": "LMCI", "AD": "AD"}.get(row.diagnosis or "", "")
    return {
        "RID": str(rid), "PTID": row.subject_id, "VISCODE": row.visit, "SITE": fmt(row.site),
        "DX_bl": dx_bl if row.visit == "bl" else "", "DX": dx, "AGE": fmt(row.age),
        "PTGENDER": {"female": "Female", "male": "Male"}.get(row.sex or "", ""),
        "PTEDUCAT": fmt(row.education_years), "APOE4": fmt(row.apoe4), "MMSE": fmt(row.mmse),
        "CDRSB": fmt(row.cdr_sb), "ADAS13": fmt(row.adas13), "FAQ": fmt(row.faq),
        "HYPERTENSION": fmt(row.hypertension), "DIABETES": fmt(row.diabetes),
        "SMOKING": fmt(row.smoking), "BMI": fmt(row.bmi), "NOTES": fmt(row.notes),
    }


#: JSON Schema files in ``data_schemas/``, generated from these models.
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "clinical_record.schema.json": ClinicalRecord,
    "manifest_row.schema.json": ManifestRow,
}


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of each record model, as written to ``data_schemas/``."""
    return {name: json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
            for name, model in SCHEMA_FILES.items()}
