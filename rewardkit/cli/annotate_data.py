"""``rewardkit annotate pairs | select | hand-over``: the annotation round's tables, made without a server.

    rewardkit annotate pairs      items (or render folders + prompts) -> items.parquet, pairs.parquet
    rewardkit annotate select     the next K pairs where the current scorers are least sure (push those)
    rewardkit annotate hand-over  a finished round's scorers, samples and labelled data to the next round

Registered on the ``rewardkit annotate`` group by :mod:`rewardkit.cli.annotate` (the commands that talk to
Label Studio). A bad input is one line on stderr with exit code 2 (:class:`rewardkit.cli.errors.UserError`).
"""

from __future__ import annotations

from pathlib import Path

import click

from rewardkit.cli.errors import UserError

__all__ = ["pairs_cmd", "select_cmd", "hand_over_cmd"]


# -- pairs ----------------------------------------------------------------------------------------
@click.command("pairs")
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None, help="An items table (parquet).")
@click.option("--renders", type=click.Path(path_type=Path), default=None, help="A folder of render folders (one per candidate).")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="With --renders: CSV with columns item_id (render folder name), prompt[, prompt_id].")
@click.option("--out-items", type=click.Path(path_type=Path), default=Path("data/items.parquet"), show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("data/pairs.parquet"), show_default=True)
@click.option("--strategy", type=click.Choice(["all", "k_per_prompt"]), default="all", show_default=True)
@click.option("--k", type=int, default=None, help="Pairs per prompt for k_per_prompt.")
@click.option("--seed", type=int, default=0, show_default=True)
def pairs_cmd(items_path, renders, prompts, out_items, out, strategy, k, seed) -> None:
    """Sample comparison pairs within each prompt (A/B side randomized and recorded)."""
    from rewardkit.data import read_items, sample_pairs, write_table
    from rewardkit.annotation.items import items_from_renders

    try:
        if items_path is not None:
            items = read_items(items_path)
        elif renders is not None and prompts is not None:
            items = items_from_renders(renders, prompts)
            write_table(items, out_items, "items")
            click.echo(f"items: {items.height} candidates -> {out_items}")
        else:
            raise click.UsageError("give --items, or --renders with --prompts")
        pairs = sample_pairs(items, strategy, k=k, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    write_table(pairs, out, "pairs")
    click.echo(f"pairs: {pairs.height} over {pairs['prompt_id'].n_unique()} prompts ({strategy}, seed {seed}) -> {out}")


# -- select ---------------------------------------------------------------------------------------
@click.command("select")
@click.option("--scorer", "scorer", required=True, help="The current scorer (set) directory (an ensemble adds disagreement).")
@click.option("--stage", type=click.Choice(["global", "local"]), default="global", show_default=True,
              help="Which stage's scorer and question decide what is uncertain.")
@click.option("--items", "items_path", type=click.Path(path_type=Path, exists=True), default=Path("data/items.parquet"), show_default=True)
@click.option("--pool", "pool_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Candidate pairs (a pairs table); default: every within-prompt pair of the items.")
@click.option("--labelled", "labelled_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Pairs already labelled (a pairs table): never selected again.")
@click.option("--preferences", "prefs_path", type=click.Path(path_type=Path, exists=True), default=None,
              help="Their answers: calibrate the Bradley-Terry temperature.")
@click.option("--k", type=int, default=60, show_default=True)
@click.option("--random-fraction", type=float, default=0.2, show_default=True)
@click.option("--disagreement-fraction", type=float, default=0.3, show_default=True)
@click.option("--per-prompt-cap", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("data/selected_pairs.parquet"), show_default=True)
def select_cmd(scorer, stage, items_path, pool_path, labelled_path, prefs_path, k, random_fraction,
               disagreement_fraction, per_prompt_cap, seed, out) -> None:
    """Choose the next K pairs to label where the scorers are least sure; push them with
    `rewardkit annotate push --pairs OUT`."""
    from rewardkit.data import write_table
    from rewardkit.data.active import ActiveConfig
    from rewardkit.train.active import select_next_pairs

    try:
        cfg = ActiveConfig(k=k, random_fraction=random_fraction, disagreement_fraction=disagreement_fraction,
                           per_prompt_cap=per_prompt_cap, seed=seed)
        selected, summary = select_next_pairs(scorer, stage, items_path, cfg, pool=pool_path,
                                              labelled_pairs=labelled_path, preferences=prefs_path)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise UserError(str(exc)) from exc
    write_table(selected.select("pair_id", "prompt_id", "item_a", "item_b"), out, "pairs")
    selected.write_csv(out.with_suffix(".csv"))  # with selected_by, p_a and disagreement
    click.echo(f"selected {summary['selected']} of {summary['pool']} pairs ({summary['by']}; {summary['members']} "
               f"member(s), temperature {summary['temperature']:.3g} from {summary['calibration_pairs']} labelled) -> {out}")


@click.command("hand-over")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=Path("data"),
              show_default=True, help="The finished round's data folder (items, pairs, preferences, scorers/, rl/candidates/).")
@click.option("--to", "to", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The previous-round folder of the next round (default DATA/previous_round; pairs.active.previous).")
@click.option("--rl-candidates", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The policy's samples to offer next (default DATA/rl/candidates).")
def hand_over_cmd(data_dir, to, rl_candidates) -> None:
    """Hand a finished round to the next one: its scorers and the policy's samples (replaced) and its
    labelled pairs, answers, items and renders (added to the earlier rounds'). Then set generate.source
    own with generate.own.dir PREVIOUS/candidates and pairs.strategy active, and `dvc repro`
    (docs/active-learning.md)."""
    from rewardkit.data.rounds import HandOverError, hand_over

    try:
        entry = hand_over(data_dir, to, rl_candidates=rl_candidates)
    except (HandOverError, OSError) as exc:
        raise UserError(str(exc)) from exc
    dest = to or data_dir / "previous_round"
    click.echo(f"round {entry['round']} handed over to {dest}: {entry['pairs']} pairs, {entry['preferences']} answers, "
               f"{entry['items']} items with renders ({entry['total_pairs']} labelled pairs over all rounds); "
               + ("the policy's samples in " + str(dest / "candidates") if entry["candidates"]
                  else "no policy samples (set rl.candidates.every to write them)"))
