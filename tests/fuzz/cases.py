"""Seeded generator of bad inputs for the hardening harness (docs/reliability.md).

Every case is plain data: the files to put in a fresh sandbox, then either a `tunelab` command line or an HTTP
request. `must_fail` says the input is certainly wrong (the command has to refuse it); a case that may be valid
after the mutation (a flipped byte inside a string, a UTF-16 file a reader could decode) only has to end without
a traceback. `names` lists the words a clear error must contain (the file, or the config key); `needs_line` asks
for a line (or record) number as well.

Families and their sizes are fixed for a seed; TUNELAB_FUZZ_SEED picks another seed and TUNELAB_FUZZ_SCALE
multiplies the number of random cases of every family.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

SEED = int(os.environ.get("TUNELAB_FUZZ_SEED", "0"))
SCALE = float(os.environ.get("TUNELAB_FUZZ_SCALE", "1"))

# The sandbox a case runs in: WORK is the current directory (the config, data and runs/ live there), OUTSIDE is a
# sibling folder no command may write to, and which the studio must refuse to read.
WORK, OUTSIDE = "work", "outside"
RUN_DIR = "runs/fuzz"  # the only place a CLI case may write (the run folder)


@dataclass
class Case:
    """One bad input and what a correct program does with it."""

    family: str
    name: str
    files: dict[str, bytes] = field(default_factory=dict)  # path under the sandbox -> content
    argv: list[str] | None = None  # a `tunelab` command line (cwd = WORK)
    http: dict[str, Any] | None = None  # {"app": "server"|"studio", "method", "path", "json"|"content"|"upload"}
    must_fail: bool = True
    names: tuple[str, ...] = ()  # a clear error names one of these (a file name, a config key, a field)
    needs_line: bool = False  # ... and a line / record number
    allowed_out: tuple[str, ...] = ()  # paths under WORK a command may create even when it fails

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


def n_random(base: int) -> int:
    return max(1, int(base * SCALE))


# ---------------------------------------------------------------------------------------------------- valid seeds
ALPACA = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}"}
          for a in range(3) for b in range(3)]
RECORDS: dict[str, list[dict]] = {
    "alpaca": ALPACA,
    "sharegpt": [{"conversations": [{"from": "human", "value": r["instruction"]},
                                    {"from": "gpt", "value": r["output"]}]}
                 for r in ALPACA],
    "messages": [{"messages": [{"role": "user", "content": r["instruction"]},
                               {"role": "assistant", "content": r["output"]}]} for r in ALPACA],
    "text": [{"text": f"Document {i}: the sum of {i} and {i} is {2 * i}. Numbers are fun."} for i in range(9)],
    "preference": [{"prompt": r["instruction"], "chosen": r["output"], "rejected": "I do not know."} for r in ALPACA],
    "kto": [{"prompt": r["instruction"], "completion": r["output"], "label": i % 2 == 0} for i, r in enumerate(ALPACA)],
    "classification": [{"text": f"sample number {i} about {'sports' if i % 2 else 'music'}",
                        "label": "sports" if i % 2 else "music"} for i in range(10)],
}
STAGE_OF = {"alpaca": "sft", "sharegpt": "sft", "messages": "sft", "text": "pretrain", "preference": "dpo",
            "kto": "kto", "classification": "classify"}
# The field of each format that holds a string a mutation can break.
TEXT_FIELD = {"alpaca": "output", "sharegpt": "conversations", "messages": "messages", "text": "text",
              "preference": "chosen", "kto": "completion", "classification": "text"}

BASE_CONFIG = ("# a valid tiny run; the fuzz cases break it\n"
               "model: {name: tiny-llama}\n"
               "data:\n  train: train.json\n  max_length: 64\n"
               "method: {name: lora, r: 4}\n"
               "train:\n  max_steps: 1\n  batch_size: 2\n  lr: 1.0e-3\n  report: false\n"
               f"output_dir: {RUN_DIR}\n")
BASE_FILES = {f"{WORK}/train.json": json.dumps(ALPACA).encode(), f"{WORK}/cfg.yaml": BASE_CONFIG.encode()}


def encode(records: list[dict], ext: str) -> bytes:
    """Records as a file of one of the formats the readers take."""
    if ext == "json":
        return json.dumps(records, ensure_ascii=False, indent=1).encode()
    if ext == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    flat = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in records]
    if ext == "csv":
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
        return buf.getvalue().encode()
    if ext == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records), buf)
        return buf.getvalue()
    raise ValueError(ext)


# ---------------------------------------------------------------------------------------------------- byte mutations
def flip_byte(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]


def insert_invalid_utf8(data: bytes, rng: random.Random, at: int | None = None) -> bytes:
    """0xff/0xfe/0xc0 can never appear in UTF-8: the file is certainly not UTF-8 text."""
    i = rng.randrange(len(data)) if at is None else at
    return data[:i] + bytes([rng.choice([0xFF, 0xFE, 0xC0, 0xC1, 0xF8])]) + data[i:]


def latin1(text: str) -> bytes:
    """A YAML text with an accented comment, encoded as Latin-1 (so not UTF-8)."""
    return ("# café résumé\n" + text).encode("latin-1")


def deep(n: int, kind: str = "list") -> str:
    return "[" * n + "]" * n if kind == "list" else '{"a":' * n + "1" + "}" * n


# ---------------------------------------------------------------------------------------------------- config cases
BAD_VALUES: list[tuple[str, str, bool]] = [
    # key, YAML value, must fail
    ("train.lr", "fast", True), ("train.lr", "[1, 2]", True), ("train.lr", "{a: 1}", True), ("train.lr", "-1", True),
    ("train.lr", "0", True), ("train.lr", ".inf", True), ("train.lr", ".nan", True), ("train.lr", "-.inf", True),
    ("train.lr", "1e400", True), ("train.lr", "null", True), ("train.epochs", ".inf", True),
    ("train.epochs", ".nan", True), ("train.epochs", "1e400", True), ("train.epochs", "0", True),
    ("train.seed", "1e30", True), ("train.seed", "99999999999999999999999", True), ("train.seed", "-1e30", True),
    ("train.seed", "1.5", True), ("train.batch_size", "0", True), ("train.batch_size", "2.5", True),
    ("train.batch_size", "1e30", True), ("train.batch_size", "'many'", True), ("train.max_steps", "-3", True),
    ("train.max_steps", "1e400", True), ("train.warmup_ratio", "1.5", True), ("train.warmup_ratio", ".nan", True),
    ("train.weight_decay", ".inf", True), ("train.weight_decay", ".nan", True), ("train.max_grad_norm", ".inf", True),
    ("train.max_grad_norm", ".nan", True), ("train.label_smoothing", ".nan", True), ("train.scheduler", "wavy", True),
    ("train.device", "tpu", True), ("train.report_to", "[slack]", True), ("train.grad_accum", "1e30", True),
    ("data.max_length", "4", True), ("data.max_length", "1e30", True), ("data.max_length", ".inf", True),
    ("data.val_size", "1.0", True), ("data.val_size", ".nan", True), ("data.train", "[]", True),
    ("data.train", "42", True), ("data.train", "[{wieght: 1}]", True),
    ("data.train", "[{path: a.json, weight: .nan}]", True),
    ("data.train", "[{path: a.json, weight: .inf}]", True), ("data.format", "csvish", True),
    ("data.max_samples", "0", True),
    ("data.columns", "[a, b]", True), ("method.name", "magic", True), ("method.r", "0", True),
    ("method.r", "1e30", True),
    ("method.alpha", ".nan", True), ("method.dropout", ".nan", True), ("method", "lora", True),
    ("model.name", "[1]", True), ("model.dtype", "float8", True), ("model.trust_remote_code", "maybe", True),
    ("stage", "magic", True), ("stage", "[sft]", True), ("optim.name", "sgd-ish", True), ("train", "5", True),
    ("data", "[]", True), ("output_dir", "[]", True), ("grpo.rewards", "[]", True),
    ("grpo.reward_weights", "[.nan]", True), ("grpo.temperature", ".inf", True), ("distill.temperature", ".nan", True),
    ("preference.beta", ".nan", True), ("preference.beta", ".inf", True),
]
UNKNOWN_KEYS = [("train.lerning_rate", "1e-4", "train.lerning_rate"),
                ("train.learning_rate", "1e-4", "train.learning_rate"),
                ("data.trian", "x.json", "data.trian"), ("modell.name", "tiny-llama", "modell"),
                ("train.epochs_", "1", "train.epochs_"), ("method.rank", "8", "method.rank"),
                ("num_train_epochs", "3", "num_train_epochs"), ("train.lr.value", "1", "train.lr")]


def _yaml_set(text: str, key: str, value: str) -> str:
    """The base config with `key` set to the raw YAML text `value` (written into the file, not an override)."""
    import yaml

    data = yaml.safe_load(text)
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = "@@VALUE@@"
    return yaml.safe_dump(data, sort_keys=False).replace("'@@VALUE@@'", value)


def config_cases(rng: random.Random) -> list[Case]:
    """Broken configs, checked by `config show` (fast) and `train` (the real path)."""
    out: list[Case] = []
    cmds = (["config", "show", "cfg.yaml"], ["train", "cfg.yaml", "--quiet"])

    def add(name: str, cfg: bytes, must_fail: bool = True, names: tuple[str, ...] = ("cfg.yaml",),
            needs_line: bool = False, train: bool = False, extra: dict | None = None) -> None:
        for argv in cmds[:2 if train else 1]:
            files = {**BASE_FILES, f"{WORK}/cfg.yaml": cfg, **(extra or {})}
            out.append(Case("config", f"{name}[{argv[0]}]", files, list(argv), must_fail=must_fail, names=names,
                            needs_line=needs_line))

    base = BASE_CONFIG
    for i, (key, value, fail) in enumerate(BAD_VALUES):
        add(f"value:{key}={value}", _yaml_set(base, key, value).encode(), fail, (key,), train=i % 3 == 0)
    for key, value, shown in UNKNOWN_KEYS:
        add(f"unknown:{key}", _yaml_set(base, key, value).encode(), True, (shown,), train=True)
    add("missing:data", base.replace("data:\n  train: train.json\n  max_length: 64\n", "").encode(), names=("data",),
        train=True)
    add("missing:data.train", base.replace("  train: train.json\n", "").encode(), names=("data.train",))
    add("empty-file", b"", names=("data", "cfg.yaml"), train=True)
    add("only-comment", b"# nothing here\n", names=("data", "cfg.yaml"))
    for top in (b"- a\n- b\n", b"42\n", b"'just a string'\n", b"null\n", b"[]\n", b"!!binary aGVsbG8=\n"):
        add(f"top-level:{top[:12]!r}", top, train=top == b"42\n")
    for tag in ("!!python/object/apply:os.system ['touch ../outside/pwned']",
                "!!python/object:__main__.X {}", "!!python/name:os.system", "!!python/module:os",
                "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch pwned']"):
        add(f"yaml-tag:{tag[:24]}", (base + f"evil: {tag}\n").encode(), True, ("cfg.yaml", "evil"), train=True)
    # (each duplicate keeps max_steps: 1, so a program that wrongly accepts it trains one step, not a full run)
    for dup in ("train:\n  max_steps: 1\n  lr: 1.0e-4\n", f"output_dir: {RUN_DIR}\n", "model: {name: tiny-llama}\n"):
        add(f"duplicate-key:{dup.split(':')[0]}", (base + dup).encode(), True, ("cfg.yaml",), needs_line=True,
            train=True)
    add("duplicate-inner-key", base.replace("  lr: 1.0e-3\n", "  lr: 1.0e-3\n  lr: 5.0e-3\n").encode(), True,
        ("cfg.yaml",), needs_line=True)
    for n in (1000, 5000, 20000):
        add(f"deep-list:{n}", (base + f"extra: {deep(n)}\n").encode(), True, ("cfg.yaml", "extra"), train=n == 5000)
        add(f"deep-map:{n}", (base + "extra: " + "{a: " * n + "1" + "}" * n + "\n").encode(), True,
            ("cfg.yaml", "extra"))
        add(f"deep-block:{n}", (base + "extra:\n" + "".join(" " * i + "- \n" for i in range(min(n, 3000)))).encode(),
            True, ("cfg.yaml", "extra"))
    add("alias-bomb", (base + "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcde", "bcdef"))
        + "train: {epochs: *f}\n").encode(), True, ("cfg.yaml", "train.epochs", "a"))
    add("surrogate-escape", base.replace(f"output_dir: {RUN_DIR}", 'output_dir: "runs/\\ud800"').encode(), False,
        ("output_dir",))
    add("nul-in-value", base.replace(f"output_dir: {RUN_DIR}", 'output_dir: "runs/a\\0b"').encode(), True,
        ("output_dir", "cfg.yaml"), train=True)
    add("latin1", latin1(base), True, ("cfg.yaml",), train=True)
    add("utf16", base.encode("utf-16"), False, ("cfg.yaml",), train=True)
    add("utf32", base.encode("utf-32"), False, ("cfg.yaml",))
    add("binary", bytes(rng.randrange(256) for _ in range(512)), True, ("cfg.yaml",), train=True)
    add("gzip", __import__("gzip").compress(base.encode()), True, ("cfg.yaml",))
    add("bom-then-garbage", b"\xef\xbb\xbf" + b"\xff\xfe" + base.encode(), True, ("cfg.yaml",))
    add("tabs-indent", base.replace("  train: train.json", "\ttrain: train.json").encode(), True, ("cfg.yaml",),
        needs_line=True)
    add("unclosed-flow", base.replace("{name: lora, r: 4}", "{name: lora, r: 4").encode(), True, ("cfg.yaml",),
        needs_line=True, train=True)
    add("huge-string", base.replace(f"output_dir: {RUN_DIR}", "output_dir: runs/" + "x" * 300_000).encode(), True,
        ("output_dir",))
    for i in range(n_random(30)):
        add(f"invalid-utf8#{i}", insert_invalid_utf8(base.encode(), rng), True, ("cfg.yaml",), train=i < 3)
    for i in range(n_random(40)):
        add(f"byte-flip#{i}", flip_byte(base.encode(), rng), False, ("cfg.yaml",))
    for i in range(n_random(20)):
        cut = rng.randrange(1, len(base))
        add(f"truncated#{i}", base.encode()[:cut], False, ("cfg.yaml", "data"))
    return out


# ---------------------------------------------------------------------------------------------------- overrides
OVERRIDES: list[tuple[str, tuple[str, ...], bool]] = [
    ("train.lr=[", ("train.lr",), True), ("train.lr={", ("train.lr",), True), ("train.lr=]", ("train.lr",), True),
    ("train.lr=*a", ("train.lr",), True), ("train.lr=&a", ("train.lr",), True), ("train.lr=\x00", ("train.lr",), True),
    ("train.lr=1\x00", ("train.lr",), True), ("train.lr=!!python/object:os.system x", ("train.lr",), True),
    ("train.lr=!!python/object/apply:os.system ['touch pwned']", ("train.lr",), True),
    ("train.lr=!!python/name:os.system", ("train.lr",), True), ("train.lr=%YAML 1.1", ("train.lr",), True),
    ("train.lr=a: b: c", ("train.lr",), True), ("train.lr=- [", ("train.lr",), True),
    ("train.lr=|", ("train.lr",), True),
    ("train.lr='", ("train.lr",), True), ('train.lr="', ("train.lr",), True), ("train.lr=@", ("train.lr",), True),
    ("train.lr=`", ("train.lr",), True), ("train.lr=\t", ("train.lr",), True),
    ("train.lr=[" * 3000, ("train.lr",), True), ("train.lr=" + "[" * 3000 + "]" * 3000, ("train.lr",), True),
    ("train.lr=" + "{a: " * 3000 + "1" + "}" * 3000, ("train.lr",), True),
    ("train.epochs=.inf", ("train.epochs",), True), ("train.epochs=.nan", ("train.epochs",), True),
    ("train.seed=1e30", ("train.seed",), True), ("train.seed=18446744073709551616", ("train.seed",), True),
    ("train.lr=1e400", ("train.lr",), True), ("train.lr=.nan", ("train.lr",), True),
    ("train.lr=-.inf", ("train.lr",), True),
    ("train.max_steps=1e400", ("train.max_steps",), True), ("data.max_length=.inf", ("data.max_length",), True),
    ("train.lr", ("train.lr",), True), ("=1", ("=1", "override"), True), ("train..lr=1", ("train..lr",), True),
    (".lr=1", (".lr",), True), ("train.=1", ("train.",), True), (" =1", ("override",), True),
    ("train.lr.x=1", ("train.lr",), True), ("train=5", ("train",), True), ("data=[1]", ("data",), True),
    ("data.train=", ("data.train",), True), ("data.train=[]", ("data.train",), True),
    ("train.lerning_rate=1", ("train.lerning_rate",), True), ("nonsense.key=1", ("nonsense",), True),
    ("train.lr=\ud800", ("train.lr",), True), ("output_dir=runs/\ud800", ("output_dir",), False),
    ("method.name=\x00", ("method.name", "method"), True), ("stage=sft\x00", ("stage",), True),
    ("train.batch_size=1e30", ("train.batch_size",), True),
    ("train.scheduler=!!binary aGk=", ("train.scheduler",), True),
]
YAML_NOISE = "[]{}:,*&!|>'\"%@`#-? \t\x00\\"


def override_cases(rng: random.Random) -> list[Case]:
    """Bad KEY=VALUE overrides after a valid config."""
    out = []
    for i, (ov, names, fail) in enumerate(OVERRIDES):
        out.append(Case("overrides", f"{ov[:40]!r}", dict(BASE_FILES), ["config", "show", "cfg.yaml", ov],
                        must_fail=fail, names=names))
        if i % 4 == 0:
            out.append(Case("overrides", f"{ov[:40]!r}[train]", dict(BASE_FILES), ["train", "cfg.yaml", ov, "--quiet"],
                            must_fail=fail, names=names))
    keys = ["train.lr", "train.epochs", "train.batch_size", "data.max_length", "method.r", "train.warmup_ratio"]
    for i in range(n_random(60)):
        key = rng.choice(keys)
        noise = "".join(rng.choice(YAML_NOISE) for _ in range(rng.randint(1, 8)))
        # YAML noise never reads as a positive number, so the typed key must refuse it.
        value = rng.choice(["", "x", "1", "[1", "{", "!!"]) + noise
        fail = not value.strip() == "" and value not in ("1",)
        out.append(Case("overrides", f"random#{i}:{key}={value!r}", dict(BASE_FILES),
                        ["config", "show", "cfg.yaml", f"{key}={value}"], must_fail=fail, names=(key,)))
    return out


# ---------------------------------------------------------------------------------------------------- data files
FORMATS = list(RECORDS)
EXTS = ["json", "jsonl", "csv", "parquet"]


def _wrong_types(fmt: str, rng: random.Random, ext: str) -> list[dict]:
    """One record's text field of another type (every record's in Parquet, whose columns have one type)."""
    recs = [dict(r) for r in RECORDS[fmt]]
    key = TEXT_FIELD[fmt]
    value = rng.choice([5, None, {"a": 1}, True, 1.5, [[1]], [{"x": 1}]])
    for i in range(len(recs)) if ext == "parquet" else [rng.randrange(len(recs))]:
        recs[i][key] = value if value is not None or ext != "parquet" else 5
    return recs


def data_cases(rng: random.Random) -> list[Case]:
    """Broken data files of every format and file type, read by `data convert`, `data inspect` and `train`."""
    out: list[Case] = []

    def add(name: str, fmt: str, fname: str, content: bytes, must_fail: bool, needs_line: bool = False,
            via: str | None = None) -> None:
        """SFT formats go through `data convert` (no model, fast), a sample of the refusals also through `train`;
        the other formats through `train` (refusals) or `data inspect` (mutations that may still be valid, which
        would otherwise really train). Formats other than SFT get a sample of the mutations, to stay fast."""
        sft = fmt in ("alpaca", "sharegpt", "messages")
        if via is None and not sft and rng.random() < 0.5:
            return
        routes = [via] if via else ["convert"] if sft else ["train" if must_fail else "inspect"]
        if via is None and sft and must_fail and rng.random() < 0.2:
            routes.append("train")
        files = {**BASE_FILES, f"{WORK}/{fname}": content}
        for route in routes:
            if route == "convert":
                argv = ["data", "convert", fname, "out.jsonl", "--to", "messages"]
                allowed: tuple[str, ...] = ("out.jsonl",)
            elif route == "inspect":
                argv = ["data", "inspect", fname, "--model", "tiny-llama", "--max-length", "64", "--png", "h.png"]
                allowed = ("h.png",)
            else:
                argv = ["train", "cfg.yaml", f"data.train={fname}", f"stage={STAGE_OF[fmt]}", "--quiet"]
                allowed = ()
            out.append(Case("data", f"{fmt}.{fname.rsplit('.', 1)[-1]}:{name}[{route}]", files, argv,
                            must_fail=must_fail, names=(fname,), needs_line=needs_line,
                            allowed_out=() if must_fail else allowed))

    for fmt in FORMATS:
        for ext in EXTS:
            fname = f"d_{fmt}.{ext}"
            good = encode(RECORDS[fmt], ext)
            if ext != "parquet":
                add("invalid-utf8", fmt, fname, insert_invalid_utf8(good, rng, at=len(good) // 2), True)
                # "café" in every string text field, written as Latin-1 (0xe9 is never valid UTF-8 there); the
                # sharegpt/messages fields are lists, so those files stay ASCII and may be read
                key = TEXT_FIELD[fmt]
                accented = [{**r, key: "café"} if isinstance(r.get(key), str) else r for r in RECORDS[fmt]]
                add("latin1", fmt, fname, encode(accented, ext).decode().encode("latin-1"),
                    fmt not in ("sharegpt", "messages"))
                add("utf16", fmt, fname, good.decode().encode("utf-16"), False)
                add("byte-flip", fmt, fname, flip_byte(good, rng), False)
                # a lone surrogate is not text: refusing it and replacing it by U+FFFD are both fine, a crash is not
                add("surrogate", fmt, fname, good.replace(b"What", b"\\ud800What"), False,
                    via=None if fmt in ("alpaca", "sharegpt", "messages") else "train")
            add("binary", fmt, fname, bytes(rng.randrange(256) for _ in range(300)), True)
            add("empty", fmt, fname, b"", True)
            add("truncated", fmt, fname, good[: len(good) * 2 // 3], ext in ("json", "parquet"))
            add("wrong-type", fmt, fname, encode(_wrong_types(fmt, rng, ext), ext), ext in ("json", "jsonl", "parquet")
                and fmt not in ("sharegpt", "messages", "classification"))
            add("missing-field", fmt, fname, encode([{k: v for k, v in r.items() if k != TEXT_FIELD[fmt]}
                                                     for r in RECORDS[fmt]], ext), True)
            if ext in ("json", "jsonl"):
                nested = deep(50_000) if ext == "json" else deep(50_000, "map") + "\n"
                add("deep-nesting", fmt, fname, nested.encode(),
                    True)
                add("deep-field", fmt, fname, encode(RECORDS[fmt][:2], ext).rstrip(b"\n]")
                    + (b", " if ext == "json" else b"\n") + ('{"%s": %s}' % (TEXT_FIELD[fmt], deep(20_000))).encode()
                    + (b"]" if ext == "json" else b"\n"), True)
                add("not-records", fmt, fname, b'"a string"' if ext == "json" else b"[1, 2]\n[3]\n", True)
                add("nan-literal", fmt, fname, good.replace(b'"I do not know."', b"NaN").replace(b"true", b"NaN")
                    .replace(b'"3"', b"Infinity"), fmt in ("alpaca", "preference", "kto"))
                huge = [{**RECORDS[fmt][0], TEXT_FIELD[fmt]: "x" * 3_000_000}] if fmt in (
                    "alpaca", "text", "preference", "kto", "classification") else []
                add("huge-record", fmt, fname, encode(RECORDS[fmt] + huge, ext), False, via="convert" if fmt in
                    ("alpaca", "sharegpt", "messages") else None)
                broken = good.replace(b"}", b"}}", 1) if ext == "jsonl" else good.replace(b",", b",,", 3)
                add("syntax-error", fmt, fname, broken,
                    True, needs_line=True)
            if ext == "parquet":
                # JSON named .parquet: reading it by its content is as fine as refusing it by its name
                add("fake-parquet", fmt, fname, encode(RECORDS[fmt], "json"), False)
                add("parquet-flip", fmt, fname, flip_byte(good, rng), False)
                add("parquet-magic-only", fmt, fname, b"PAR1" + bytes(64) + b"PAR1", True)
            if ext == "csv":
                add("ragged-csv", fmt, fname, good + b'"unterminated,quote\n', False)
    for i in range(n_random(60)):
        fmt, ext = rng.choice(FORMATS), rng.choice(EXTS[:3])
        good = encode(RECORDS[fmt], ext)
        add(f"invalid-utf8#{i}", fmt, f"r{i}.{ext}", insert_invalid_utf8(good, rng), True)
    for i in range(n_random(60)):
        fmt, ext = rng.choice(FORMATS), rng.choice(EXTS)
        good = encode(RECORDS[fmt], ext)
        data = good
        for _ in range(rng.randint(1, 4)):
            data = flip_byte(data, rng)
        add(f"byte-flip#{i}", fmt, f"f{i}.{ext}", data, False)
    return out


# ---------------------------------------------------------------------------------------------------- server requests
def server_cases(rng: random.Random) -> list[Case]:
    """Bad requests to the OpenAI-compatible server (`tunelab serve`)."""
    out = []
    chat = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    comp = {"model": "base", "prompt": "hi", "max_tokens": 2}

    def add(name, path, body=None, content=None, must_fail=True, names=(), headers=None, method="POST"):
        req = {"app": "server", "method": method, "path": path, "json": body, "content": content,
               "headers": headers or {}}
        out.append(Case("server", name, {}, None, req, must_fail=must_fail, names=names))

    for path, base in (("/v1/chat/completions", chat), ("/v1/completions", comp)):
        tag = "chat" if "chat" in path else "completions"
        add(f"{tag}:seed=2**63", path, {**base, "seed": 2**63}, must_fail=False, names=("seed",))
        for key, values in {"seed": [2**64 + 5, -(2**63) - 1, 10**30, 1.5, "x"],
                            "max_tokens": [0, -1, 10**30, 2**63, 1.5],
                            "temperature": [-1, 3, 1e309, "hot"], "top_p": [0, 1.5, -0.1],
                            "n": [0, 5, 2**64], "stop": [5, [1, 2], {"a": 1}], "stream": ["sometimes", 2],
                            "model": ["nope", 5, None, "", "../base"], "user": [5, ["a"]]}.items():
            for v in values:
                add(f"{tag}:{key}={str(v)[:20]}", path, {**base, key: v}, names=(key,))
        add(f"{tag}:nan-temperature", path, content=json.dumps({**base, "temperature": float("nan")}).encode(),
            names=("temperature",))
        add(f"{tag}:inf-top_p", path, content=json.dumps({**base, "top_p": float("inf")}).encode(), names=("top_p",))
        add(f"{tag}:not-json", path, content=b"{not json", names=("JSON", "json", "body"))
        add(f"{tag}:empty-body", path, content=b"", names=("JSON", "json", "body"))
        add(f"{tag}:array-body", path, [1, 2], names=("body", "object"))
        add(f"{tag}:invalid-utf8", path, content=json.dumps(base).encode().replace(b"hi", b"h\xffi"),
            names=("UTF-8", "utf-8", "body"))
        add(f"{tag}:deep-nesting", path, content=deep(100_000, "map").encode(), names=("body", "JSON", "deep", "nest"))
        add(f"{tag}:deep-list", path, content=b'{"model": "base", "stop": ' + deep(100_000).encode() + b"}",
            names=("stop", "body", "deep"))
        add(f"{tag}:missing-model", path, {k: v for k, v in base.items() if k != "model"}, names=("model",))
        add(f"{tag}:huge-body", path, content=b'{"model": "base", "x": "' + b"a" * 3_000_000 + b'"}',
            names=("body", "large", "bytes"))
    add("completions:empty-prompt", "/v1/completions", {**comp, "prompt": ""}, must_fail=False, names=("prompt",))
    add("completions:empty-prompt-list", "/v1/completions", {**comp, "prompt": []}, names=("prompt",))
    add("completions:prompt-list-of-int", "/v1/completions", {**comp, "prompt": [1, 2]}, must_fail=False,
        names=("prompt",))
    add("completions:prompt-int", "/v1/completions", {**comp, "prompt": 5}, names=("prompt",))
    add("completions:surrogate", "/v1/completions", content=b'{"model": "base", "prompt": "\\ud800", "max_tokens": 2}',
        must_fail=False, names=("prompt",))
    add("chat:empty-messages", "/v1/chat/completions", {**chat, "messages": []}, names=("messages",))
    add("chat:messages-str", "/v1/chat/completions", {**chat, "messages": "hi"}, names=("messages",))
    add("chat:bad-role", "/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]},
        names=("role", "messages"))
    add("chat:content-int", "/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": 5}]},
        names=("content", "messages"))
    add("chat:surrogate", "/v1/chat/completions",
        content=b'{"model": "base", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}',
        must_fail=False, names=("content", "messages"))
    add("chat:max_completion_tokens=0", "/v1/chat/completions", {**chat, "max_completion_tokens": 0},
        names=("max_completion_tokens",))
    add("models:unknown", "/v1/models/..%2F..%2Fetc", method="GET", names=("model",))
    for i in range(n_random(40)):
        path, base = rng.choice([("/v1/chat/completions", chat), ("/v1/completions", comp)])
        raw = json.dumps(base).encode()
        for _ in range(rng.randint(1, 3)):
            raw = flip_byte(raw, rng)
        add(f"byte-flip#{i}:{'chat' if 'chat' in path else 'completions'}", path, content=raw, must_fail=False)
    return out


# ---------------------------------------------------------------------------------------------------- studio requests
PATH_FIELDS: list[tuple[str, dict]] = [
    # key, the config fragment that sets it to {P}
    ("data.train", {"data": {"train": "{P}"}}),
    ("data.eval", {"data": {"train": "datasets/ok.json", "eval": "{P}"}}),
    ("data.train[0].path", {"data": {"train": [{"path": "{P}"}]}}),
    ("data.train[0].eval", {"data": {"train": [{"path": "datasets/ok.json", "eval": "{P}"}]}}),
    ("model.name", {"model": {"name": "{P}"}}),
    ("model.chat_template", {"model": {"chat_template": "{P}"}}),
    ("method.tokenizer", {"method": {"name": "prompt", "init_text": "hi", "tokenizer": "{P}"}}),
    ("distill.teacher", {"stage": "distill", "distill": {"teacher": "{P}"}}),
    ("ppo.reward_model", {"stage": "ppo", "ppo": {"reward_model": "{P}"}}),
    ("selftrain.unlabelled", {"stage": "selftrain", "selftrain": {"mode": "pseudo_label", "unlabelled": "{P}"}}),
    ("selftrain.rewards", {"stage": "selftrain", "selftrain": {"mode": "rejection", "rewards": ["{P}"]}}),
    ("grpo.rewards", {"stage": "grpo", "grpo": {"rewards": ["{P}"]}}),
    ("train.resume", {"train": {"resume": "{P}"}}),
]
OUTSIDE_PATHS = ["/etc/passwd", "../../{OUT}/x.json", "{OUTABS}/x.json", "~/x.json", "/", "..",
                 "datasets/../../{OUT}/x.json",
                 "runs/../../{OUT}/r", "file:///etc/passwd", "\\\\server\\share\\x.json", "/dev/zero",
                 "datasets/ok.json\x00.txt"]
CODE_REFS = ["{OUTABS}/evil.py:reward", "evil.py:reward", "os:system", "subprocess:call", "/tmp/evil.py:reward",
             "builtin:../../evil", "datasets/evil.py:reward", "builtins:eval", "tunelab.utils:__import__"]


def _subst(obj: Any, value: str) -> Any:
    if isinstance(obj, dict):
        return {k: _subst(v, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_subst(v, value) for v in obj]
    return value if obj == "{P}" else obj


def studio_cases(rng: random.Random) -> list[Case]:
    """Uploads and job configs the studio must refuse with a 4xx (never a 500, never a file outside its folders)."""
    out = []

    def add(name, path, body=None, upload=None, must_fail=True, names=(), method="POST", query=None):
        req = {"app": "studio", "method": method, "path": path, "json": body, "upload": upload, "params": query}
        out.append(Case("studio", name, {f"{OUTSIDE}/evil.py": b"import os\nos.system('touch PWNED')\n"
                                         b"def reward(c, a, p):\n    return [0.0] * len(c)\n",
                                         f"{OUTSIDE}/x.json": json.dumps(ALPACA).encode()},
                        None, req, must_fail=must_fail, names=names))

    base = {"model": {"name": "tiny-llama"}, "data": {"train": "datasets/ok.json"}, "method": {"name": "lora"},
            "train": {"max_steps": 1}}
    for key, frag in PATH_FIELDS:
        values = OUTSIDE_PATHS + (CODE_REFS if "rewards" in key else CODE_REFS[:2])
        for v in values:
            cfg = json.loads(json.dumps(base))
            for sect, val in _subst(frag, v).items():
                merge = isinstance(val, dict) and isinstance(cfg.get(sect), dict)
                cfg[sect] = {**cfg[sect], **val} if merge else val
            endpoint = rng.choice(["/api/config/validate", "/api/jobs", "/api/estimate"])
            add(f"path:{key}={v[:30]!r}[{endpoint.rsplit('/', 1)[-1]}]", endpoint, {"name": "fz", "config": cfg},
                names=(key.split("[")[0],))
    # the flat form values the page sends
    for key in ("data.train", "data.eval", "model.name", "model.chat_template", "train.resume"):
        for v in ("/etc/passwd", "../../{OUT}/x.json"):
            values = {"data.train": "datasets/ok.json", "model.name": "tiny-llama", key: v}
            add(f"form:{key}={v!r}", "/api/config/validate", {"name": "fz", "values": values}, names=(key,))
    for v in ("../x", "a/../../b", "/etc", "\x00", "." * 300, ""):
        add(f"job-name:{v[:10]!r}", "/api/config/validate", {"name": v, "config": base}, must_fail=False,
            names=("name",))
    for key, value in (("train.lr", float("nan")), ("train.lr", float("inf")), ("train.epochs", float("inf")),
                       ("train.seed", 10**30), ("train.batch_size", 10**30), ("data.max_length", 10**40)):
        sect, k = key.split(".")
        cfg = json.loads(json.dumps(base))
        cfg.setdefault(sect, {})[k] = value
        add(f"number:{key}={value}", "/api/config/validate", {"name": "fz", "config": cfg}, names=(key,))
    raw = b'{"name": "fz", "config": ' + deep(100_000, "map").encode() + b"}"
    add("config:deep", "/api/config/validate", None, upload=("raw", raw), names=("config", "deep", "body"))
    add("config:not-json", "/api/jobs", None, upload=("raw", b"{nope"), names=("JSON", "json", "body"))

    # uploads
    good = encode(ALPACA * 400, "jsonl")  # ~30 KB; padded past 64 KB below
    big = encode(ALPACA * 1000, "jsonl")
    add("upload:bad-byte-past-64k", "/api/datasets", upload=("big.jsonl", big[:70_000] + b"\xff" + big[70_000:]),
        names=("big.jsonl",))
    add("upload:bad-byte-early", "/api/datasets", upload=("early.jsonl", b"\xff" + good), names=("early.jsonl",))
    l1 = json.dumps(ALPACA).replace("plus", "plüs").encode("latin-1")
    add("upload:latin1", "/api/datasets", upload=("l1.json", l1),
        names=("l1.json",))
    add("upload:utf16", "/api/datasets", upload=("u16.json", json.dumps(ALPACA).encode("utf-16")), must_fail=False,
        names=("u16.json",))
    add("upload:deep", "/api/datasets", upload=("deep.json", deep(100_000).encode()), names=("deep.json",))
    add("upload:deep-map-jsonl", "/api/datasets", upload=("deepm.jsonl", deep(100_000, "map").encode()),
        names=("deepm.jsonl",))
    add("upload:fake-parquet", "/api/datasets", upload=("fake.parquet", json.dumps(ALPACA).encode()),
        names=("fake.parquet",))
    add("upload:parquet-magic", "/api/datasets", upload=("m.parquet", b"PAR1" + bytes(100) + b"PAR1"),
        names=("m.parquet",))
    add("upload:truncated-parquet", "/api/datasets", upload=("t.parquet", encode(ALPACA, "parquet")[:-40]),
        names=("t.parquet",))
    add("upload:empty", "/api/datasets", upload=("e.json", b""), names=("e.json",))
    add("upload:binary", "/api/datasets", upload=("b.jsonl", bytes(rng.randrange(256) for _ in range(4096))),
        names=("b.jsonl",))
    lone = json.dumps(ALPACA).replace("What", "\\ud800What").encode()
    add("upload:surrogate", "/api/datasets", upload=("s.json", lone),
        names=("s.json",))
    add("upload:exe-suffix", "/api/datasets", upload=("x.py", b"import os\n"), names=("x.py", ".py"))
    add("upload:traversal-name", "/api/datasets", upload=("../../outside/t.json", json.dumps(ALPACA).encode()),
        must_fail=False, names=("t.json",))
    add("upload:no-file-field", "/api/datasets", upload=("raw", b"--x\r\n\r\n"), names=("file", "upload"))
    for i in range(n_random(25)):
        ext = rng.choice(["json", "jsonl", "csv", "parquet"])
        data = encode(ALPACA, ext)
        for _ in range(rng.randint(1, 4)):
            data = flip_byte(data, rng)
        add(f"upload:byte-flip#{i}.{ext}", "/api/datasets", upload=(f"f{i}.{ext}", data), must_fail=False,
            names=(f"f{i}.{ext}",))
    for i in range(n_random(15)):
        ext = rng.choice(["json", "jsonl", "csv"])
        add(f"upload:invalid-utf8#{i}.{ext}", "/api/datasets",
            upload=(f"v{i}.{ext}", insert_invalid_utf8(encode(ALPACA * 3, ext), rng)), names=(f"v{i}.{ext}",))
    # dataset names in URLs
    for name in ("..%2F..%2Foutside%2Fx.json", "%2Fetc%2Fpasswd", "ok.json%00", "..", "nope.json"):
        add(f"inspect:{name}", f"/api/datasets/{name}/inspect", method="GET",
            names=("dataset", "name", "not found", "no "))
        add(f"delete:{name}", f"/api/datasets/{name}", method="DELETE", names=("dataset", "name", "not found", "no "))
    add("inspect:model-outside", "/api/datasets/ok.json/inspect", method="GET", query={"model": "/etc"},
        names=("model",))
    add("inspect:columns-deep", "/api/datasets/ok.json/inspect", method="GET", query={"columns": deep(2_000, "map")},
        names=("columns",))
    add("chat:run-outside", "/api/chat", {"run": "../../outside", "messages": [{"role": "user", "content": "x"}]},
        names=("run",))
    add("export:zip", "/api/runs/nope/export", {"format": "zip"}, names=("format", "run", "nope"))
    add("prepare:bad-op", "/api/datasets/ok.json/prepare", {"op": "rm -rf", "options": {}}, names=("op",))
    add("prepare:nan", "/api/datasets/ok.json/prepare", {"op": "split", "options": {"val": float("nan")}},
        names=("val",))
    return out


# ---------------------------------------------------------------------------------------------------- run commands
def command_cases(rng: random.Random) -> list[Case]:
    """Commands that read a run folder ({RUN}: a real one-step tiny-llama LoRA run): export, generate, chat."""
    out = []

    def add(name, argv, must_fail=True, names=(), files=None, allowed=()):
        out.append(Case("commands", name, {**BASE_FILES, **(files or {})}, argv, must_fail=must_fail, names=names,
                        allowed_out=allowed))

    for fmt in ("zip", "GGUF ", "", "../../outside/x", "merged\x00", "exe"):
        add(f"export:--format={fmt!r}", ["export", "{RUN}", "--format", fmt], names=("format",))
    add("export:quant", ["export", "{RUN}", "--format", "gguf", "--quant", "q9_9"], names=("q9_9", "quant"))
    add("export:option-for-other-format", ["export", "{RUN}", "--format", "merged", "--quant", "q8_0"],
        names=("quant",))
    add("export:no-run", ["export", "nope", "--format", "merged"], names=("nope",))
    add("export:run-is-file", ["export", "train.json", "--format", "merged"], names=("train.json",))
    add("chat:no-run", ["chat", "nope", "--prompt", "hi"], names=("nope",))
    add("chat:run-is-config", ["chat", "cfg.yaml", "--prompt", "hi"], names=("cfg.yaml",))
    good = encode(ALPACA[:2], "jsonl")
    gen = ["generate", "{RUN}", "--data", "p.jsonl", "--out", "preds.jsonl", "--max-new-tokens", "2"]
    for opt, value in (("--max-new-tokens", "-1"), ("--batch-size", "0"), ("--temperature", "nan"),
                       ("--temperature", "inf"), ("--top-p", "2"), ("--top-p", "nan"), ("--limit", "-1"),
                       ("--seed", "99999999999999999999999")):
        add(f"generate:{opt}={value}", gen + [opt, value], names=(opt, opt.strip("-").replace("-", "_")),
            files={f"{WORK}/p.jsonl": good})
    bad = {"invalid-utf8": (insert_invalid_utf8(good, rng, at=len(good) // 2), True),
           "binary": (bytes(rng.randrange(256) for _ in range(300)), True), "empty": (b"", True),
           "deep": (deep(50_000).encode(), True), "syntax": (good.replace(b"}", b"}}", 1), True),
           "missing-field": (encode([{"instruction": "x"}], "jsonl"), False),
           "surrogate": (good.replace(b"What", b"\\ud800What"), False),
           "utf16": (good.decode().encode("utf-16"), False)}
    for name, (content, fail) in bad.items():
        for ext in ("jsonl", "json", "csv", "parquet") if name in ("binary", "empty") else ("jsonl",):
            fname = f"p.{ext}"
            add(f"generate:data-{name}.{ext}", ["generate", "{RUN}", "--data", fname, "--out", "preds.jsonl",
                                                "--max-new-tokens", "2"], fail, (fname,), {f"{WORK}/{fname}": content},
                allowed=("preds.jsonl",))
    add("generate:data-missing", gen, names=("p.jsonl",))
    add("generate:out-is-dir", ["generate", "{RUN}", "--data", "p.jsonl", "--out", ".", "--max-new-tokens", "2"],
        names=("--out", "."), files={f"{WORK}/p.jsonl": good})
    return out


FAMILIES = {"config": config_cases, "overrides": override_cases, "data": data_cases, "server": server_cases,
            "studio": studio_cases, "commands": command_cases}


def generate(family: str, seed: int = SEED) -> list[Case]:
    """The cases of one family for a seed (the same list every time)."""
    return FAMILIES[family](random.Random(f"{family}:{seed}"))
