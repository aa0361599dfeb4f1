"""Reference data loads, names its sources, and the O2 correction follows domain.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartpark.core.emissions import is_valid_flag, o2_correct
from smartpark.core.errors import ConfigError
from smartpark.core.reference import default_reference, load_reference


def test_every_figure_has_a_source_and_confidence() -> None:
    ref = default_reference()
    for name, st in ref.emissions.source_types.items():
        assert st.source, name
        assert st.confidence in "CSU", name
        assert set(st.limits_mg_m3) == {"pm", "so2", "nox"}, name
    sinter = ref.source_type("sinter")
    assert (sinter.o2_ref_pct, sinter.limits_mg_m3) == (16.0, {"pm": 10.0, "so2": 35.0, "nox": 50.0})
    assert ref.source_type("pellet_grate_kiln").o2_ref_pct == 18.0
    assert ref.source_type("unheard-of") is ref.source_type("other")
    assert ref.energy.carriers["electricity"].kgce_per_unit == 0.1229


def test_grid_factor_by_region_and_year() -> None:
    ref = default_reference()
    assert ref.grid_factor("northeast", 2026) == (0.5122, 2023, "northeast")
    assert ref.grid_factor("northeast", 2022) == (0.5122, 2023, "northeast")  # the region's own, nearest year
    assert ref.grid_factor("mars", 2023) == (0.5306, 2023, "national")


def test_o2_correction() -> None:
    ref = default_reference()
    sinter = ref.source_type("sinter")
    assert o2_correct(40.0, 18.0, sinter, 20.0) == pytest.approx(40.0 * 5 / 3)
    assert o2_correct(40.0, 20.5, sinter, 20.0) is None  # near 21 %: cannot be corrected
    assert o2_correct(40.0, 20.5, ref.source_type("hot_blast_stove"), 20.0) == 40.0  # measured basis
    assert is_valid_flag(None, ref)
    assert is_valid_flag("S", ref)
    assert not is_valid_flag("C", ref)


def test_bad_reference_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ref.yaml"
    bad.write_text("version: 1\nemissions: {}\n")
    with pytest.raises(ConfigError, match="reference data"):
        load_reference(bad)
