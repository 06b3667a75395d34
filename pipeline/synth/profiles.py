"""Synthesis profiles: voxel sizes, run length and repetition time of a synthetic cohort."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SynthProfile:
    """Resolution and acquisition settings of a synthetic cohort.

    Attributes:
        name: profile name.
        t1_voxel_mm: isotropic T1 voxel size (mm).
        fmri_voxel_mm: isotropic BOLD voxel size (mm).
        n_volumes: number of BOLD volumes per run.
        tr: repetition time of the BOLD run (seconds).
        description: what the profile is for.
    """

    name: str
    t1_voxel_mm: float
    fmri_voxel_mm: float
    n_volumes: int
    tr: float
    description: str = ""


PROFILES: dict[str, SynthProfile] = {
    "tiny": SynthProfile("tiny", 6.0, 8.0, 40, 2.0, "unit tests: coarse grids, a few ms per subject"),
    "demo": SynthProfile("demo", 3.0, 4.0, 100, 3.0, "demo study: fast, small files"),
    "full": SynthProfile("full", 1.0, 3.3, 140, 3.0, "ADNI-like: 1 mm T1, 3.3 mm BOLD, 140 volumes, TR 3 s"),
}


def get_profile(profile: str | SynthProfile) -> SynthProfile:
    """Return a profile by name (or the profile itself).

    Args:
        profile: a key of ``PROFILES`` or a ``SynthProfile``.

    Raises:
        ValueError: unknown profile name.
    """
    if isinstance(profile, SynthProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown synth profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]
