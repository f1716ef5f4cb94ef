"""datatrove's stock quality chain, the reference that the agreement test and the filter benchmark use.

GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False) ->
FineWebQualityFilter, all with default arguments; pipelines/resources/policy-datatrove.yaml holds the
same thresholds for gristmill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The gristmill policy with the chain's thresholds.
POLICY = Path(__file__).resolve().parents[1] / "pipelines" / "resources" / "policy-datatrove.yaml"


def quality_chain() -> list[Any]:
    """A fresh instance of each filter of the chain, in order."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return [
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
    ]
