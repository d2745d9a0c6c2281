"""The tables the `bench` commands print (a run's metrics and settings, the runs, the options, the registries),
made for an 80-column terminal or a pipe, where rich would otherwise cut names with "…", split numbers and break
headers: no box but a rule under the header, short headers, names and numbers never wrapped, only prose
wrapped, and columns left out (said in the caption) rather than cut. Light: no torch (`bench show` and
`bench runs` use it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.metrics import ACCURACIES


def compact_table(title: str | Text | None = None, caption: str | Text | None = None) -> Table:
    """A table without a box (a rule under the header), without edges and with one space between columns."""
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True, caption_justify="left")


UNBOUNDED = 10_000  # columns: a table's natural width is measured on a console this wide


def fitted(build: Callable[[Sequence[str]], Table], optional: Sequence[str], console: Console) -> Table:
    """`build(left_out)` with the fewest of the `optional` columns left out (in that order) that fits the
    console's width (the narrowest when none does): columns are left out, never cut."""
    for count in range(len(optional) + 1):
        table = build(optional[:count])
        if console.measure(table, options=console.options.update_width(UNBOUNDED)).maximum <= console.width:
            break
    return table


def left_out_note(left_out: Sequence[str]) -> str:
    """"left out at this width: px and train time" (for the caption: what `fitted` left out), or nothing."""
    if not left_out:
        return ""
    return f"left out at this width: {', '.join(left_out[:-1])}{' and ' if len(left_out) > 1 else ''}{left_out[-1]}"


def value_text(value) -> str:
    """A setting as `--set` writes it (booleans lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


SHORT_METRIC_NAMES = {"mean_per_class": "mean/cls", "worst_class": "worst", "harmonic_mean": "h-mean",
                      "macro_f1": "macro-F1"}


def metrics_table(record: dict) -> Table:
    """A run's val and test metrics (the post-hoc row's tau in the caption)."""
    table = compact_table(Text(f"{record['method']} on {record['dataset']} ({record['backbone']}, "
                               f"{'pretrained' if record['pretrained'] else 'random init'}, seed {record['seed']})"))
    table.add_column("split", no_wrap=True)
    for column in ACCURACIES:
        table.add_column(SHORT_METRIC_NAMES.get(column, column), justify="right", no_wrap=True)
    for split in ("val", "test"):
        metrics = record[split]
        table.add_row(split, *(_cell(metrics.get(column)) for column in ACCURACIES))
    posthoc = record.get("posthoc")
    if posthoc:
        table.add_row("post-hoc", *(_cell(posthoc["test"].get(column)) for column in ACCURACIES), style="dim")
    table.caption = Text(f"{record['trainable_params']:,} trainable parameters, trained "
                         f"{record['train_time_s']:.1f} s on {record['device']}"
                         f"{' in ' + record['precision'] if record.get('precision') else ''}; shot groups: "
                         f"{record['shot_convention']}; chosen on "
                         f"{(record.get('selection') or {}).get('metric', 'val_overall')}"
                         + (f"; post-hoc: test with logit adjustment tau={posthoc['tau']:.1f} chosen on val"
                            if posthoc else ""))
    return table


def _cell(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def settings_table(title: str, settings: Mapping[str, object]) -> Table:
    """A run's hyperparameters (or dataset options): one per row, name and value."""
    table = compact_table(title)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")  # a value can be a long path: folded, never cut
    for name, value in settings.items():
        table.add_row(Text(name), Text(value_text(value)))
    return table


def registry_table(title: str, rows: Sequence[tuple[str, ...]], columns: Sequence[str]) -> Table:
    """Names (the first columns, never wrapped) and a description (the last, wrapped)."""
    table = compact_table(title)
    for column in columns[:-1]:
        table.add_column(column, no_wrap=True, style="bold" if column == columns[0] else None)
    table.add_column(columns[-1], overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def hparams_tables(method: str, dataset: str, backbone: str | None) -> tuple[str, list[Table]]:
    """(a heading, a table per declaration: the method's, the dataset's, the common options) of every --set key
    of (method, dataset), with the default `bench run` uses there: on the embedded default (its dataset with no
    --backbone) the preset's values, marked, with the declared default beside; and the space `bench sweep`
    searches there."""
    from bench.datasets.base import DATASETS
    from bench.embedded import EMBEDDED_BACKBONE, is_embedded
    from bench.methods.base import METHODS
    from bench.options import COMMON_OPTIONS, declared_options
    from bench.prepare import with_embedded_preset
    from bench.run_spec import RunSpec
    from bench.sweeps.space import apply_space_file, default_space, describe

    method_cls, dataset_spec = METHODS.get(method), DATASETS.get(dataset)
    spec, _ = with_embedded_preset(RunSpec(method=method, dataset=dataset, backbone=backbone))
    space = default_space(method_cls.hparams)
    if is_embedded(dataset, backbone):
        space, _ = apply_space_file(space, method_cls.embedded_space, declared_options(method, dataset),
                                    "embedded preset")
        heading = (f"options of {method} on {dataset} as `bench run` and `bench sweep` use them on the embedded "
                   f"default: {spec.backbone}, with the embedded preset (bench/embedded.py and the method's "
                   f"embedded_preset) where marked; --backbone {EMBEDDED_BACKBONE} shows the declared defaults")
    else:
        heading = f"options of {method} on {dataset} (--backbone {backbone or 'default'}): the declared defaults"
    heading += "; set one with bench run --set KEY=VALUE"
    tables = []
    for title, declared in ((f"method {method}", method_cls.hparams), (f"dataset {dataset}", dataset_spec.options),
                            ("common", COMMON_OPTIONS)):
        rows = []
        for name, hp in declared.items():
            declared_default = value_text(hp.default)
            preset = spec.overrides.get(name)
            space_text = describe({name: space[name]}).split(" ", 1)[1] if name in space else None
            notes = [*([(f"search {space_text}", "cyan"), " · "] if space_text else []),
                     *([(f"preset, declared {declared_default}", "italic"), " · "] if preset is not None else [])]
            rows.append((Text(name), Text(preset if preset is not None else declared_default),
                         Text.assemble(*notes, hp.help)))
        table = compact_table(title)
        table.padding = (0, 0)  # one space between columns: room for the help's longest words
        table.add_column("option", no_wrap=True, style="bold")
        table.add_column("default", no_wrap=True)
        table.add_column("search space · help", min_width=24, overflow="fold")  # wrapped between words
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return heading, tables


@dataclass
class RunRow:
    run_id: str
    state: str
    method: str
    dataset: str
    test: float | None  # test overall accuracy, from the record (None: no record)
    finished: str | None  # ISO time from the record


RUN_COLUMNS = ("run", "state", "method", "dataset", "test", "finished")
RUN_COLUMNS_LEFT_OUT_FIRST = ("dataset", "method", "finished")  # the first two are in the ids `bench run` makes


def runs_table(rows: Sequence[RunRow], console: Console, caption: str) -> Table:
    """The runs, one per row: id, state, method, dataset, test overall, finished; where that is wider than the
    console, dataset, method and finished are left out, in that order (and the caption says so)."""

    def build(left_out: Sequence[str]) -> Table:
        columns = [column for column in RUN_COLUMNS if column not in left_out]
        table = compact_table(caption=Text("; ".join(filter(None, (caption, "test: overall test accuracy %",
                                                                   left_out_note(left_out))))))
        for column in columns:
            table.add_column(column, no_wrap=True, justify="right" if column == "test" else "left")
        for row in rows:
            cells = {"run": row.run_id, "state": row.state, "method": row.method, "dataset": row.dataset,
                     "test": "–" if row.test is None else f"{row.test:.2f}", "finished": _local_time(row.finished)}
            table.add_row(*(Text(cells[column]) for column in columns))
        return table

    return fitted(build, RUN_COLUMNS_LEFT_OUT_FIRST, console)


def _local_time(iso: str | None) -> str:
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso
