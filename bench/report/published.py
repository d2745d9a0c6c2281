"""Published reference numbers, each with its source. They are shown apart from measured rows, labelled as
published, and never take part in any selection. Only numbers stated in the project's reference notes
(../shared/reference/lpt.md) are listed; none is stated for LPT++."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedResult:
    method: str
    dataset: str
    overall: str  # as published, with the published precision
    many: str | None
    medium: str | None
    few: str | None
    source: str


LPT_PAPER = "Dong et al., LPT, ICLR 2023 (arXiv 2210.01033)"

PUBLISHED = (
    PublishedResult("lpt", "places_lt", "50.07", "49.27", "52.31", "46.88",
                    f"{LPT_PAPER}, official checkpoint; official shot groups (few ≤ 20)"),
    PublishedResult("lpt", "inat2018", "≈76.1", None, None, None,
                    "second-hand: quoted in later papers"),
    PublishedResult("lpt", "cifar100_lt", "≈89.1", None, None, None,
                    "second-hand: quoted in later papers (imbalance factor 100)"),
)


def published_for(dataset: str) -> list[PublishedResult]:
    return [result for result in PUBLISHED if result.dataset == dataset]


def published_datasets() -> list[str]:
    return list(dict.fromkeys(result.dataset for result in PUBLISHED))
