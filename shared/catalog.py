"""Species catalog: the CSV that maps each plant id to its scientific and common names."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

ID_COLUMN = "plant_id"
SCIENTIFIC_NAME_COLUMNS = ("scientific_name", "name")
COMMON_NAME_COLUMN = "common_name"


@dataclass(frozen=True)
class SpeciesInfo:
    """Names of one species. `extra` contains the CSV's other columns by header name."""

    plant_id: str
    scientific_name: str = ""
    common_name: str = ""
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def to_row(self) -> dict[str, str]:
        """Return the flat row stored in the index metadata: the three names, then `extra`."""
        row = {
            "plant_id": self.plant_id,
            "scientific_name": self.scientific_name,
            "common_name": self.common_name,
        }
        for key, value in self.extra.items():
            row.setdefault(key, value)
        return row


def _find_column(fieldnames: list[str], column: str) -> str | None:
    """Return the header that matches `column`, ignoring case and surrounding spaces."""
    for name in fieldnames:
        if name.strip().lower() == column:
            return name
    return None


def read_species_csv(path: str | Path) -> tuple[dict[str, SpeciesInfo], list[str]]:
    """Read the species CSV and return the species by plant id plus warnings for skipped rows.

    The file is read as UTF-8, with or without a byte order mark, and any line endings.
    The header must have a plant_id column. The scientific name comes from
    scientific_name, or from name when that is absent, and the common name from
    common_name. Other columns go to SpeciesInfo.extra. Header names match ignoring case
    and surrounding spaces. Plant ids and names are stripped strings, so '007' and '7'
    are different ids. A repeated id keeps its first row and rows with an empty id are
    skipped; each gives a warning with line numbers. The dict keeps the file's order.
    Raises ConfigError when the file is missing, is not UTF-8 or lacks a plant_id column.
    """
    path = Path(path)
    logger.info("reading species CSV %s", path)

    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            species, warnings = _parse_rows(csv.DictReader(file), path)
    except FileNotFoundError:
        raise ConfigError(f"species CSV not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"species CSV path is a folder, not a file: {path}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"species CSV {path} is not valid UTF-8 (byte {error.start}); save it as UTF-8"
        ) from None
    except csv.Error as error:
        raise ConfigError(f"species CSV {path} could not be parsed: {error}") from None

    logger.info("read %d species from %s with %d warning(s)", len(species), path, len(warnings))
    return species, warnings


def _parse_rows(reader: csv.DictReader, path: Path) -> tuple[dict[str, SpeciesInfo], list[str]]:
    fieldnames = list(reader.fieldnames or [])
    id_column = _find_column(fieldnames, ID_COLUMN)
    if id_column is None:
        found = ", ".join(repr(name) for name in fieldnames) or "none"
        raise ConfigError(f"species CSV {path} has no 'plant_id' column; columns found: {found}")

    scientific_column = None
    for candidate in SCIENTIFIC_NAME_COLUMNS:
        scientific_column = _find_column(fieldnames, candidate)
        if scientific_column is not None:
            break
    common_column = _find_column(fieldnames, COMMON_NAME_COLUMN)
    named_columns = {id_column, scientific_column, common_column}

    species: dict[str, SpeciesInfo] = {}
    lines_by_id: dict[str, list[int]] = {}
    warnings: list[str] = []

    for row in reader:
        line = reader.line_num

        # DictReader puts fields beyond the header under the key None.
        if row.get(None):  # type: ignore[call-overload]
            warnings.append(
                f"{path.name} line {line}: more fields than columns in the header; "
                "the extra fields are ignored (quote values that contain commas)"
            )

        plant_id = (row.get(id_column) or "").strip()
        if not plant_id:
            warnings.append(f"{path.name} line {line}: empty plant_id; row skipped")
            continue

        lines_by_id.setdefault(plant_id, []).append(line)
        if plant_id in species:
            continue

        extra = {
            name.strip(): (value or "").strip()
            for name, value in row.items()
            if name is not None and name not in named_columns
        }
        species[plant_id] = SpeciesInfo(
            plant_id=plant_id,
            scientific_name=(row.get(scientific_column) or "").strip() if scientific_column else "",
            common_name=(row.get(common_column) or "").strip() if common_column else "",
            extra=extra,
        )

    for plant_id, lines in lines_by_id.items():
        if len(lines) > 1:
            listed = ", ".join(str(line) for line in lines)
            warnings.append(
                f"{path.name}: plant_id {plant_id!r} is repeated on lines {listed}; "
                f"the row on line {lines[0]} is used"
            )

    return species, warnings
