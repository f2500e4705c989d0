"""``mediad`` command line: parses arguments and calls the library, nothing more.

User mistakes (:class:`~mediad.errors.MediADError`, invalid settings) print a message and
exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mediad import __version__
from mediad.errors import MediADError
from mediad.io import atomic_write_text

__all__ = ["app"]

app = typer.Typer(
    name="mediad",
    help="MediAD: CN / MCI / AD from a T1 MRI and a clinical record. Research use only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)  # long paths and messages stay on one line (grep-able)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn user mistakes into a message and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MediADError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                     for e in exc.errors()]
            err.print("[bold red]error:[/] invalid settings\n" + "\n".join(lines),
                      highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


#: Options several commands share, declared once.
MniInputs = Annotated[bool, typer.Option("--mni-inputs", help="The MRIs are already "
                                         "brain-extracted and registered to MNI152: skip "
                                         "preprocessing.")]
Workers = Annotated[int, typer.Option(min=1, help="Processes preprocessing raw MRIs.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"mediad {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """MediAD command line. Research use only; not for clinical decisions."""


@app.command()
@_friendly
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create for the cohort.")],
    n_subjects: Annotated[int, typer.Option(min=3, help="Number of subjects.")] = 200,
    confounding: Annotated[float, typer.Option(min=0.0, max=1.0,
                                               help="Site-diagnosis selection bias.")] = 0.8,
    shift: Annotated[str, typer.Option(help="none, removed or reversed (S-D and age-D "
                                       "links).")] = "none",
    site_shift: Annotated[str | None, typer.Option(help="The site-diagnosis link alone: "
                                                   "none, removed or reversed (default: "
                                                   "--shift).")] = None,
    age_shift: Annotated[str | None, typer.Option(help="The age-diagnosis link alone "
                                                  "(default: --shift).")] = None,
    sites: Annotated[Path | None, typer.Option(help="YAML file of scanner profiles (name, "
                                               "selection, gamma, blur_mm, noise, bias, "
                                               "scale, orientation, dtype, whole_head); "
                                               "default: SITE-A/B/C.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    spacing: Annotated[float, typer.Option(help="Output voxel size, mm.")] = 3.0,
    shape: Annotated[str | None, typer.Option(help="Output grid, e.g. 64,64,64 "
                                              "(default: brain + margin).")] = None,
    missing_rate: Annotated[float, typer.Option(help="Share of optional fields left "
                                                "unrecorded.")] = 0.05,
    missing_mri_rate: Annotated[float, typer.Option(help="Share of subjects with a record "
                                                    "and no MRI.")] = 0.0,
    partial_record_rate: Annotated[float, typer.Option(help="Share of records with no "
                                                       "cognitive score.")] = 0.0,
    workers: Annotated[int, typer.Option(min=1, help="Rendering processes.")] = 1,
    native_space: Annotated[bool, typer.Option(help="Raw T1s as a scanner writes them "
                                               "(each head its own pose, some whole "
                                               "heads); off: brains on the template "
                                               "grid.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Draw a synthetic confounded cohort (volumes, records, manifest, ground truth, card)."""
    from mediad.data.simulate import SimulationConfig, load_site_profiles, simulate_cohort

    cfg = SimulationConfig(n_subjects=n_subjects, confounding=confounding, shift=shift,
                           site_shift=site_shift, age_shift=age_shift,
                           sites=None if sites is None else load_site_profiles(sites),
                           seed=seed, spacing=spacing, shape=_parse_shape(shape),
                           missing_rate=missing_rate, missing_mri_rate=missing_mri_rate,
                           partial_record_rate=partial_record_rate, workers=workers,
                           native_space=native_space)
    with _progress("simulating") as update:
        folder = simulate_cohort(cfg, out_dir, overwrite=overwrite, progress=update)
    _print_cohort(folder)


def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 8:
        raise MediADError(f"--shape {text!r}: expected three sizes of at least 8, e.g. 64,64,64")
    return parts  # type: ignore[return-value]


def _print_cohort(folder: Path) -> None:
    card = json.loads((folder / "dataset_card.json").read_text(encoding="utf-8"))
    counts = ", ".join(f"{k} {v}" for k, v in card["diagnosis_counts"].items())
    accs = card["balanced_accuracy"]
    out.print(f"[bold]Cohort[/] {folder}")
    out.print(f"  {card['n_subjects']} subjects ({counts}); "
              f"confounding {card['config']['confounding']}, shift {card['config']['shift']}"
              + "".join(f", {k.replace('_', ' ')} {card['config'][k]}"
                        for k in ("site_shift", "age_shift") if card['config'].get(k)))
    out.print(f"  site-diagnosis NMI {card['nmi_site_diagnosis']:.3f}; balanced accuracy of "
              "ground-truth variables (5-fold CV):")
    for name, value in accs.items():
        shown = "n/a (too few subjects)" if value is None else f"{value:.2f}"
        out.print(f"    {name:<48} {shown}", highlight=False)
    out.print(f"  manifest {folder / 'manifest.csv'}\n  records  {folder / 'records.csv'}\n"
              f"  card     {folder / 'dataset_card.md'}")


@app.command()
@_friendly
def validate(
    path: Annotated[Path, typer.Argument(help="Cohort folder, manifest/records CSV or JSON, "
                                         "or a NIfTI file.")],
    quick: Annotated[bool, typer.Option(help="Read MRI headers only (skip voxel "
                                        "checks).")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of tables.")] = "utf-8",
    show_mapping: Annotated[bool, typer.Option(help="List which source value became which "
                                               "internal value.")] = False,
) -> None:
    """Check inputs like a linter: every problem at once; exit status 1 if any is found."""
    from mediad.data.validate import validate_path

    with _progress("checking MRIs") as update:
        report = validate_path(path, check_voxels=not quick, encoding=encoding, progress=update)
    for issue in report.issues:
        if issue.severity == "info":
            err.print(f"[blue]info:[/] {escape(issue.message)}", highlight=False)
    colour = {"error": "red", "warning": "yellow"}
    for issue in report.issues:
        if issue.severity != "info":
            out.print(f"[{colour[issue.severity]}]{issue.severity}[/]: "
                      + escape(f"{issue.location()}: {issue.message}"), highlight=False)
    if show_mapping and report.translations:
        out.print("[bold]Mapped values[/]")
        for line in report.translations:
            out.print(f"  {line}", highlight=False)
    vocab = f", {report.vocabulary} columns" if report.vocabulary else ""
    summary = (f"{path}: {report.kind}{vocab}, {report.n_rows} row(s), {report.n_images} "
               f"MRI(s) checked: {len(report.errors)} error(s), {len(report.warnings)} "
               "warning(s)")
    if report.ok:
        out.print(f"[green]OK[/] {summary}", highlight=False)
        return
    out.print(f"[red]FAILED[/] {summary}", highlight=False)
    raise typer.Exit(1)


@app.command()
@_friendly
def preprocess(
    path: Annotated[Path, typer.Argument(help="A raw T1 (NIfTI) or a manifest of them.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")],
    skull_strip: Annotated[bool, typer.Option("--skull-strip/--no-skull-strip",
                                              help="Brain extraction (deepbet).")] = True,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Affine "
                                           "registration to MNI152 (off for inputs already "
                                           "in MNI space).")] = True,
    n4: Annotated[bool, typer.Option(help="N4 bias-field correction.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Processes (each loads the brain-"
                                         "extraction model once).")] = 1,
) -> None:
    """Raw T1 -> brain extraction -> registration to MNI152, with a QC record per subject."""
    from mediad.data.nifti import NIFTI_SUFFIXES
    from mediad.data.preprocess import PreprocessConfig, preprocess_file, preprocess_manifest

    config = PreprocessConfig(skull_strip=skull_strip, registration=register, n4=n4)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        result = preprocess_file(path, config, out_dir / "cache")
        out.print(result.qc.model_dump_json(indent=2), highlight=False, markup=False)
        out.print(f"{'reused' if result.cached else 'wrote'} {result.image}")
        if result.qc.flags:
            raise typer.Exit(1)
        return
    with _progress("preprocessing") as update:
        manifest = preprocess_manifest(path, out_dir, config, workers, update)
    out.print(f"manifest {manifest}\nQC       {out_dir / 'qc.csv'}")


@app.command()
@_friendly
def split(
    manifest: Annotated[Path, typer.Argument(help="Manifest or records table.")],
    out_file: Annotated[Path, typer.Option("--out", help="Splits JSON to write.")] = Path(
        "splits.json"),
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.15,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.15,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Split subjects (never visits) into train/val/test, stratified by diagnosis."""
    from mediad.data.records import load_records
    from mediad.data.splits import SplitConfig, make_splits

    table = load_records(manifest)
    splits = make_splits(table.rows, SplitConfig(val_fraction=val_fraction,
                                                 test_fraction=test_fraction, seed=seed))
    splits.save(out_file)
    out.print(f"{out_file}: train {len(splits.train)}, val {len(splits.val)}, "
              f"test {len(splits.test)} subjects")


@app.command()
@_friendly
def schemas(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the JSON Schema "
                                          "files.")] = Path("data_schemas"),
    check: Annotated[bool, typer.Option(help="Only check that the files are up to "
                                        "date.")] = False,
) -> None:
    """Write (or check) the JSON Schema files of the record models."""
    from mediad.data.records import json_schemas

    stale = []
    for name, text in json_schemas().items():
        target = out_dir / name
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        if current == text:
            continue
        stale.append(name)
        if not check:
            atomic_write_text(target, text)
    if check and stale:
        raise MediADError(f"out of date in {out_dir}: {', '.join(stale)}; run "
                          "`mediad schemas` to regenerate")
    out.print(f"{out_dir}: " + ("updated " + ", ".join(stale) if stale else "up to date"))


@app.command()
@_friendly
def summarize(
    path: Annotated[Path, typer.Argument(help="Manifest, records table or one JSON record.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="JSON-lines file to write "
                                                  "(resumable). Without it, summaries "
                                                  "are printed.")] = None,
    backend: Annotated[str, typer.Option(help="template, local, transformers or "
                                         "openai.")] = "local",
    model: Annotated[str | None, typer.Option(help="Local model id, HF folder or remote "
                                              "model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API "
                                             "key.")] = "OPENAI_API_KEY",
    exclude: Annotated[str, typer.Option(help="Comma-separated fields to leave out, e.g. "
                                         "mmse,cdr_sb.")] = "",
    max_attempts: Annotated[int, typer.Option(min=1, max=10)] = 3,
    cache_dir: Annotated[Path | None, typer.Option(help="Summary cache (default "
                                                   "<data dir>/cache/summaries).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the "
                                           "cache.")] = False,
    encoding: Annotated[str, typer.Option()] = "utf-8",
) -> None:
    """Turn clinical records into verified, templated summaries (never the diagnosis)."""
    from mediad.data.records import load_records
    from mediad.paths import data_dir
    from mediad.summarize import Summarizer, SummaryConfig, summarize_records

    config = SummaryConfig(
        backend=backend, model=model, base_url=base_url, api_key_env=api_key_env,
        exclude=[f.strip() for f in exclude.split(",") if f.strip()],
        max_attempts=max_attempts,
        cache_dir=None if no_cache else (cache_dir or data_dir() / "cache" / "summaries"))
    records = load_records(path, encoding=encoding).records()
    summarizer = Summarizer(config)
    err.print(f"backend {summarizer.backend}, model {summarizer.model_id}, template "
              f"{summarizer.template.version}; left out: {', '.join(summarizer.left_out) or '-'}",
              highlight=False)
    if out_file is None:
        for record in records:
            summary = summarizer.summarize(record)
            prov = summary.provenance
            out.print(summary.text, highlight=False, markup=False)
            out.print(f"[dim]source {prov.source}; sections {prov.section_sources}[/]",
                      highlight=False)
            for reason in prov.fallback_reasons:
                out.print(f"[dim]  fallback: {escape(reason)}[/]", highlight=False)
        return
    with _progress("summarising") as update:
        result = summarize_records(records, summarizer, out_file, progress=update)
    rate = result.section_acceptance
    out.print(f"{out_file}: {result.total} summaries ({result.done_before} from an earlier "
              f"run, {result.written} now, {result.cached} from the cache); sources "
              f"{dict(result.sources)}; LLM sections accepted "
              + ("n/a" if rate is None else f"{result.llm_sections_accepted}/"
                 f"{result.llm_sections} ({rate:.0%})"), highlight=False)


@app.command("train")
@_friendly
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Training YAML (see mediad/configs/demo.yaml)"
                                           ".")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder.")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    mni_inputs: MniInputs = False,
) -> None:
    """Train MediAD or a baseline (also under `torchrun --nproc_per_node N -m mediad train`).

    Raw T1s are brain-extracted and registered to MNI152 first (cached; see `mediad
    preprocess`), unless --mni-inputs or the config's `imaging.preprocess: null` says not to.
    """
    from mediad.engine.config import TrainConfig
    from mediad.engine.trainer import train

    cfg = TrainConfig.from_yaml(config)
    if mni_inputs:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
            "imaging": cfg.data.imaging.model_copy(update={"preprocess": None})})})
    result = train(cfg, out_dir, resume=resume)
    test = result.metrics.get("test", {})
    out.print(f"{out_dir}: best epoch {result.best_epoch}; test balanced accuracy "
              f"{test.get('balanced_accuracy', float('nan')):.3f} (n={test.get('n', 0)}); "
              f"checkpoint {out_dir / 'best.pt'}")


@app.command()
@_friendly
def predict(
    checkpoint: Annotated[Path | None, typer.Option(help="best.pt of a run (default: the "
                                                    "demo model).")] = None,
    mri: Annotated[Path | None, typer.Option(help="T1 NIfTI (.nii / .nii.gz).")] = None,
    record: Annotated[Path | None, typer.Option(help="The record: JSON or CSV (pick a row "
                                                "with --subject/--visit).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write the JSON "
                                                  "here.")] = None,
    task: Annotated[str | None, typer.Option(help="Refuse a checkpoint of another task "
                                             "(cn_mci_ad or cn_ad).")] = None,
    subject: Annotated[str | None, typer.Option(help="The subject to predict, when the record "
                                                "file holds several (e.g. an ADNIMERGE "
                                                "export).")] = None,
    visit: Annotated[str | None, typer.Option(help="The visit (e.g. bl, m12), when the "
                                              "subject has several.")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the record file.")] = "utf-8",
    mni_inputs: MniInputs = False,
) -> None:
    """Predict one subject; prints JSON (calibrated probabilities, flags and their reasons,
    an uncertainty statement, inputs used, summary, and the MRI's preprocessing QC)."""
    from mediad.data.records import load_records, select_record
    from mediad.engine.predictor import Predictor
    from mediad.paths import data_dir

    rec = None
    if record is not None:
        rec = select_record(load_records(record, encoding=encoding), subject, visit)
    ck = checkpoint or data_dir() / "demo-model" / "best.pt"
    result = Predictor(ck, task=task, mni_inputs=mni_inputs).predict(mri, rec)
    text = result.model_dump_json(indent=2)
    if out_file:
        atomic_write_text(out_file, text)
    out.print(text, highlight=False, markup=False)


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(help="best.pt of a run.")],
    manifest: Annotated[Path, typer.Option(help="Cohort manifest (labels optional).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")],
    force: Annotated[bool, typer.Option(help="Evaluate even if subjects overlap the training "
                                        "data (the report says so).")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for CIs.")] = 1000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    workers: Workers = 2,
    mni_inputs: MniInputs = False,
) -> None:
    """Evaluate a model on a cohort: predictions, metrics with CIs, subgroups, plots, report."""
    from mediad.experiments.evaluation import evaluate

    with _progress("preprocessing, then predicting") as update:
        result = evaluate(checkpoint, manifest, out_dir, force=force, batch_size=batch_size,
                          n_bootstrap=bootstrap, seed=seed, progress=update, workers=workers,
                          mni_inputs=mni_inputs)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    if result.metrics:
        m = result.metrics["balanced_accuracy"]
        out.print(f"balanced accuracy {m['value']:.3f} (95 % CI {m['ci_low']:.3f}-"
                  f"{m['ci_high']:.3f}) on {result.n} visit(s)")
    out.print(f"report: {out_dir / 'report.html'} and {out_dir / 'report.md'}; predictions: "
              f"{out_dir / 'predictions.csv'}")


@app.command()
@_friendly
def calibrate(
    checkpoint: Annotated[Path, typer.Option(help="best.pt of a run.")],
    manifest: Annotated[Path, typer.Option(help="Labelled cohort held out from training "
                                           "(a few hundred subjects: a site's own, say).")],
    out_file: Annotated[Path, typer.Option("--out", help="Checkpoint to write (may be "
                                           "CHECKPOINT itself; name it <folder>/best.pt "
                                           "for the app to list it).")],
    force: Annotated[bool, typer.Option(help="Fit even on subjects the model was trained "
                                        "on (over-confident).")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    workers: Workers = 2,
    mni_inputs: MniInputs = False,
    class_bias: Annotated[bool, typer.Option(
        "--class-bias", help="Also fit a class bias beside each temperature (100+ labelled "
        "subjects; kept where it lowers the cross-validated log loss): for a population "
        "whose class mix the answers miss as a whole. It can change the top class.")] = False,
) -> None:
    """Refit a model's temperatures, per input pattern, on a labelled held-out cohort (the
    network and its out-of-distribution thresholds stay as trained)."""
    from mediad.engine.recalibrate import recalibrate

    with _progress("preprocessing, then scoring") as update:
        result = recalibrate(checkpoint, manifest, out_file, workers=workers,
                             mni_inputs=mni_inputs, batch_size=batch_size, force=force,
                             class_bias=class_bias, progress=update)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    width = max(len("inputs"), *(len(p) for p in result.patterns))
    out.print(f"{'inputs':<{width}}    n  temperature     ECE uncalibrated / old T / new T "
              "(on these subjects)", highlight=False)
    for pattern, r in result.patterns.items():
        t_new = "kept" if r.new_temperature is None else f"{r.new_temperature:.2f}"
        bias = ("" if r.new_bias is None else "  class bias "
                + " / ".join(f"{b:+.2f}" for b in r.new_bias))
        out.print(f"{pattern:<{width}} {r.n:>4}  {r.old_temperature:.2f} -> {t_new:<6}  "
                  f"{fmt(r.ece_uncalibrated)} / {fmt(r.ece_old)} / {fmt(r.ece_new)}"
                  + bias + (f"  ({r.note})" if r.note else ""), highlight=False)
    if result.skipped_mri:
        err.print(f"[yellow]warning:[/] {result.skipped_mri} MRI(s) could not be read or "
                  "preprocessed; their subjects count for the record-only pattern only "
                  "(`mediad validate` names them)")
    out.print(f"wrote {out_file}")


@app.command()
@_friendly
def ablate(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (resumable).")],
    config: Annotated[Path | None, typer.Option(help="Ablation YAML (see mediad."
                                                "experiments.ablation.AblationConfig).")] = None,
    quick: Annotated[bool, typer.Option(help="concat vs MediAD at confounding 0 and 0.8, "
                                        "one seed, five test sets (under 20 min on 2 "
                                        "cores).")] = False,
) -> None:
    """Train the variant x confounding x seed grid; score it on five test sets (in
    distribution, site reversed, age reversed, unseen scanner, combined)."""
    from mediad.experiments.ablation import QUICK, AblationConfig, run_ablation

    if quick and config:
        raise MediADError("give either --quick or --config, not both")
    cfg = QUICK if quick else (AblationConfig.from_yaml(config) if config else
                               AblationConfig())
    run_ablation(cfg, out_dir, log=lambda m: err.print(m, highlight=False))
    out.print((out_dir / "ablation.md").read_text(encoding="utf-8"), highlight=False,
              markup=False)


@app.command("app")
@_friendly
def app_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on (local only by "
                                      "default).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default "
                                                  "$MEDIAD_DATA_DIR or ./mediad-data).")] = None,
    demo_assets: Annotated[bool, typer.Option("--demo/--no-demo", help="Build the demo "
                                              "cohort and model first if absent.")] = True,
) -> None:
    """Launch the Streamlit app (research use only) and print its URL."""
    import os
    import socket

    if data_dir is not None:
        os.environ["MEDIAD_DATA_DIR"] = str(data_dir.resolve())
    if demo_assets:
        _start_workers_for_demo()  # before the heavy import below, to overlap with it
        from mediad.experiments.demo import DEMO_COHORT, ensure_demo_cohort, ensure_demo_model
        from mediad.workers import shared_workers

        with shared_workers(DEMO_COHORT.workers):  # its workers then preprocess it
            with _progress("demo cohort") as update:
                ensure_demo_cohort(progress=update)
            if not _demo_built():
                out.print("Demo model, the first time only: preprocessing 300 MRIs, training "
                          "it and refitting its temperatures (3–4 minutes on 2 cores)…")
            ensure_demo_model()
        _build_held_out_in_background()
    import ui

    script = Path(ui.__file__).with_name("app.py")
    if port is None:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    out.print(f"[bold]MediAD[/] (research use only) at [link]http://{host}:{port}[/link] — "
              "Ctrl+C to stop")
    cmd = streamlit_command(script, host, port)
    raise typer.Exit(_serve(cmd))


def streamlit_command(script: Path, host: str, port: int) -> list[str]:
    """How the app is served: local only unless told, no telemetry, no Deploy button."""
    import os
    import sys

    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
            "--server.maxUploadSize", os.environ.get("MEDIAD_MAX_UPLOAD_MB", "256")]


def _demo_built(root: Path | None = None) -> bool:
    """Whether the demo model was trained (it may still need a refit or a rebuild)."""
    from mediad.paths import data_dir

    return ((root or data_dir()) / "demo-model" / "source.json").is_file()


def _start_workers_for_demo(root: Path | None = None) -> None:
    """A first start builds the demo in worker processes: let them import while we do."""
    from mediad.workers import start_worker_server

    if not _demo_built(root):
        start_worker_server()


def _build_held_out_in_background() -> None:
    """The held-out demo cohort (the Patient page's demo subject, the Cohort page's example)
    is not needed to open the app: build it in a low-priority process that stops with us."""
    import os
    import subprocess
    import sys

    from mediad.experiments.demo import DEMO_SHIFTED, demo_cohort_ready

    if demo_cohort_ready(shifted=True):
        return

    def start() -> None:
        _die_with_parent()
        os.nice(10)

    subprocess.Popen([sys.executable, "-c", "from mediad.experiments.demo import "
                      "ensure_demo_cohort; ensure_demo_cohort(shifted=True)"],
                     preexec_fn=start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out.print(f"Building the held-out demo cohort ({DEMO_SHIFTED.n_subjects} subjects) in "
              "the background; the demo subject is ready in about a minute.")


def _die_with_parent() -> None:
    """In the server process (Linux): get SIGTERM when `mediad app` dies, even by SIGKILL."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _serve(cmd: list[str]) -> int:
    """Run the server until it ends or we are stopped; stopping us always stops it too."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts us in the background leaves it ignored, and Ctrl+C
    # or `kill -INT` must still stop the server
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM,
                                                    signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
@_friendly
def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Where to keep demo data "
                                                  "(default $MEDIAD_DATA_DIR or "
                                                  "./mediad-data).")] = None,
    label_blind: Annotated[bool, typer.Option(help="Also build the label-blind demo model "
                                              "(no MMSE, no CDR-SB), to see what the MRI "
                                              "and the rest of the record add.")] = False,
    reference: Annotated[bool, typer.Option(help="Also build the reference model: the same "
                                            "network trained on 600 subjects with scanner "
                                            "augmentation for 40 epochs (about 12 minutes "
                                            "on 2 cores), whose MRI-only answers read the "
                                            "anatomy rather than the scanner.")] = False,
) -> None:
    """Build the demo cohort (first time only), validate it and say what it holds."""
    _start_workers_for_demo(data_dir)
    from mediad.data.validate import validate_path
    from mediad.experiments.demo import ensure_demo_cohort

    out.print("[bold]MediAD[/] demo — research use only, not for clinical decisions.")
    with _progress("building the demo cohort") as update:
        folder, built = ensure_demo_cohort(data_dir, progress=update)
    out.print(("Built" if built else "Reusing") + f" the demo cohort in {folder}")
    with _progress("validating") as update:
        report = validate_path(folder, progress=update)
    if not report.ok:
        for issue in report.errors[:20]:
            err.print(str(issue), highlight=False)
        raise MediADError(f"the demo cohort in {folder} failed validation; delete the folder "
                          "and run again")
    out.print(f"[green]Valid:[/] {report.n_rows} subjects, {report.n_images} MRIs checked.")
    _print_cohort(folder)
    from mediad.experiments.demo import CALIBRATION_REPORT, ensure_demo_model

    variants = [(False, False)] + [(True, False)] * label_blind + [(False, True)] * reference
    for blind, ref in variants:
        if ref:
            with _progress("building the reference cohort (600 subjects)") as update:
                ensure_demo_cohort(data_dir, progress=update, reference=True)
        out.print(("Reference model" if ref else "Demo model")
                  + " (MediAD, MRI + summary + record fields"
                  + (", without MMSE and CDR-SB):" if blind else "):"))
        best, built = ensure_demo_model(data_dir, label_blind=blind, reference=ref)
        metrics = json.loads((best.parent / "metrics.json").read_text(encoding="utf-8"))
        test = metrics.get("test", {})
        out.print(f"  {'trained' if built else 'reusing'} {best}; in-distribution test "
                  f"balanced accuracy {test.get('balanced_accuracy', float('nan')):.3f} "
                  f"(n={test.get('n')}; MMSE and CDR-SB "
                  f"{'left out' if blind else 'among the inputs'})")
        report = best.parent / CALIBRATION_REPORT
        if report.is_file():
            fits = json.loads(report.read_text(encoding="utf-8"))["patterns"]
            out.print("  temperatures refitted on new subjects (`mediad calibrate`): " + "; ".join(
                f"{p} {f['old_temperature']:.2f} -> " + (
                    "kept" if f["new_temperature"] is None else f"{f['new_temperature']:.2f}")
                + (" with a class bias" if f.get("new_bias") else "")
                + f" (n={f['n']})" for p, f in fits.items()))


if __name__ == "__main__":  # pragma: no cover
    app()
