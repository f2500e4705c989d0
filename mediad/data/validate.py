"""``mediad validate``: check a manifest, records file, cohort folder or MRI like a linter.

Every problem is reported at once (file, line, subject, field, value, what was expected),
not just the first; nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mediad.data.imaging import inspect_volume
from mediad.data.nifti import NIFTI_SUFFIXES
from mediad.data.records import load_manifest, load_records, read_table
from mediad.errors import ImageError, InputError, Issue

__all__ = ["ValidationReport", "validate_path"]


@dataclass
class ValidationReport:
    """What ``validate`` found in one path."""

    path: str
    kind: str  # manifest, records, image, cohort
    n_rows: int = 0
    n_images: int = 0
    vocabulary: str | None = None
    issues: list[Issue] = field(default_factory=list)
    translations: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_path(path: str | Path, *, check_voxels: bool = True, encoding: str = "utf-8",
                  progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Validate a cohort folder, manifest, records table or NIfTI file.

    Args:
        path: a folder holding ``manifest.csv`` (and optionally ``records.csv``), a CSV/JSON
            table (a manifest when it has an ``mri_path`` column), or a ``.nii[.gz]`` file.
        check_voxels: decode every MRI (finds truncated files, NaN, constant volumes);
            off, only headers are read.
        encoding: text encoding of tables.
        progress: called with ``(done, total)`` while images are checked.

    Returns:
        The report; ``report.ok`` is false when any error was found.
    """
    p = Path(path)
    if p.is_dir():
        report = _validate_folder(p, check_voxels, encoding, progress)
    elif p.name.lower().endswith(NIFTI_SUFFIXES):
        report = ValidationReport(str(p), "image", n_images=1)
        report.issues += _image_issues(p, None, check_voxels)
    else:
        report = _validate_table(p, check_voxels, encoding, progress)
    report.issues.sort(key=lambda i: (i.file or "", i.line or 0))  # stable: keeps kinds' order
    return report


def _validate_folder(folder: Path, check_voxels: bool, encoding: str,
                     progress: Callable[[int, int], None] | None) -> ValidationReport:
    report = ValidationReport(str(folder), "cohort")
    tables = [folder / n for n in ("manifest.csv", "records.csv") if (folder / n).is_file()]
    if not tables:
        report.issues.append(Issue("error", "no manifest.csv or records.csv in this folder",
                                   str(folder)))
    for table in tables:
        sub = _validate_table(table, check_voxels, encoding, progress)
        report.issues += sub.issues
        report.translations += sub.translations
        report.n_images += sub.n_images
        if sub.kind == "manifest":
            report.n_rows, report.vocabulary = sub.n_rows, sub.vocabulary
    return report


def _validate_table(p: Path, check_voxels: bool, encoding: str,
                    progress: Callable[[int, int], None] | None) -> ValidationReport:
    report = ValidationReport(str(p), "records")
    try:
        columns = read_table(p, encoding).columns
        if "mri_path" in columns:
            report.kind = "manifest"
            table = load_manifest(p, encoding=encoding, strict=False)
        else:
            table = load_records(p, encoding=encoding, strict=False)
    except InputError as exc:
        report.issues += exc.issues
        return report
    report.n_rows, report.vocabulary = len(table.rows), table.vocabulary
    report.issues += table.issues
    report.translations = table.translation_lines()
    if report.kind != "manifest":
        return report
    missing = {(i.line, i.subject) for i in table.issues if i.field == "mri_path"}
    todo = [(row, line) for row, line in zip(table.rows, table.lines, strict=True)
            if row.mri_path and (line, row.subject_id) not in missing]
    for i, (row, line) in enumerate(todo):
        report.issues += _image_issues(Path(row.mri_path), (p, line, row.subject_id),
                                       check_voxels)
        if progress:
            progress(i + 1, len(todo))
    report.n_images = len(todo)
    shared = [path for path, n in Counter(r.mri_path for r in table.rows if r.mri_path).items()
              if n > 1]
    for path in shared:
        report.issues.append(Issue("warning", "the same MRI file is listed for several rows",
                                   str(p), field="mri_path", value=path))
    without = sum(1 for r in table.rows if not r.mri_path)
    if without:
        report.issues.append(Issue("info", f"{without} row(s) have no MRI; they will be "
                                   "predicted from the record alone", str(p)))
    return report


def _image_issues(image: Path, where: tuple[Path, int | None, str] | None,
                  check_voxels: bool) -> list[Issue]:
    try:
        inspect_volume(image, check_voxels=check_voxels)
    except ImageError as exc:
        if where is None:
            return [Issue("error", exc.reason, str(image))]
        manifest, line, subject = where
        return [Issue("error", exc.reason, str(manifest), line, subject, "mri_path",
                      str(image))]
    return []
