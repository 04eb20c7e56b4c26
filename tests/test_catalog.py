"""Tests of the species CSV reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.catalog import SpeciesInfo, read_species_csv
from shared.errors import ConfigError


@pytest.fixture(scope="module")
def cases_catalog(cases_dir: Path) -> tuple[dict[str, SpeciesInfo], list[str]]:
    """The indexer case CSV: UTF-8 BOM, CRLF, a quoted comma, a repeated id, '7' and '007'."""
    return read_species_csv(cases_dir / "indexer_folder" / "plants.csv")


def write_csv(folder: Path, text: str, encoding: str = "utf-8") -> Path:
    path = folder / "species.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_cases_ids_in_file_order(cases_catalog):
    species, _ = cases_catalog
    assert list(species) == ["1", "2", "3", "7", "007", "12", "404"]


def test_cases_bom_not_in_header(cases_catalog):
    species, _ = cases_catalog
    assert species["1"].extra == {}


def test_cases_007_and_7_distinct(cases_catalog):
    species, _ = cases_catalog
    assert species["007"].scientific_name == "Sansevieria trifasciata"
    assert species["7"].scientific_name == "Cyclamen persicum"


def test_cases_quoted_comma(cases_catalog):
    species, _ = cases_catalog
    assert species["3"].common_name == "Aloe, true"


def test_cases_duplicate_first_wins(cases_catalog):
    species, _ = cases_catalog
    assert species["2"].common_name == "Fiddle-leaf fig"


def test_cases_duplicate_warning(cases_catalog):
    _, warnings = cases_catalog
    assert len(warnings) == 1
    assert "'2'" in warnings[0]
    assert "lines 3, 4" in warnings[0]


def test_cases_crlf_stripped(cases_catalog):
    species, _ = cases_catalog
    for info in species.values():
        for value in info.to_row().values():
            assert "\r" not in value
            assert "\n" not in value


def test_cases_non_ascii_name(cases_catalog):
    species, _ = cases_catalog
    assert species["7"].common_name == "Cyclamen \u00e9"


def test_to_row_order_and_extra(tmp_path):
    path = write_csv(tmp_path, "plant_id,common_name,family,scientific_name\nA1,Rose,Rosaceae,Rosa\n")
    species, _ = read_species_csv(path)
    row = species["A1"].to_row()
    assert list(row) == ["plant_id", "scientific_name", "common_name", "family"]
    assert row["family"] == "Rosaceae"


def test_name_column_as_scientific(tmp_path):
    path = write_csv(tmp_path, "plant_id,name\n5,Ficus benjamina\n")
    species, _ = read_species_csv(path)
    assert species["5"].scientific_name == "Ficus benjamina"
    assert species["5"].common_name == ""


def test_header_case_and_spaces(tmp_path):
    path = write_csv(tmp_path, " Plant_ID , Scientific_Name \n5,Ficus benjamina\n")
    species, _ = read_species_csv(path)
    assert species["5"].scientific_name == "Ficus benjamina"


def test_ids_and_names_stripped(tmp_path):
    path = write_csv(tmp_path, "plant_id,scientific_name\n 42 , Ficus \n")
    species, _ = read_species_csv(path)
    assert list(species) == ["42"]
    assert species["42"].scientific_name == "Ficus"


def test_empty_id_skipped(tmp_path):
    path = write_csv(tmp_path, "plant_id,scientific_name\n,Ficus\n8,Rosa\n")
    species, warnings = read_species_csv(path)
    assert list(species) == ["8"]
    assert len(warnings) == 1
    assert "line 2" in warnings[0]


def test_extra_fields_warned(tmp_path):
    path = write_csv(tmp_path, "plant_id,scientific_name\n8,Rosa,canina\n")
    species, warnings = read_species_csv(path)
    assert species["8"].scientific_name == "Rosa"
    assert len(warnings) == 1
    assert "line 2" in warnings[0]


def test_short_row_empty_names(tmp_path):
    path = write_csv(tmp_path, "plant_id,scientific_name,common_name\n8\n")
    species, _ = read_species_csv(path)
    assert species["8"].scientific_name == ""
    assert species["8"].common_name == ""


def test_missing_id_column(tmp_path):
    path = write_csv(tmp_path, "id,scientific_name\n1,Rosa\n")
    with pytest.raises(ConfigError) as caught:
        read_species_csv(path)
    assert "species.csv" in caught.value.message
    assert "'id', 'scientific_name'" in caught.value.message


def test_empty_file(tmp_path):
    path = write_csv(tmp_path, "")
    with pytest.raises(ConfigError):
        read_species_csv(path)


def test_file_not_found(tmp_path):
    with pytest.raises(ConfigError) as caught:
        read_species_csv(tmp_path / "missing.csv")
    assert "missing.csv" in caught.value.message


def test_not_utf8(tmp_path):
    path = write_csv(tmp_path, "plant_id,common_name\n1,Cyclamen \u00e9\n", encoding="cp1252")
    with pytest.raises(ConfigError) as caught:
        read_species_csv(path)
    assert "UTF-8" in caught.value.message
