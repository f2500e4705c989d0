from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.metrics import normalized_mutual_info_score

from mediad.data import simulate
from mediad.data.records import load_manifest, load_records
from mediad.data.simulate import (
    HIPPOCAMPUS_CENTERS_MM,
    HIPPOCAMPUS_RADII_MM,
    VENTRICLES_CENTER_MM,
    VENTRICLES_RADII_MM,
    SimulationConfig,
    draw_population,
    render_subject,
    simulate_cohort,
)
from mediad.errors import MediADError


def roi_mean(vol: np.ndarray, affine: np.ndarray, centres: Sequence[Sequence[float]],
             radii: Sequence[float]) -> float:
    """Mean intensity inside ellipsoids given in world (RAS mm) coordinates."""
    ijk = np.argwhere(np.ones(vol.shape, bool))
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.zeros(len(world), bool)
    for c in centres:
        inside |= (((world - np.array(c)) / np.array(radii)) ** 2).sum(1) < 1
    return float(vol.reshape(-1)[inside].mean())


def population(confounding: float, shift: str = "none", n: int = 4000) -> pd.DataFrame:
    return draw_population(SimulationConfig(n_subjects=n, confounding=confounding, shift=shift,
                                            seed=11))


def p_ad(frame: pd.DataFrame, site: str) -> float:
    return float((frame.loc[frame.site == site, "diagnosis"] == "AD").mean())


def test_site_diagnosis_nmi_follows_confounding() -> None:
    nmi = {c: normalized_mutual_info_score(f.site, f.diagnosis)
           for c, f in ((c, population(c)) for c in (0.0, 0.4, 0.8))}
    assert nmi[0.8] > 0.2
    assert nmi[0.0] < 0.01
    assert nmi[0.0] < nmi[0.4] < nmi[0.8]


def test_shift_reverses_or_removes_site_and_age_links() -> None:
    codes = {"CN": 0, "MCI": 1, "AD": 2}
    for shift, sign in (("none", 1), ("removed", 0), ("reversed", -1)):
        f = population(0.8, shift)
        site_gap = p_ad(f, "SITE-A") - p_ad(f, "SITE-B")  # memory clinic minus community
        age_corr = np.corrcoef(f.age, f.diagnosis.map(codes))[0, 1]
        if sign:
            assert sign * site_gap > 0.3 and sign * age_corr > 0.15, (shift, site_gap, age_corr)
        else:
            assert abs(site_gap) < 0.08 and abs(age_corr) < 0.05, (shift, site_gap, age_corr)


@pytest.mark.parametrize(("site_shift", "age_shift"), [("reversed", "none"),
                                                      ("none", "reversed"),
                                                      ("removed", "reversed")])
def test_shift_axes_move_independently(site_shift: str, age_shift: str) -> None:
    """site_shift and age_shift each move one link; --confounding keeps its meaning."""
    codes = {"CN": 0, "MCI": 1, "AD": 2}
    f = draw_population(SimulationConfig(n_subjects=4000, confounding=0.8, seed=11,
                                         site_shift=site_shift, age_shift=age_shift))
    site_gap = p_ad(f, "SITE-A") - p_ad(f, "SITE-B")
    age_corr = np.corrcoef(f.age, f.diagnosis.map(codes))[0, 1]
    sign = {"none": 1, "removed": 0, "reversed": -1}
    for value, which, big in ((site_gap, site_shift, 0.3), (age_corr, age_shift, 0.15)):
        if sign[which]:
            assert sign[which] * value > big, (site_shift, age_shift, site_gap, age_corr)
        else:
            assert abs(value) < 0.08, (site_shift, age_shift, site_gap, age_corr)


SCANNERS = """
sites:
  - name: SITE-Q
    description: a scanner of our own
    selection: [0, 0, 0]
    gamma: 0.5
    noise: 0.0
    bias: 0.0
    scale: 100
    orientation: LAS
    dtype: uint16
  - {name: SITE-R, gamma: 1.8, blur_mm: 1.0, dtype: int16, orientation: PIR}
"""


def test_site_profiles_from_yaml_reach_the_workers(tmp_path: Path) -> None:
    """A cohort from user-defined scanners, rendered in two spawned workers: every file is
    written as its own scanner writes (dtype, orientation) and only those sites appear."""
    path = tmp_path / "scanners.yaml"
    path.write_text(SCANNERS)
    sites = simulate.load_site_profiles(path)
    assert [s.name for s in sites] == ["SITE-Q", "SITE-R"] and sites[0].gamma == 0.5
    out = simulate_cohort(SimulationConfig(n_subjects=6, seed=4, spacing=8.0, sites=sites,
                                           workers=2, native_space=False), tmp_path / "c")
    truth = pd.read_csv(out / "ground_truth.csv")
    assert set(truth.site) <= {"SITE-Q", "SITE-R"}
    for row in truth.itertuples():
        img = nib.load(out / "images" / f"sub-{row.subject_id}_ses-bl_T1w.nii.gz")
        profile = sites[0] if row.site == "SITE-Q" else sites[1]
        assert str(img.get_data_dtype()) == profile.dtype
        assert "".join(nib.aff2axcodes(img.affine)) == profile.orientation
    assert "SITE-Q" in (out / "dataset_card.md").read_text()


@pytest.mark.parametrize(("text", "expected"), [
    ("sites: []", "expected a list"),
    ("- {name: A, gamma: -1}", "site profile 1 (A): gamma"),
    ("- {name: A}\n- {name: B, colour: red}", "site profile 2 (B): colour"),
    ("- {name: A}\n- {name: A}", "unique"),
    ("- {name: A, orientation: XYZ}", "orientation"),
    ("[unclosed", "not valid YAML"),
])
def test_bad_site_profiles_are_named(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(MediADError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        simulate.load_site_profiles(path)


def test_shift_keeps_the_causal_mechanisms() -> None:
    """Image factors depend on D and age the same way in the shifted cohort."""
    coefs = []
    for shift in ("none", "reversed"):
        f = population(0.8, shift)
        x = np.c_[pd.get_dummies(f.diagnosis).to_numpy(float), f.age - 73]
        coefs.append(np.linalg.lstsq(x, f.hippocampal_atrophy, rcond=None)[0])
    assert np.abs(coefs[0] - coefs[1]).max() < 0.01


def test_ground_truth_atrophy_grows_cn_mci_ad_and_age_drives_global_atrophy() -> None:
    f = population(0.8)
    m = f.groupby("diagnosis").hippocampal_atrophy.mean()
    assert m["CN"] + 0.08 < m["MCI"] and m["MCI"] + 0.08 < m["AD"]
    assert np.corrcoef(f.age, f.global_atrophy)[0, 1] > 0.8


def test_intervening_on_diagnosis_shrinks_the_hippocampus_only() -> None:
    """Same subject, same seed, only the hippocampal factor changed: the ROI darkens."""
    base = {"hippocampal_atrophy": 0.0, "global_atrophy": 0.2, "n_lesions": 0, "site_index": 0}
    hippo, brain = [], []
    for h in (0.0, 0.13, 0.26):
        vol, aff = render_subject({**base, "hippocampal_atrophy": h}, 4.0, seed=1,
                                  site_effects=False)
        hippo.append(roi_mean(vol, aff, HIPPOCAMPUS_CENTERS_MM, HIPPOCAMPUS_RADII_MM))
        brain.append(float(vol.mean()))
    assert hippo[0] - hippo[1] > 0.03 and hippo[1] - hippo[2] > 0.03
    assert max(brain) - min(brain) < 0.005  # a local effect, not a global one


def test_intervening_on_age_enlarges_ventricles_and_thins_cortex() -> None:
    base = {"hippocampal_atrophy": 0.0, "global_atrophy": 0.0, "n_lesions": 0, "site_index": 0}
    ventricles, brain = [], []
    for g in (0.0, 0.2, 0.4):
        vol, aff = render_subject({**base, "global_atrophy": g}, 4.0, seed=1,
                                  site_effects=False)
        ventricles.append(roi_mean(vol, aff, [VENTRICLES_CENTER_MM], VENTRICLES_RADII_MM))
        brain.append(float(vol.mean()))
    assert ventricles[0] > ventricles[1] > ventricles[2]
    assert brain[0] > brain[1] > brain[2]


def test_lesions_darken_white_matter() -> None:
    base = {"hippocampal_atrophy": 0.0, "global_atrophy": 0.2, "site_index": 0}
    clean, _ = render_subject({**base, "n_lesions": 0}, 4.0, seed=2, site_effects=False)
    lesioned, _ = render_subject({**base, "n_lesions": 12}, 4.0, seed=2, site_effects=False)
    assert (clean - lesioned).max() > 0.2 and (lesioned <= clean + 1e-6).all()


def test_one_part_of_a_scan_drawn_anew() -> None:
    """``redraw`` changes one part of the scanner and keeps the rest: on a site without
    blur, a new blur draw leaves the scan as it was; a new noise pattern changes it by
    about the noise level, in white noise (measured: a 4 mm Gaussian keeps 15 % of it); a
    new bias field changes it smoothly (90 % kept), with the noise left as it was."""
    from mediad.data.simulate import SCANNER_PARTS, SITES

    truth = {"hippocampal_atrophy": 0.1, "global_atrophy": 0.2, "n_lesions": 2,
             "site_index": 0, "head_scale": 1.0}  # SITE-A: no blur, noise 0.015
    assert SITES[0].blur_mm == 0
    first, _ = render_subject(truth, 4.0, seed=2)
    inside = first > 0.1
    again = {part: render_subject(truth, 4.0, seed=2, redraw=(part, 7))[0]
             for part in SCANNER_PARTS}
    assert np.array_equal(again["blur"], first)

    def smooth_share(part: str) -> float:
        """How much of the change a 4 mm Gaussian keeps: ~1 smooth, ~0 white."""
        change = (again[part] - first) * inside
        return float(np.std(ndimage.gaussian_filter(change, 1.0)[inside])
                     / np.std(change[inside]))

    noise = np.std((again["noise_pattern"] - first)[inside])
    assert 0.5 * SITES[0].noise < noise < 3 * SITES[0].noise
    assert smooth_share("noise_pattern") < 0.3 < 0.8 < smooth_share("bias")
    assert not np.array_equal(again["contrast"], first)
    with pytest.raises(ValueError, match="unknown part 'gain'"):
        render_subject(truth, 4.0, seed=2, redraw=("gain", 7))  # type: ignore[arg-type]


def test_lesions_belong_to_the_brain_not_to_the_scan() -> None:
    """A second scan of one brain (moved, or with the scanner's own new draws) shows its
    lesions where the first did: they are anatomy, placed in template space."""
    from mediad.data.simulate import head_pose

    base = {"hippocampal_atrophy": 0.0, "global_atrophy": 0.2, "site_index": 0,
            "head_scale": 1.0}
    pose = {"rotation_x_deg": 8.0, "rotation_z_deg": -5.0, "shift_y_mm": 7.0,
            "head_scale": 1.05}

    def lesion_map(truth: dict, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
        clean, aff = render_subject({**truth, "n_lesions": 0}, 4.0, seed=seed,
                                    site_effects=False)
        lesioned, _ = render_subject({**truth, "n_lesions": 6}, 4.0, seed=seed,
                                     site_effects=False)
        return clean - lesioned, aff

    still, aff = lesion_map(base)
    moved, _ = lesion_map({**base, **pose})
    # the moved scan's lesion map, looked up at where each unmoved voxel went
    m = np.linalg.inv(aff) @ head_pose({**base, **pose}) @ aff
    back = ndimage.affine_transform(moved, m[:3, :3], m[:3, 3], order=1)
    assert still.max() > 0.2
    assert np.corrcoef(still.ravel(), back.ravel())[0, 1] > 0.8
    other, _ = lesion_map(base, seed=3)  # another brain: lesions elsewhere
    assert np.corrcoef(still.ravel(), other.ravel())[0, 1] < 0.3
    a, _ = render_subject({**base, "n_lesions": 6}, 4.0, seed=2, scan_seed=10)
    b, _ = render_subject({**base, "n_lesions": 6}, 4.0, seed=2, scan_seed=11)
    assert not np.allclose(a, b)  # new noise, the same lesions (the scan_seed's contract)


def brain_centroid_and_volume(vol: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    inside = np.argwhere(vol > 0.1)
    centroid = inside.mean(0) @ affine[:3, :3].T + affine[:3, 3]
    return centroid, len(inside) * abs(np.linalg.det(affine[:3, :3])) / 1000


def test_pose_moves_scales_and_tilts_the_head() -> None:
    base = {"hippocampal_atrophy": 0.1, "global_atrophy": 0.2, "n_lesions": 0, "site_index": 0,
            "head_scale": 1.0}  # native space, in the template's own pose
    still, a0 = render_subject(base, 4.0, seed=1, site_effects=False)
    c0, v0 = brain_centroid_and_volume(still, a0)
    moved, a1 = render_subject({**base, "shift_x_mm": 10.0, "shift_z_mm": -6.0,
                                "head_scale": 0.9}, 4.0, seed=1, site_effects=False)
    c1, v1 = brain_centroid_and_volume(moved, a1)
    np.testing.assert_allclose(c1 - c0, [10.0, 0.0, -6.0], atol=2.0)
    assert abs(v1 / v0 - 0.9**3) < 0.05
    tilted, a2 = render_subject({**base, "rotation_x_deg": 10.0}, 4.0, seed=1,
                                site_effects=False)
    c2, v2 = brain_centroid_and_volume(tilted, a2)
    np.testing.assert_allclose(c2, c0, atol=2.0)  # about the brain's own centre
    assert abs(v2 / v0 - 1) < 0.03
    assert still.shape == tilted.shape and not np.allclose(still, tilted, atol=0.2)


def test_whole_head_sites_write_skull_and_scalp_others_a_brain() -> None:
    """What the preprocessing must tell apart: a brain-extracted image (zero background, a
    brain's volume) and a whole head (skull, scalp, noisy air)."""
    from mediad.data.preprocess import looks_extracted

    base = {"hippocampal_atrophy": 0.1, "global_atrophy": 0.2, "n_lesions": 1,
            "site_index": 2, "head_scale": 0.95}
    brain, ab = render_subject(base, 4.0, seed=3)
    head, ah = render_subject({**base, "whole_head": True}, 4.0, seed=3)
    assert looks_extracted(nib.Nifti1Image(brain, ab)) is not None
    assert looks_extracted(nib.Nifti1Image(head, ah)) is None
    assert head.size > brain.size  # the field of view holds the whole head


def test_native_cohort_draws_poses_in_range_and_ids_carry_no_site() -> None:
    f = draw_population(SimulationConfig(n_subjects=3000, seed=2))
    rotation = f[[f"rotation_{a}_deg" for a in "xyz"]].to_numpy()
    shift = f[[f"shift_{a}_mm" for a in "xyz"]].to_numpy()
    assert np.abs(rotation).max() <= 10 and 2.5 < rotation.std() < 5
    assert np.abs(shift).max() <= 12 and 3 < shift.std() < 6
    assert f.head_scale.between(0.87, 1.05).all() and f.head_scale.std() > 0.02
    share = f.groupby("site").whole_head.mean()
    assert share["SITE-A"] == 0 and share["SITE-B"] == 0 and 0.09 < share["SITE-C"] < 0.21
    assert f.subject_id.str.split("_S_").str[0].nunique() == 1  # no site in the id
    flat = draw_population(SimulationConfig(n_subjects=50, seed=2, native_space=False))
    assert (flat.head_scale == 1).all() and not flat.whole_head.any()


@pytest.mark.slow
def test_hippocampal_signal_in_written_images(tmp_path: Path) -> None:
    """In the files on disk (site effects, any orientation/dtype), CN > MCI > AD in the ROI."""
    # on the template grid (native_space off), so the ROI is where the template puts it
    out = simulate_cohort(SimulationConfig(n_subjects=45, seed=5, spacing=4.0,
                                           confounding=0.0, native_space=False),
                          tmp_path / "c")
    m = pd.read_csv(out / "manifest.csv")
    ratios = []
    for p in m.mri_path:
        img = nib.as_closest_canonical(nib.load(str(out / p)))
        v = np.asarray(img.dataobj, dtype=np.float32)
        ref = np.median(v[v > np.percentile(v, 60)])
        ratios.append(roi_mean(v, img.affine, HIPPOCAMPUS_CENTERS_MM, HIPPOCAMPUS_RADII_MM) / ref)
    m["roi"] = ratios
    m["roi"] -= m.groupby("site").roi.transform("mean")  # compare within sites
    means = m.groupby("diagnosis").roi.mean()
    assert means["CN"] > means["MCI"] > means["AD"]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "dataset_card.md"}


def test_same_seed_same_files_any_number_of_workers(tmp_path: Path) -> None:
    cfg = SimulationConfig(n_subjects=6, seed=4, spacing=6.0)
    a = digest(simulate_cohort(cfg, tmp_path / "a"))
    b = digest(simulate_cohort(cfg.model_copy(update={"workers": 2}), tmp_path / "b"))
    c = digest(simulate_cohort(cfg.model_copy(update={"seed": 5}), tmp_path / "c"))
    assert len(a) == 6 + 5 and a.keys() == b.keys()  # volumes + tables, card, config
    assert a == b
    images = [{v for k, v in d.items() if k.startswith("images/")} for d in (a, c)]
    assert images[0].isdisjoint(images[1])
    assert a["records.csv"] != c["records.csv"]


def test_cohort_files_are_consistent(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort / "manifest.csv")
    records = load_records(tiny_cohort / "records.csv")
    assert manifest.vocabulary == "mediad" and records.vocabulary == "adnimerge"
    assert [r.subject_id for r in manifest.rows] == [r.subject_id for r in records.rows]
    assert manifest.records() == records.records()  # the two vocabularies say the same
    truth = pd.read_csv(tiny_cohort / "ground_truth.csv")
    assert list(truth.subject_id) == [r.subject_id for r in manifest.rows]
    assert {"hippocampal_atrophy", "global_atrophy", "n_lesions", "vascular_burden",
            "site_gamma", "site_noise", "site_blur_mm", "site_bias"} <= set(truth.columns)
    card = (tiny_cohort / "dataset_card.md").read_text()
    assert "NMI" in card and "not for\nclinical use" in card
    orientations = {"".join(nib.aff2axcodes(nib.load(r.mri_path).affine)) for r in manifest.rows}
    assert orientations == {"RAS", "LPS", "PIR"}  # each site stores its own way


def test_existing_folder_is_refused_and_overwrite_is_atomic(tmp_path: Path) -> None:
    cfg = SimulationConfig(n_subjects=3, seed=1, spacing=8.0)
    out = simulate_cohort(cfg, tmp_path / "c")
    before = digest(out)
    with pytest.raises(MediADError, match="already exists"):
        simulate_cohort(cfg, out)
    simulate_cohort(cfg.model_copy(update={"seed": 2}), out, overwrite=True)
    assert digest(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    real = simulate.render_subject
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate, "render_subject", flaky)
    with pytest.raises(KeyboardInterrupt):
        simulate_cohort(SimulationConfig(n_subjects=5, spacing=8.0), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_missing_fields_are_left_unrecorded_not_imputed() -> None:
    f = draw_population(SimulationConfig(n_subjects=2000, missing_rate=0.1, seed=3))
    share = f.adas13.isna().mean()
    assert 0.07 < share < 0.13
    assert f.diagnosis.notna().all() and f.age.notna().all()


def test_cohorts_can_lack_whole_inputs(tmp_path: Path) -> None:
    """Subjects with no MRI and records with no cognitive score, written as such and read
    back as such; cohorts drawn without them are unchanged."""
    cfg = SimulationConfig(n_subjects=40, seed=4, spacing=8.0, missing_mri_rate=0.25,
                           partial_record_rate=0.25)
    out = simulate_cohort(cfg, tmp_path / "gaps")
    truth = pd.read_csv(out / "ground_truth.csv")
    rows = load_manifest(out / "manifest.csv").rows
    no_mri = {r.subject_id for r in rows if r.mri_path is None}
    assert no_mri == set(truth.subject_id[truth.has_mri == 0]) and 3 <= len(no_mri) <= 18
    assert len(list((out / "images").iterdir())) == 40 - len(no_mri)
    partial = [r for r in rows if r.mmse is None and r.cdr_sb is None]
    assert 3 <= len(partial) <= 18
    assert all(r.age is not None and r.adas13 is None and r.faq is None for r in partial)
    assert all(r.mmse is not None for r in rows if r not in partial)
    plain = draw_population(SimulationConfig(n_subjects=40, seed=4))
    with_gaps = draw_population(cfg)
    assert plain.has_mri.all()
    kept = with_gaps.mmse.notna()
    pd.testing.assert_series_equal(plain.age, with_gaps.age)
    pd.testing.assert_series_equal(plain.mmse[kept], with_gaps.mmse[kept])


def test_ids_and_file_names_do_not_reveal_the_site(tiny_cohort: Path) -> None:
    import csv

    rows = list(csv.DictReader((tiny_cohort / "manifest.csv").open()))
    sites = {r["site"] for r in rows}
    assert len(sites) > 1
    prefixes = {r["subject_id"].split("_S_")[0] for r in rows}
    assert len(prefixes) == 1  # one code for every site
    for r in rows:
        assert r["site"].lower() not in r["subject_id"].lower() + r["mri_path"].lower()
