"""The report as titled blocks of text, tables of cell strings and images: what every renderer lays out."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.report import formatting as fmt
from bench.report.aggregate import LEADERBOARD_METRICS, Configuration, Stat
from bench.report.plots import Plot, Plots, row_label
from bench.report.significance import REPLICATES, Evidence
from bench.report.significance import SEED as BOOTSTRAP_SEED
from bench.report.tables import TOP_TRIALS, Ablation, DatasetReport, Report, Sweep, searched_values

TITLE = "Long-tailed benchmark report"
LPT_SHOTS_MARK = "‡"
READING_GUIDE = (
    "Measured rows are test top-1 accuracy (%) as mean ± std over seeds (sample std; a single seed shows no "
    "±); n is the number of distinct seeds. For each method the configuration (every setting but the seed) "
    "with the best mean val score under the section's selection rule is shown: chosen on validation only, "
    f"among the method's configurations (column configs). {fmt.UNDEFINED} is undefined (an empty shot group), "
    "never 0. Published numbers are listed apart and never take part in a choice.")
EVIDENCE_NOTE = (
    f"95 % CI: percentile interval of a paired bootstrap ({REPLICATES} replicates, seed {BOOTSTRAP_SEED}) that "
    "resamples the test images within their classes (the same images for every row) and each row's seeds; vs "
    f"best: {fmt.BELOW_MARK} where the row is significantly below the row with the best test overall (the 95 % "
    "interval of their difference excludes 0), n.s. where it is not; p: the share of replicates in which the "
    f"row was not below the best. {fmt.UNDEFINED}: the row's runs kept no per-image predictions (recorded "
    "before they were kept) or were scored on other test images.")
RANDOM_INIT_NOTE = f"{fmt.RANDOM_INIT_MARK} a random-init tower (the backbone or an LPT++ expert's; not pretrained)."
LPT_SHOTS_NOTE = (f"{LPT_SHOTS_MARK} official LPT shot groups (few ≤ 20 training images); the others use the "
                  "standard ones (many > 100, medium 20–100, few < 20).")
COST_NOTE = ("px: input resolution (native: the backbone's own); train time: mean training time per seed, on "
             f"the device shown; ms/img: test inference time per image, data loading included ({fmt.UNDEFINED}: "
             "predictions from precomputed features, so the backbone's pass was not timed).")
PUBLISHED_NOTE = ("Reference numbers from the literature, not produced by this harness (other backbones, "
                  "schedules or shot groups may apply).")
FEW_TRIALS = 10  # below this many finished trials, importances are noise-prone
NO_IMPORTANCE = ("Hyperparameter importance: not enough trials (it needs at least two finished trials with a "
                 "varying searched hyperparameter).")


@dataclass
class Grid:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns


@dataclass
class Block:
    title: str
    level: int  # 1 report, 2 dataset, 3 a table or the plots
    kind: str  # report | dataset | leaderboard | published | ablation | sweep | plots
    dataset: str | None = None  # the section's key (a dataset, or a dataset under a protocol)
    where: str | None = None  # the section's title, for captions: "<dataset> · protocol <name> <hash>"
    paragraphs: list[str] = field(default_factory=list)
    grid: Grid | None = None
    notes: list[str] = field(default_factory=list)  # footnotes below the grid
    images: list[Plot] = field(default_factory=list)


def build_document(report: Report, plots: Plots | None = None) -> list[Block]:
    plots = plots or Plots()
    blocks = [Block(TITLE, 1, "report", paragraphs=[
        f"{report.record_count} records read from {report.source}/records.", READING_GUIDE])]
    for section in report.datasets:
        section_blocks = [Block(section.title, 2, "dataset", section.key, paragraphs=section.about),
                          *_dataset_blocks(section, plots)]
        for block in section_blocks:
            block.where = section.title
        blocks.extend(section_blocks)
    return blocks


def _dataset_blocks(section: DatasetReport, plots: Plots) -> list[Block]:
    if section.leaderboard:
        blocks = [leaderboard_block(section)]
    else:
        blocks = [Block("Leaderboard", 3, "leaderboard", section.key,
                        paragraphs=["No measured runs of this dataset in the store."])]
    if section.published:
        blocks.append(published_block(section))
    blocks += [ablation_block(section.key, ablation) for ablation in section.ablations]
    blocks += [sweep_block(section.key, sweep) for sweep in section.sweeps]
    images = [plot for plot in plots.images if plot.dataset == section.key]
    if images or section.key in plots.notes:
        blocks.append(Block("Plots", 3, "plots", section.key, notes=plots.notes.get(section.key, []),
                            images=images))
    return blocks


def _metric_cells(configuration: Configuration) -> list[str]:
    return [fmt.stat(configuration.metric("test", metric), configuration.seeds) for metric in LEADERBOARD_METRICS]


def _evidence_cells(configuration: Configuration, evidence: Evidence | None) -> list[str]:
    """overall, its interval, many, medium, few, its interval, vs best."""
    overall, many, medium, few = _metric_cells(configuration)
    return [overall, fmt.interval(evidence and evidence.overall), many, medium, few,
            fmt.interval(evidence and evidence.few), fmt.versus_best(evidence, REPLICATES)]


def _mean(value: Stat | None) -> float | None:
    return None if value is None else value.mean


def leaderboard_block(section: DatasetReport) -> Block:
    rows = []
    for row in section.leaderboard:
        configuration = row.configuration
        mark = LPT_SHOTS_MARK if configuration.shot_convention == "lpt" else ""
        rows.append([row_label(row) + mark, configuration.backbone or fmt.UNDEFINED,
                     fmt.image_size(configuration.image_size), *_evidence_cells(configuration, row.evidence),
                     str(configuration.seeds), str(row.candidates),
                     fmt.parameters(_mean(configuration.field("trainable_params"))),
                     fmt.duration(_mean(configuration.field("train_time_s"))),
                     fmt.devices(configuration.devices()) + f" · {configuration.precision or fmt.UNDEFINED}",
                     fmt.milliseconds(_mean(configuration.field("test_ms_per_image")))])
    configurations = [row.configuration for row in section.leaderboard]
    notes = [RANDOM_INIT_NOTE] if any(not c.pretrained for c in configurations) else []
    notes += health_notes(configurations) + convergence_notes(configurations, section.metric)
    if any(c.shot_convention == "lpt" for c in configurations):
        notes.append(LPT_SHOTS_NOTE)
    if section.stopped_excluded:
        notes.append(f"{section.stopped_excluded} sweep trial(s) stopped early are not ranked.")
    notes += [f"{c.method}: {c.superseded} earlier run(s) of a seed already shown (same configuration) are "
              "superseded by the newest" for c in configurations if c.superseded]
    notes += [f"{c.method}: its train time averages runs on {fmt.devices(c.devices())}" for c in configurations
              if len(c.devices()) > 1]
    notes += [EVIDENCE_NOTE, COST_NOTE]
    header = ["method", "backbone", "px", "overall", "overall 95 % CI", "many", "medium", "few", "few 95 % CI",
              "vs best", "n", "configs", "trainable", "train time", "device · precision", "ms/img"]
    numeric = [False, False, *[True] * 6, True, False, True, True, True, True, False, True]
    rule = (f"Each method's configuration is chosen on val {section.metric} (equal scores: the lower "
            "class-balanced val NLL).")
    return Block("Leaderboard", 3, "leaderboard", section.key, paragraphs=[rule],
                 grid=Grid(header, rows, numeric), notes=notes)


def convergence_notes(configurations: list[Configuration], metric: str) -> list[str]:
    """One footnote per row whose val curve was still rising over the last quarter of a phase when its budget
    ended: which phases, in how many seeds, by how much against its noise."""
    notes = []
    for configuration in configurations:
        if not configuration.still_rising:
            continue
        phases = dict.fromkeys(phase for seed in configuration.still_rising for phase in seed)
        worst = max((entry for seed in configuration.still_rising for entry in seed.values()),
                    key=lambda entry: entry["rise"] - entry["noise"])
        notes.append(f"{fmt.RISING_MARK} {configuration.method}: val {metric} was still rising over the last "
                     f"quarter of {', '.join(phases)} in {len(configuration.still_rising)} of "
                     f"{configuration.seeds} seed(s) (up to +{worst['rise']:.2f} from epoch {worst['from_epoch']} "
                     f"to {worst['to_epoch']}, noise ±{worst['noise']:.2f}): this budget does not let "
                     f"{configuration.method} converge")
    return notes


def health_notes(configurations: list[Configuration]) -> list[str]:
    """One footnote per flagged row: which method, in how many seeds, and what its training showed."""
    notes = []
    for configuration in configurations:
        if not configuration.health_flags:
            continue
        flagged = sum(bool((record.get("health") or {}).get("flags")) for record in configuration.records)
        notes.append(f"{fmt.HEALTH_MARK} {configuration.method}: training flagged in {flagged} of "
                     f"{configuration.seeds} seed(s) ({'; '.join(dict.fromkeys(configuration.health_flags))}); "
                     "not the method's result")
    return notes


def published_block(section: DatasetReport) -> Block:
    rows = [[f"{result.method} (published)", result.overall,
             *(value or fmt.UNDEFINED for value in (result.many, result.medium, result.few)), result.source]
            for result in section.published]
    return Block("Published (not measured here)", 3, "published", section.key,
                 paragraphs=[PUBLISHED_NOTE],
                 grid=Grid(["method", *LEADERBOARD_METRICS, "source"], rows, [False, True, True, True, True, False]))


def ablation_block(dataset: str, ablation: Ablation) -> Block:
    rows = []
    for row in ablation.rows:
        delta = "reference" if row.variant == ablation.base_method else fmt.signed(row.delta_overall)
        rows.append([fmt.method_label(row.variant, row.configuration.pretrained,
                                      bool(row.configuration.health_flags), bool(row.configuration.still_rising)),
                     *_metric_cells(row.configuration), str(row.configuration.seeds), delta])
    notes = [f"Δ overall: the variant's test overall minus the full method's ({ablation.base_method})."]
    if all(row.variant != ablation.base_method for row in ablation.rows):
        notes.append(f"The full method {ablation.base_method} has no finished run in this ablation.")
    if any(not row.configuration.pretrained for row in ablation.rows):
        notes.append(RANDOM_INIT_NOTE)
    notes += health_notes([row.configuration for row in ablation.rows])
    notes += convergence_notes([row.configuration for row in ablation.rows], ablation.metric)
    return Block(f"Ablation: {ablation.name}", 3, "ablation", dataset,
                 grid=Grid(["variant", *LEADERBOARD_METRICS, "n", "Δ overall"], rows, [False] + [True] * 6), notes=notes)


def sweep_block(dataset: str, sweep: Sweep) -> Block:
    finished, searched = len(sweep.finished), ", ".join(sweep.searched) or "nothing"
    summary = (f"{', '.join(sweep.methods)}: {finished + sweep.stopped} trials, {finished} finished, "
               f"{sweep.stopped} stopped early by the scheduler. Searched: {searched}. The top {TOP_TRIALS} "
               f"finished trials by val {sweep.metric}:")
    rows = []
    for rank, record in enumerate(sweep.top, start=1):
        values = searched_values(record, sweep.searched)
        rows.append([str(rank), (record.get("tags") or {}).get("trial") or record["run_id"],
                     *(fmt.setting(values[name]) for name in sweep.searched), str(record.get("seed", "")),
                     fmt.accuracy((record.get("val") or {}).get(sweep.metric)),
                     fmt.accuracy((record.get("test") or {}).get("overall"))])
    header = ["rank", "trial", *sweep.searched, "seed", f"val {sweep.metric}", "test overall"]
    return Block(f"Sweep: {sweep.name}", 3, "sweep", dataset, paragraphs=[summary],
                 grid=Grid(header, rows, [True, False] + [True] * (len(header) - 2)),
                 notes=[importance_text(sweep)])


def importance_text(sweep: Sweep) -> str:
    if sweep.importance is None:
        return NO_IMPORTANCE
    ranked = ", ".join(f"{name} {value:.2f}" for name, value in sweep.importance.items())
    caveat = (f" With fewer than {FEW_TRIALS} finished trials these are indicative at best."
              if len(sweep.finished) < FEW_TRIALS else "")
    return (f"Hyperparameter importance (fANOVA via optuna, seed 0, on val {sweep.metric} of the "
            f"{len(sweep.finished)} finished trials): {ranked}.{caveat}")
