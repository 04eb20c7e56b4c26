"""The rule that marks an identification as "no confident match".

A photo of a species that is not in the index still has a closest prototype, so a ranked
list alone looks like an answer. The rule looks at the top-1 cosine score and at its
margin over the second species. The evaluation command (`python -m indexer.evaluate
--write-rule`) calibrates the thresholds on labelled photos of known and unknown species
and stores them in the index's meta.json under "rejection". The query path applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError

# meta.json key of the stored rule.
META_KEY = "rejection"

# Keys of the stored rule: the thresholds, plus how they were calibrated (for people only).
THRESHOLD_KEYS = ("min_score", "min_margin")
INFO_KEYS = ("calibration",)


@dataclass(frozen=True)
class RejectionRule:
    """Thresholds of a confident identification.

    An identification is confident when its top-1 cosine score is at least `min_score`
    and exceeds the second species' score by at least `min_margin`.
    """

    min_score: float = 0.0
    min_margin: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high in (("min_score", -1.0, 1.0), ("min_margin", 0.0, 2.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"rejection rule key '{name}' must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"rejection rule key '{name}' must be in [{low}, {high}], got {value}")

    def is_confident(self, scores: Sequence[float]) -> bool:
        """Return True when the top-K scores of one query, best first, pass both thresholds.

        With a single score (an index of one species) only min_score applies. An empty
        sequence is never confident.
        """
        if len(scores) == 0:
            return False
        top = float(scores[0])
        if top < self.min_score:
            return False
        if len(scores) < 2:
            return True
        return top - float(scores[1]) >= self.min_margin

    def to_dict(self) -> dict[str, float]:
        """Return the thresholds as a JSON-ready dict that from_dict reads back."""
        return {"min_score": float(self.min_score), "min_margin": float(self.min_margin)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RejectionRule:
        """Read a rule stored by to_dict, optionally with a "calibration" record.

        Raises ConfigError naming a missing, unknown or invalid key.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"rejection rule must be a JSON object, got {type(data).__name__}")

        unknown = sorted(str(key) for key in data if key not in THRESHOLD_KEYS + INFO_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown rejection rule key(s): {', '.join(unknown)}; "
                f"valid keys: {', '.join(THRESHOLD_KEYS + INFO_KEYS)}"
            )
        missing = [key for key in THRESHOLD_KEYS if key not in data]
        if missing:
            raise ConfigError(f"rejection rule is missing key(s): {', '.join(missing)}")
        return cls(min_score=data["min_score"], min_margin=data["min_margin"])


def rule_from_meta(meta: Mapping[str, Any]) -> RejectionRule | None:
    """Return the rule stored in an index's meta.json, or None when it stores none.

    Raises ConfigError when the stored rule is invalid.
    """
    stored = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    if stored is None:
        return None
    return RejectionRule.from_dict(stored)
