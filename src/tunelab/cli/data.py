"""`tunelab data ...`: data-preparation commands, thin wrappers over `tunelab.data.prepare`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunelab.data.io import DataError, write_records
from tunelab.data.sources import read_any
from tunelab.data.prepare import augment, clean, dedup, split
from tunelab.data.prepare.augment import AUGMENTERS
from tunelab.data.prepare.dialogue import extract_dialogue_files
from tunelab.utils.io import atomic_write_jsonl, atomic_write_text

app = typer.Typer(help="Prepare data: clean, deduplicate, split, extract dialogue from scripts, augment.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich")
out = Console()
err = Console(stderr=True)

InputArg = Annotated[Path, typer.Argument(help="Records file: .json (array) or .jsonl.", show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option("--out", "--output", "-o", help="Output file (.json or .jsonl). "
                                                   "Default: beside the input, e.g. data.clean.json.")]
RejectedOpt = Annotated[Optional[Path], typer.Option("--rejected", help="Side file (JSONL) for dropped rows with "
                                                     "reason and position. Default: <output>.rejected.jsonl.")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(1)


def _run(fn: Callable[[], None]) -> None:
    """Run a command body, turning bad input into one clear message and exit code 1."""
    try:
        fn()
    except (DataError, ValueError, OSError) as e:
        _fail(str(e))


def _default_out(src: Path, tag: str) -> Path:
    return src.with_name(f"{src.stem}.{tag}{src.suffix if src.suffix in ('.json', '.jsonl') else '.jsonl'}")


def _side(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejected.jsonl")


def _summary(title: str, counts: Counter, order: list[str], files: dict[str, Path | None]) -> None:
    out.print(f"[bold]{title}[/]", highlight=False)
    table = Table()
    table.add_column("")
    table.add_column("records", justify="right")
    for key in order + sorted(k for k in counts if k not in order):
        if key in counts or key in order[:2]:
            table.add_row(key.replace("_", " "), f"{counts.get(key, 0):,}")
    out.print(table)
    for name, path in files.items():
        if path is not None:
            out.print(f"{name}: {path}", highlight=False)


@app.command("clean")
def clean_cmd(
    input: InputArg,
    output: OutputOpt = None,
    rejected: RejectedOpt = None,
    min_chars: Annotated[int, typer.Option(help="Drop records with fewer characters (all text fields).")] = 2,
    max_chars: Annotated[Optional[int], typer.Option(help="Drop records with more characters. Default: no limit.")]
    = None,
    keep_cjk_punct: Annotated[bool, typer.Option(help="Keep full-width Chinese punctuation (NFKC turns '，' "
                                                 "into ',').")] = False,
    html: Annotated[bool, typer.Option(help="Strip HTML tags and entities (turn off for code data).")] = True,
) -> None:
    """Normalize text (NFKC, control characters, HTML remnants, whitespace) and drop empty/short/long records.

    Example:

        tunelab data clean data.json -o data.clean.json --min-chars 4 --max-chars 4000
    """
    def body() -> None:
        steps = ("unicode", "html", "control", "whitespace") if html else ("unicode", "control", "whitespace")
        res = clean(read_any(input), min_chars=min_chars, max_chars=max_chars, steps=steps,
                    keep_cjk_punct=keep_cjk_punct)
        dst = output or _default_out(input, "clean")
        kept, side = res.write(dst, rejected or _side(dst))
        _summary(f"clean {input}", res.counts, ["input", "kept", "modified"], {"kept": kept, "rejected": side})
    _run(body)


@app.command("dedup")
def dedup_cmd(
    input: InputArg,
    output: OutputOpt = None,
    rejected: RejectedOpt = None,
    mode: Annotated[str, typer.Option(help="exact, near or both.")] = "both",
    threshold: Annotated[float, typer.Option(help="Jaccard similarity for near duplicates (lower removes more).")]
    = 0.8,
    num_perm: Annotated[int, typer.Option(help="MinHash permutations (more: slower, more accurate).")] = 128,
    char_ngram: Annotated[int, typer.Option(help="Shingle size in characters for Chinese/Japanese/Korean.")] = 3,
    word_ngram: Annotated[int, typer.Option(help="Shingle size in words for other text.")] = 3,
) -> None:
    """Remove exact and near-duplicate records (MinHash LSH), keeping the first occurrence.

    Removed rows go to the side file with the position of the record they duplicate.

    Example:

        tunelab data dedup huanhuan.json -o huanhuan.dedup.json --mode both --threshold 0.8
    """
    def body() -> None:
        res = dedup(read_any(input), mode=mode, threshold=threshold, num_perm=num_perm,  # type: ignore[arg-type]
                    char_ngram=char_ngram, word_ngram=word_ngram)
        dst = output or _default_out(input, "dedup")
        kept, side = res.write(dst, rejected or _side(dst))
        _summary(f"dedup {input}", res.counts, ["input", "kept", "exact", "near"], {"kept": kept, "removed": side})
    _run(body)


@app.command("split")
def split_cmd(
    input: InputArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "--out-dir", "-o", help="Folder for train/val/test files (--out-dir is the same). "
                                                    "Default: <input stem>_split beside the input.")] = None,
    val: Annotated[float, typer.Option(help="Validation fraction (0.15-0.2 is the usual advice).")] = 0.15,
    test: Annotated[float, typer.Option(help="Test fraction (0: no test file).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Shuffle seed: same seed, same split.")] = 42,
    stratify: Annotated[str, typer.Option(help="Field to stratify on; 'auto' uses 'label' when every record has "
                                          "one; 'none' turns it off.")] = "auto",
) -> None:
    """Split into train/val(/test) files, seeded, stratified by label for classification data.

    Example:

        tunelab data split news.jsonl --out-dir news_split --val 0.15 --test 0.1 --seed 42
    """
    def body() -> None:
        res = split(read_any(input), val=val, test=test, seed=seed,
                    stratify=None if stratify.lower() == "none" else stratify)
        paths = res.write(out_dir or input.with_name(f"{input.stem}_split"),
                          input.suffix if input.suffix in (".json", ".jsonl") else ".jsonl")
        out.print(f"[bold]split {input}[/]" + (f" (stratified by '{res.stratified_by}')" if res.stratified_by
                                                else ""), highlight=False)
        table = Table()
        table.add_column("part")
        table.add_column("records", justify="right")
        labels = sorted({lab for c in res.label_counts.values() for lab in c})
        for lab in labels:
            table.add_column(lab, justify="right")
        for part, rows in res.parts.items():
            if part in paths:
                table.add_row(part, f"{len(rows):,}", *(str(res.label_counts[part][lab]) for lab in labels))
        out.print(table)
        for part, path in paths.items():
            out.print(f"{part}: {path}", highlight=False)
        if not 0.15 <= val <= 0.2:
            out.print(f"note: val={val} is outside the usual 0.15-0.2", style="yellow")
    _run(body)


def _read_script(path: Path, encoding: str | None) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such script file")
    data = path.read_bytes()
    for enc in ([encoding] if encoding else ["utf-8-sig", "gb18030"]):
        try:
            return data.decode(enc)
        except UnicodeDecodeError as e:
            last = e
    raise DataError(f"{path}: cannot decode as {encoding or 'UTF-8 or GB18030'} ({last}); pass --encoding")


@app.command("extract-dialogue")
def extract_dialogue_cmd(
    scripts: Annotated[list[Path], typer.Argument(help="Play/film script(s), plain text ('名字：台词' or "
                                                  "'NAME: line'); several files (e.g. one per episode) make one "
                                                  "output.", show_default=False)],
    character: Annotated[str, typer.Option("--character", "-c", help="The persona: whose lines become outputs.")],
    alias: Annotated[Optional[list[str]], typer.Option("--alias", "-a", help="Another name of the same "
                                                       "character (repeat for more).")] = None,
    history: Annotated[int, typer.Option(help="Keep up to N earlier exchanges of the scene as history.")] = 0,
    system: Annotated[Optional[str], typer.Option(help="System prompt added to every record.")] = None,
    merge: Annotated[bool, typer.Option("--merge-consecutive/--no-merge", help="Merge consecutive lines of one "
                                        "speaker into one turn, or keep one record per script line (the layout "
                                        "of the published Chat-嬛嬛 set).")] = True,
    output: Annotated[Optional[Path], typer.Option("--out", "--output", "-o", help="Output file. Default: <script "
                                                   "stem>.<character>.json (several scripts: <character>.json "
                                                   "beside the first).")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="Script encoding. Default: UTF-8, then GB18030.")] = None,
    prose: Annotated[bool, typer.Option("--prose", help="The files are prose (a novel) with unmarked speakers: "
                                        "find the quotes, attribute them to --speakers (rules, then "
                                        "--attribute-with), then extract as from a script.")] = False,
    speakers: Annotated[Optional[str], typer.Option(help="--prose: the cast, comma-separated (the character "
                                                    "included).")] = None,
    attribute_with: Annotated[Optional[str], typer.Option(
        help="--prose: a run folder, local model or OpenAI-compatible URL that attributes the quotes the rules "
             "cannot (without it those are dropped).")] = None,
    attribute_model: Annotated[Optional[str], typer.Option(help="--attribute-with URL: the model name to ask.")]
    = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="TUNELAB_ATTRIBUTE_API_KEY",
                                                   help="--attribute-with URL: its API key.")] = None,
    model_all: Annotated[bool, typer.Option(help="--prose: ask the model about every quote, not only those the "
                                            "rules leave open.")] = False,
    script_out: Annotated[Optional[Path], typer.Option(help="--prose: also write the attributed quotes as a "
                                                       "'名字：台词' script here, to review.")] = None,
    swap: Annotated[bool, typer.Option("--swap/--no-swap", help="--prose: ask the model twice (cast in order and "
                                       "reversed) and keep a speaker only when both answers agree.")] = True,
) -> None:
    """Turn scripts into Alpaca records for a persona model: the character's lines are outputs.

    The line just before each of the character's lines is the instruction.

    Stage directions （…） (…) […] 【…】 are dropped; scene headings (第一幕, SCENE 2, 场景：…) reset the context.
    A semicolon typed for the colon (皇帝；… or KING; …) still marks a speaker known from elsewhere in the
    scripts; before an unknown name it is kept as text and listed as a warning (unknown markers).

    Example:

        tunelab data extract-dialogue ep01.txt ep02.txt --character 甄嬛 --alias 嬛嬛 --history 2 -o huanhuan.json
    """
    def body() -> None:
        texts = [(str(s), _read_script(s, encoding)) for s in scripts]
        if prose:
            texts = _prose_to_scripts(texts, speakers, attribute_with, attribute_model, api_key, model_all,
                                      script_out, swap)
        res = extract_dialogue_files(texts, character,
                                     aliases=alias or [], history=history, system=system, merge=merge)
        first = scripts[0]
        dst = output or (first.with_name(f"{first.stem}.{character}.json") if len(scripts) == 1
                         else first.with_name(f"{character}.json"))
        write_records(dst, res.kept)
        side = atomic_write_jsonl(_side(dst), res.rejected) if res.rejected else None
        for line in res.warnings[:10]:
            err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if len(res.warnings) > 10:
            err.print(f"[yellow]warning:[/] ... and {len(res.warnings) - 10} more", highlight=False)
        _summary(f"extract-dialogue {' '.join(map(str, scripts))} --character {character}", res.counts,
                 ["lines", "scenes", "turns", "target_turns", "records", "no_prompt"],
                 {"records": dst, "skipped": side})
    _run(body)


def _prose_to_scripts(texts, speakers, attribute_with, attribute_model, api_key, model_all, script_out, swap=True):
    """Attribute each prose file's quotes (rules, then the model) and return them as '名字：台词' scripts."""
    from tunelab.data.prepare.prose import attribute, to_script

    if not speakers:
        raise DataError("--prose needs --speakers NAME,NAME,... (the cast whose quotes are attributed)")
    chooser = None
    if attribute_with:
        from tunelab.eval.judge import load_judge

        chooser = load_judge(attribute_with, model=attribute_model, api_key=api_key)
    out, stats = [], {"quotes": 0, "rule": 0, "model": 0, "unattributed": 0}
    for name, text in texts:
        paras, quotes = attribute(text, speakers.split(","), chooser, model_all=model_all, swap=swap)
        stats["quotes"] += len(quotes)
        for q in quotes:
            stats[q.by or "unattributed"] += 1
        out.append((name, to_script(paras, quotes)))
    if script_out:
        atomic_write_text(script_out, "".join(t for _, t in out))
    err.print(f"prose: {stats['quotes']} quotes, {stats['rule']} attributed by rule, {stats['model']} by "
              f"{attribute_with or 'no model'}, {stats['unattributed']} left out", highlight=False)
    return out


@app.command("augment")
def augment_cmd(
    input: InputArg,
    output: OutputOpt = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help=f"Operation, repeatable: {', '.join(AUGMENTERS)}. "
                                                    "Default: synonym.")] = None,
    rate: Annotated[float, typer.Option(help="Per-word (per-sentence for reorder) probability.")] = 0.1,
    copies: Annotated[int, typer.Option(help="Augmented copies per record and operation.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    answers: Annotated[bool, typer.Option(help="Also change the answer side (off: answers stay exactly as "
                                          "written).")] = False,
    original: Annotated[bool, typer.Option(help="Keep the original records in the output.")] = True,
    generate: Annotated[int, typer.Option(help="Also write N new records with a model (few-shot).")] = 0,
    model: Annotated[Optional[str], typer.Option(help="Model for --generate (name or folder).")] = None,
    shots: Annotated[int, typer.Option("--k", help="Seed examples shown per generation prompt.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply per generation call, in tokens.")] = 256,
    max_calls: Annotated[Optional[int], typer.Option(help="Most generation calls (default 2 * N + 2).")] = None,
    back_translate: Annotated[Optional[str], typer.Option(
        help="Also add a back-translated copy per record: zh-en (Chinese -> English -> Chinese) or en-zh, "
             "through --bt-with.")] = None,
    bt_with: Annotated[Optional[str], typer.Option(
        help="--back-translate: a local model (name, folder or run folder) or an OpenAI-compatible URL "
             "(e.g. http://127.0.0.1:8000 from `tunelab serve`).")] = None,
    bt_model: Annotated[Optional[str], typer.Option(help="--bt-with URL: the model name to ask.")] = None,
    bt_api_key: Annotated[Optional[str], typer.Option(envvar="TUNELAB_BT_API_KEY",
                                                      help="--bt-with URL: its API key.")] = None,
    synonyms: Annotated[Optional[list[Path]], typer.Option(
        "--synonyms", help="A synonym file to add to the shipped table (JSON groups, Cilin lines "
        "'Aa01A01= 人 士 人物', or one group of words per line); repeatable.")] = None,
    synonyms_only: Annotated[bool, typer.Option(help="Use only the --synonyms files, not the shipped table.")]
    = False,
) -> None:
    """Add augmented copies: synonym replacement, reordering, random deletion/insertion; optionally LLM few-shot
    and back-translation.

    Only the input side changes unless --answers is given, so answers stay correct.

    Examples:

        tunelab data augment train.json -o train.aug.json --op synonym --op delete --rate 0.1

        tunelab data augment train.json -o train.gen.json --op synonym --generate 20 --model smollm2-135m

        tunelab data augment zh.json -o zh.bt.json --op synonym --back-translate zh-en --bt-with http://127.0.0.1:8000
    """
    def body() -> None:
        records = read_any(input)
        if back_translate and not bt_with:
            raise ValueError("--back-translate needs --bt-with MODEL_OR_URL (the model that translates)")
        if synonyms or synonyms_only:
            from tunelab.data.prepare.augment import use_synonyms

            err.print(f"synonyms: {use_synonyms(synonyms or [], replace=synonyms_only)} groups in use", highlight=False)
        res = augment(records, ops=op or ["synonym"], rate=rate, copies=copies, seed=seed,
                      sides=("input", "output") if answers else ("input",), keep_original=original)
        files: dict[str, Path | None] = {}
        if generate:
            if not model:
                raise ValueError("--generate needs --model (a model name such as smollm2-135m, or a folder)")
            from tunelab.bases import load_model
            from tunelab.data.prepare import generate_with_model
            from tunelab.models import load_tokenizer

            gen = generate_with_model(load_model(model), load_tokenizer(model), records, k=shots, n=generate,
                                      seed=seed, max_new_tokens=max_new_tokens, max_calls=max_calls)
            res.kept.extend(gen.kept)
            res.counts.update({f"generated {k}": v for k, v in gen.counts.items()})
            res.counts["kept"] = len(res.kept)
            res.rejected = gen.rejected
        if back_translate:
            from tunelab.data.prepare.backtranslate import back_translate as bt

            sides = ("input", "output") if answers else ("input",)
            trans = bt(records, _bt_generator(bt_with, bt_model, bt_api_key, max_new_tokens), direction=back_translate,
                       sides=sides, keep_original=False)
            res.kept.extend(trans.kept)
            res.counts.update({f"back-translation {k}": v for k, v in trans.counts.items()})
            res.counts["kept"] = len(res.kept)
            res.rejected = [*res.rejected, *trans.rejected]
        dst = output or _default_out(input, "aug")
        kept, side = res.write(dst, _side(dst) if res.rejected else None)
        files.update(kept=kept, rejected=side)
        _summary(f"augment {input}", res.counts, ["input", "kept", "augmented", "unchanged"], files)
    _run(body)


def _bt_generator(spec: str, model: str | None, api_key: str | None, max_new_tokens: int):
    """The translating model: an OpenAI-compatible endpoint, or a local model / run folder decoding greedily."""
    from tunelab.data.prepare.backtranslate import endpoint_generator

    if spec.startswith(("http://", "https://")):
        return endpoint_generator(spec, model, api_key, max_tokens=max_new_tokens)
    from tunelab.data.prepare import hf_generator
    from tunelab.models import load_model, load_tokenizer

    return hf_generator(load_model(spec), load_tokenizer(spec), max_new_tokens=max_new_tokens, temperature=0.0)


@app.command("inspect")
def inspect_cmd(
    input: Annotated[Path, typer.Argument(help="Data file (.json, .jsonl, .csv, .tsv, .parquet) or a "
                                          "save_to_disk folder.", show_default=False)],
    model: Annotated[str, typer.Option(help="Model whose tokenizer and chat template measure the lengths.")]
    = "smollm2-135m",
    max_length: Annotated[int, typer.Option(help="Training max_length: samples longer than it are counted.")] = 1024,
    chat_template: Annotated[Optional[str], typer.Option(help="Named template or .jinja file (default: the "
                                                         "tokenizer's own).")] = None,
    png: Annotated[Optional[Path], typer.Option(help="Token-length histogram PNG. Default: "
                                                "<input stem>.lengths.png beside the input.")] = None,
    example: Annotated[int, typer.Option(help="Which valid record to show rendered.")] = 0,
) -> None:
    """Detected format, counts, token-length histogram, truncation at max_length, duplicates, labels,
    and one rendered example with the trained tokens marked. Records with images: image counts and sizes; with
    a vision --model (e.g. tiny-llava or a VLM folder) the image tokens per sample, shown as one placeholder.

    Example:

        tunelab data inspect huanhuan.json --model smollm2-135m --max-length 512 --png huanhuan.png
    """
    def body() -> None:
        from tunelab.data.inspect import TRAINED_CLOSE, TRAINED_OPEN, inspect_data, write_length_png
        from tunelab.data.sources import read_any
        from tunelab.data.templates import resolve_template
        from tunelab.models import load_tokenizer
        from tunelab.models.loader import vision_source

        records = read_any(input)  # an unreadable file fails before the tokenizer is loaded
        vision_dir = vision_source(model)
        if vision_dir is not None:  # a vision model: measured with its processor, images expanded
            from tunelab.models.vision import load_processor

            proc = load_processor(vision_dir)
            report = inspect_data(input, proc.tokenizer, resolve_template(proc, chat_template), max_length,
                                  example_index=example, records=records, processor=proc)
        else:
            tok = load_tokenizer(model)
            report = inspect_data(input, tok, resolve_template(tok, chat_template), max_length,
                                  example_index=example, records=records)
        text = report.to_text()
        head, _, sample = text.partition(f"example (trained tokens in {TRAINED_OPEN} {TRAINED_CLOSE}):\n")
        out.print(head, highlight=False, markup=False, soft_wrap=True, end="")
        if sample:
            out.print(f"example (trained tokens in [green]{TRAINED_OPEN} {TRAINED_CLOSE}[/]):", highlight=False)
            for piece, trained in report.example:
                out.print(f"{TRAINED_OPEN}{piece}{TRAINED_CLOSE}" if trained else piece,
                          style="green" if trained else None, highlight=False, markup=False, soft_wrap=True,
                          end="")
            out.print()
        dst = write_length_png(report, png or input.with_name(f"{input.stem}.lengths.png"))
        out.print(f"histogram: {dst}", highlight=False)
    _run(body)


@app.command("convert")
def convert_cmd(
    input: Annotated[Path, typer.Argument(help="Data file or save_to_disk folder (format auto-detected).",
                                          show_default=False)],
    output: Annotated[Path, typer.Argument(help="Output JSONL file.", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="Target format: alpaca, sharegpt or messages.")],
) -> None:
    """Convert SFT data between Alpaca, ShareGPT and OpenAI messages (JSONL out, tool calls kept).

    Example:

        tunelab data convert glaive_toolcall_en_demo.json tools.messages.jsonl --to messages
    """
    def body() -> None:
        from tunelab.data.convert import convert

        n, found = convert(input, output, to)
        out.print(f"converted {n} records from {found} to {to}: {output}", highlight=False)
    _run(body)
