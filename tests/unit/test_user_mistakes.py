"""Every user mistake reaches the user as one `error:` paragraph and exit status 2, never a
traceback, and leaves nothing behind: no run folder, no forecast file.

The cases go through the scripts' own ``main(argv)`` (two also through real subprocesses), in
classes: run names, storage locations, config files and --set values, resources, run folders
whose files are damaged, checkpoints that are not checkpoints, cutoffs, output paths.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_inference import save_checkpoint

from lit_forecast import config as cfg

ROOT = cfg.DEFAULT_CONFIG.parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
TRAIN = runpy.run_path(str(ROOT / "train.py"))["main"]
INFER = runpy.run_path(str(ROOT / "infer.py"))["main"]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def refused(main, argv: list[str], capsys, *named: str) -> str:
    """Run ``main(argv)``; it must exit 2 with one `error:` paragraph naming each of ``named``."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err, err
    message = err[err.index("error: ") :]
    assert "\n\n" not in message.strip(), f"more than one paragraph: {message}"
    for thing in named:
        assert thing in message, f"{thing!r} not named in: {message}"
    return message


@pytest.fixture
def work(tmp_path, synthetic_csv):
    """A folder with storage/ (empty), a valid CSV (ten days of half-hours) and a plain file."""
    csv = synthetic_csv(np.arange(480) % 48 + 100.0)
    (tmp_path / "storage").mkdir()
    (tmp_path / "a_file").write_text("hello\n")
    return tmp_path, csv


def train_argv(tmp_path: Path, csv: Path, *extra: str, name: str | None = "ok") -> list[str]:
    return [
        "--config", TINY, "--data", str(csv), "--storage", str(tmp_path / "storage"),
        *(["--name", name] if name is not None else []),
        "--set", "data.train_end=2024-01-07", "--set", "data.val_end=2024-01-09", *extra,
    ]  # fmt: skip


# -- run names ---------------------------------------------------------------------------------------

BAD_NAMES = [
    "../x",
    ".",
    "..",
    "/tmp/abs",
    "s3://bucket/x",
    "a/b",
    "a\\b",
    "",
    " ",
    "a b",
    "x\n",
    "x\x01",
    "\u00e9t\u00e9",
    ".hidden",
    "_x",
    "n" * 101,
    "x/../../y",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("how", ["--name", "--set"])
def test_a_run_name_that_is_not_one_safe_folder_name_is_refused(work, capsys, name, how):
    tmp_path, csv = work
    before = files_under(tmp_path.parent)
    if how == "--name":
        argv = train_argv(tmp_path, csv, "--prepare-only", name=name)
    else:  # the same name from the config: a YAML double-quoted scalar, escapes and all
        quoted = name.encode("unicode_escape").decode().replace('"', '\\"')
        argv = train_argv(tmp_path, csv, "--prepare-only", "--set", f'run.name="{quoted}"', name=None)
    refused(TRAIN, argv, capsys, "run name", "letters, digits")
    assert files_under(tmp_path.parent) == before


@pytest.mark.parametrize("name", ["a", "2024", "taxi-8gpu", "nyc_taxi_local", "exp.v2", "A" * 100])
def test_safe_run_names_are_accepted(work, capsys, name):
    tmp_path, csv = work
    TRAIN(train_argv(tmp_path, csv, "--print-config", name=name))
    assert cfg.from_dict(yaml.safe_load(capsys.readouterr().out)).run.name == name


# -- storage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage, named", [
    ("{tmp}/a_file", "is a file"),
    ("{tmp}/a_file/below", "is a file"),
    ("foo://x/runs", "cannot be opened"),
    ("s3:/bucket/runs", "a '/' missing"),
    ("s3://", "cannot be opened"),
])  # fmt: skip
def test_storage_that_cannot_hold_run_folders(work, capsys, storage, named):
    tmp_path, csv = work
    before = files_under(tmp_path)
    argv = train_argv(tmp_path, csv, "--prepare-only", "--storage", storage.format(tmp=tmp_path))
    refused(TRAIN, argv, capsys, "--storage", named)
    assert files_under(tmp_path) == before


# -- config files and --set --------------------------------------------------------------------------

CONFIG_FILES = {
    "binary": (b"\x80\x81\xfe\xff\x00\x01" * 10, "not a UTF-8"),
    "nul": (b"data:\n  horizon: 4\x00\n", "not valid YAML"),
    "list": (b"- data\n- model\n", "holds a list"),
    "scalar": (b"42\n", "holds a int"),
    "string": (b"hello\n", "holds a str"),
    "bad_yaml": (b"data: [1, 2\n", "not valid YAML"),
    "section_scalar": (b"data: 5\n", "'data' is not a section"),  # met first by --set data.train_end
    "model_scalar": (b"model: 5\n", "'model' must be a mapping"),
    "unknown_key": (b"data:\n  horizn: 4\n", "did you mean 'data.horizon'"),
}


@pytest.mark.parametrize("kind", CONFIG_FILES)
def test_a_config_file_that_is_not_a_config(work, capsys, kind):
    tmp_path, csv = work
    content, named = CONFIG_FILES[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(content)
    before = files_under(tmp_path)
    argv = train_argv(tmp_path, csv, "--prepare-only")
    argv[argv.index(TINY)] = str(path)
    refused(TRAIN, argv, capsys, str(path), named)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("where, named", [("missing.yaml", "not found"), ("storage", "is a folder")])
def test_a_config_path_that_is_not_a_file(work, capsys, where, named):
    tmp_path, csv = work
    argv = train_argv(tmp_path, csv, "--print-config")
    argv[argv.index(TINY)] = str(tmp_path / where)
    refused(TRAIN, argv, capsys, named)


@pytest.mark.parametrize("override, named", [
    ("model.d_model=[1", "not valid YAML"),
    ("model.d_model={a", "not valid YAML"),
    ("=3", "must look like dotted.key=value"),
    ("nokey", "must look like dotted.key=value"),
    ("model=5", "'model' must be a mapping"),
    ("model.d_model.x=1", "is not a section"),
    ("data.horizn=3", "did you mean 'data.horizon'"),
    ("data.freq=1ns", "at least 1min"),
    ("data.freq=1s", "at least 1min"),
    ("data.freq=0min", "positive"),
    ("data.freq=7min", "divide a day"),
    ("data.freq=soon", "durations"),
    ("data.freq=1e30D", "durations"),
    ("data.train_end=notadate", "data.train_end"),
    ("data.train_end=''", "data.train_end"),
    ("train.lr=nan", "finite"),
    ("train.lr=-1", "train.lr"),
    ("cluster.num_workers=0", "cluster.num_workers"),
])  # fmt: skip
def test_a_malformed_set_override(work, capsys, override, named):
    tmp_path, csv = work
    refused(TRAIN, train_argv(tmp_path, csv, "--print-config", "--set", override), capsys, named)


@pytest.mark.parametrize("flag", ["--data", "--storage"])
def test_empty_location_flags(work, capsys, flag):
    tmp_path, csv = work
    refused(TRAIN, train_argv(tmp_path, csv, "--print-config", flag, " "), capsys, flag, "empty")


DATA = {
    "missing": (lambda t: t / "nowhere.csv", "nowhere.csv"),
    "empty_file": (lambda t: (t / "empty.csv").write_text("") and None or t / "empty.csv", "empty.csv"),
    "text_file": (
        lambda t: (t / "text.csv").write_text("just some words\nand more\n") and None or t / "text.csv",
        "text.csv",
    ),
    "binary_file": (lambda t: (t / "bin.csv").write_bytes(bytes(range(256)) * 4) and None or t / "bin.csv", "bin.csv"),
    "empty_folder": (lambda t: (t / "nodata").mkdir() or t / "nodata", "nodata"),
    "unknown_scheme": (lambda t: "foo://bucket/x.csv", "foo://bucket/x.csv"),
}


@pytest.mark.parametrize("kind", DATA)
def test_data_that_cannot_be_read(work, capsys, kind):
    tmp_path, csv = work
    make, named = DATA[kind]
    argv = train_argv(tmp_path, make(tmp_path), "--prepare-only")
    before = files_under(tmp_path)
    refused(TRAIN, argv, capsys, named)
    assert files_under(tmp_path) == before


# -- resources: refused before the run folder gets anything ---------------------------------------


@pytest.mark.parametrize("extra, named", [
    (["--set", "cluster.num_workers=64"], "32 CPU"),  # x 0.5 CPU each
    (["--set", "cluster.cpus_per_worker=1000"], "2000 CPU"),
    (["--config", str(ROOT / "configs" / "8gpu.yaml")], "8 GPU"),
])  # fmt: skip
def test_a_config_this_machine_cannot_run_writes_nothing(work, capsys, monkeypatch, extra, named):
    tmp_path, csv = work
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    argv = train_argv(tmp_path, csv, *extra)
    if "--config" in extra:  # the 8-GPU config: our data and splits, its cluster
        argv = argv[2:]
    refused(TRAIN, argv, capsys, named, "RAY_ADDRESS")
    assert files_under(tmp_path / "storage") == set()


# -- damaged run folders -------------------------------------------------------------------------------


@pytest.fixture
def finished_run(work):
    """A finished-looking run 'ok' (config of train_argv, a checkpoint, a summary) in storage/."""
    tmp_path, csv = work
    run = tmp_path / "storage" / "ok"
    config = cfg.load(
        TINY,
        [
            f"data.source={csv}",
            "data.sha256=null",
            f"run.storage={tmp_path / 'storage'}",
            "run.name=ok",
            "data.train_end=2024-01-07",
            "data.val_end=2024-01-09",
        ],
    )
    save_checkpoint(run / "checkpoint_000000")
    (run / "config.yaml").write_text(cfg.dump(config))
    (run / "summary.json").write_text('{"best_checkpoint": "checkpoint_000000/checkpoint.ckpt"}\n')
    return tmp_path, csv, run


@pytest.mark.parametrize(
    "text",
    ['{"best_checkpoint": "checkpoint_0', "", "\x00\x01", "[1, 2]"],
    ids=["truncated", "empty", "binary", "list"],
)
@pytest.mark.parametrize("script", ["train", "infer"])
def test_an_unreadable_summary_is_named(finished_run, capsys, text, script):
    tmp_path, csv, run = finished_run
    (run / "summary.json").write_text(text)
    before = files_under(tmp_path)
    if script == "train":
        refused(TRAIN, train_argv(tmp_path, csv), capsys, str(run / "summary.json"), "not a readable run summary")
    else:
        refused(INFER, ["--run", str(run), "--no-ray", "--data", str(csv)], capsys, str(run / "summary.json"))
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    "text",
    ["data: {horizon: 4\n", "- 1\n", "data:\n  horizn: 3\n", "\udcff"],
    ids=["truncated", "list", "unknown_key", "binary"],
)
def test_an_unreadable_run_config_is_named(finished_run, capsys, text):
    tmp_path, csv, run = finished_run
    if text == "\udcff":
        (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    else:
        (run / "config.yaml").write_text(text)
    before = files_under(tmp_path)
    refused(TRAIN, train_argv(tmp_path, csv), capsys, str(run / "config.yaml"), "--name NEW")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("text", ['{"fingerprint": "ab', "", "[]"], ids=["truncated", "empty", "list"])
def test_a_damaged_prepared_dataset_is_prepared_again(work, capsys, text):
    """data/ is derived from the source: a damaged manifest is rebuilt, not a traceback."""
    tmp_path, csv = work
    (tmp_path / "storage" / "ok" / "data").mkdir(parents=True)
    (tmp_path / "storage" / "ok" / "data" / "manifest.json").write_text(text)
    TRAIN(train_argv(tmp_path, csv, "--prepare-only"))
    assert "(prepared, fingerprint" in capsys.readouterr().out
    assert (tmp_path / "storage" / "ok" / "data" / "manifest.json").read_text().startswith("{")


# -- checkpoints and runs given to infer.py ----------------------------------------------------------


@pytest.fixture
def infer_work(work):
    """work plus a good checkpoint folder and an out/ folder that must stay empty."""
    tmp_path, csv = work
    checkpoint = save_checkpoint(tmp_path / "good" / "checkpoint_000000")
    (tmp_path / "out").mkdir()
    return tmp_path, csv, checkpoint


CHECKPOINTS = {
    "empty_file": (
        lambda t: (t / "empty.ckpt").write_bytes(b"") and None or t / "empty.ckpt",
        "not a readable PyTorch checkpoint",
    ),
    "text_file": (
        lambda t: (t / "text.ckpt").write_text("just text\n") and None or t / "text.ckpt",
        "not a readable PyTorch checkpoint",
    ),
    "zip_junk": (
        lambda t: (t / "zip.ckpt").write_bytes(b"PK\x03\x04junk") and None or t / "zip.ckpt",
        "not a readable PyTorch checkpoint",
    ),
    "empty_folder": (lambda t: (t / "folder").mkdir() or t / "folder", "folder without checkpoint.ckpt"),
    "ckpt_folder": (lambda t: (t / "x.ckpt").mkdir() or t / "x.ckpt", "folder without checkpoint.ckpt"),
    "inner_folder": (lambda t: (t / "ck" / "checkpoint.ckpt").mkdir(parents=True) or t / "ck", "is not a file"),
    "missing": (lambda t: t / "nowhere.ckpt", "checkpoint not found"),
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_a_checkpoint_that_is_not_one(infer_work, capsys, kind):
    tmp_path, csv, _ = infer_work
    make, named = CHECKPOINTS[kind]
    path = make(tmp_path)
    before = files_under(tmp_path)
    refused(
        INFER,
        ["--checkpoint", str(path), "--no-ray", "--data", str(csv), "--output", str(tmp_path / "out" / "f.csv")],
        capsys,
        str(path),
        named,
    )
    assert files_under(tmp_path) == before


def test_a_run_given_as_a_file_or_without_checkpoints(infer_work, capsys):
    tmp_path, csv, checkpoint = infer_work
    refused(INFER, ["--run", f"{checkpoint}/checkpoint.ckpt", "--no-ray"], capsys, "is a file", "--checkpoint")
    (tmp_path / "bare").mkdir()
    refused(INFER, ["--run", str(tmp_path / "bare"), "--no-ray"], capsys, "holds no checkpoint_")


@pytest.mark.parametrize(
    "storage, named",
    [("{tmp}/a_file", "is a file"), ("foo://x", "cannot be opened"), ("{tmp}/nothing", "no finished run")],
)
def test_infer_storage_without_runs(infer_work, capsys, storage, named):
    tmp_path, _, _ = infer_work
    refused(INFER, ["--storage", storage.format(tmp=tmp_path), "--no-ray"], capsys, named)


# -- infer.py requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cutoffs, named", [
    ("2024-01-05..2024-01-08/0D", "positive"),
    ("2024-01-05..2024-01-08/-1D", "positive"),
    ("2024-01-05..2024-01-08/0min", "positive"),
    ("2024-01-05..2024-01-08/1ns", "more than the 100,000"),
    ("2000-01-01..2024-01-08/1min", "more than the 100,000"),
    ("2024-01-08..2024-01-05/1D", "END before START"),
    ("2024-01-05../1D", "START, END and STEP"),
    ("2024-01-05..2024-01-08/soon", "cannot read"),
    ("2024-01-05..2024-01-08/1e30D", "cannot read"),
    ("yesterday", "cannot read 'yesterday'"),
    ("NaT", "cannot read 'NaT'"),
    ("2024-13-45", "cannot read"),
    ("2024-01-05T00:00+01:00", "UTC offset"),
    ("2024-01-05T00:10", "not on the"),
    ("2030-01-01", "data ends before cutoff"),
])  # fmt: skip
def test_cutoffs_that_cannot_be_forecast(infer_work, capsys, cutoffs, named):
    tmp_path, csv, checkpoint = infer_work
    argv = [
        "--checkpoint",
        checkpoint,
        "--data",
        str(csv),
        "--no-ray",
        "--output",
        str(tmp_path / "out" / "f.csv"),
        "--cutoffs",
        cutoffs,
    ]
    refused(INFER, argv, capsys, named)
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("extra, named", [
    (["--output", "{tmp}/out"], "is an existing folder"),
    (["--output", "{tmp}/out/sub.csv/"], "is an existing folder"),
    (["--output", "{tmp}/out/new/"], "must end in"),
    (["--output", "{tmp}/out/f.txt"], "must end in .csv or .parquet"),
    (["--output", "{tmp}/a_file/f.csv"], "is a file"),
    (["--output", "{tmp}/out/f.csv", "--plot", "{tmp}/out/p.jpg"], "must end in .png"),
    (["--output", "{tmp}/out/f.csv", "--plot-cutoff", "2024-01-03"], "--plot-cutoff"),
    (["--num-cpus", "0"], "--num-cpus"),
    (["--num-cpus", "-1"], "--num-cpus"),
    (["--num-cpus", "nan"], "--num-cpus"),
    (["--num-cpus", "inf"], "--num-cpus"),
    (["--num-gpus", "-1"], "--num-gpus"),
    (["--num-gpus", "nan"], "--num-gpus"),
    (["--batch-size", "0"], "--batch-size"),
    (["--recalibrate-days", "-1"], "--recalibrate-days"),
    (["--recalibrate-days", "nan"], "--recalibrate-days"),
])  # fmt: skip
def test_impossible_infer_requests(infer_work, capsys, extra, named):
    tmp_path, csv, checkpoint = infer_work
    (tmp_path / "out" / "sub.csv").mkdir()
    before = files_under(tmp_path)
    argv = ["--checkpoint", checkpoint, "--data", str(csv), "--no-ray", *[e.format(tmp=tmp_path) for e in extra]]
    if "--output" not in extra:
        argv += ["--output", str(tmp_path / "out" / "f.csv")]
    refused(INFER, argv, capsys, named)
    assert files_under(tmp_path) == before


def test_more_cpus_per_task_than_the_machine_fails_at_once(infer_work, capsys, monkeypatch):
    import ray

    tmp_path, csv, checkpoint = infer_work
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    argv = [
        "--checkpoint",
        checkpoint,
        "--data",
        str(csv),
        "--num-cpus",
        "4",
        "--output",
        str(tmp_path / "out" / "f.csv"),
    ]
    refused(INFER, argv, capsys, "2 CPU", "4 CPU", "--num-cpus", "RAY_ADDRESS")
    assert not ray.is_initialized() and files_under(tmp_path / "out") == set()


# -- the real scripts ------------------------------------------------------------------------------------


def test_the_script_exits_2_without_a_traceback(work):
    """One real process: what a user at the terminal sees (infer.py goes the same way, through main)."""
    tmp_path, _ = work
    done = subprocess.run(
        [sys.executable, "train.py", "--name", "../escape", "--storage", str(tmp_path / "storage"), "--print-config"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: run name '../escape' is not allowed")
    assert done.stderr.count("\n") == 1 and not done.stdout and files_under(tmp_path / "storage") == set()


# -- outputs never clobber inputs ----------------------------------------------------------------------


def _data_folder(tmp_path: Path, csv: Path) -> Path:
    folder = tmp_path / "zones"
    folder.mkdir()
    (folder / "part.csv").write_bytes(csv.read_bytes())
    return folder


@pytest.mark.parametrize("output, named", [
    ("{csv}", "would replace the input --data"),
    ("{tmp}/link.csv", "would replace the input --data"),  # a link to the data is the data
    ("{run}/data/val.parquet", "the prepared data of run"),
    ("{run}/checkpoint_000000/f.csv", "a checkpoint of run"),
    ("{zones}/new.csv", "would replace the input --data"),  # the next read would take it for data
    ("{stem}.csv", "would replace the input --data"),  # --data is <stem>.zones.csv: the per-series table
])  # fmt: skip
def test_an_output_never_replaces_an_input(finished_run, capsys, output, named):
    tmp_path, csv, run = finished_run
    (run / "data").mkdir()
    (run / "data" / "val.parquet").write_bytes(b"PAR1 shard")
    (tmp_path / "link.csv").symlink_to(csv)
    zones = _data_folder(tmp_path, csv)
    data = {"{zones}": str(zones), "{stem}": str(tmp_path / "copy.zones.csv")}
    source = next((v for k, v in data.items() if output.startswith(k)), str(csv))
    if source.endswith(".zones.csv"):
        Path(source).write_bytes(csv.read_bytes())
    location = output.format(csv=csv, tmp=tmp_path, run=run, zones=zones, stem=tmp_path / "copy")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = ["--run", str(run), "--no-ray", "--data", source, "--output", location, "--overwrite"]
    refused(INFER, argv, capsys, named, location, str(Path(source).name) if "--data" in named else str(run))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_existing_output_needs_overwrite_and_a_read_only_one_is_never_replaced(infer_work, capsys):
    tmp_path, csv, checkpoint = infer_work
    out = tmp_path / "out" / "f.csv"
    out.write_text("mine\n")
    argv = ["--checkpoint", checkpoint, "--data", str(csv), "--no-ray", "--output", str(out)]
    refused(INFER, argv, capsys, str(out), "already exists", "--overwrite")
    out.chmod(0o444)
    refused(INFER, [*argv, "--overwrite"], capsys, str(out), "read-only")
    assert out.read_text() == "mine\n"
    out.chmod(0o644)
    (tmp_path / "out" / "f.png").write_text("old plot\n")  # a file written next to --output counts too
    out.unlink()
    refused(INFER, argv, capsys, str(tmp_path / "out" / "f.png"), "--overwrite")
    INFER([*argv, "--overwrite"])
    assert out.read_text().startswith("cutoff,") and (tmp_path / "out" / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_the_default_output_in_the_runs_forecasts_folder_is_allowed(finished_run, capsys):
    tmp_path, csv, run = finished_run
    INFER(["--run", str(run), "--no-ray", "--data", str(csv)])
    INFER(["--run", str(run), "--no-ray", "--data", str(csv)])  # again: the run's own forecasts are replaced
    assert [p.suffix for p in sorted((run / "forecasts").iterdir())] == [".csv", ".png"]


# -- config values the libraries would refuse, duplicate keys, bounded messages ------------------------


@pytest.mark.parametrize("override, named", [
    ("train.seed=-1", "[0, 4294967295]"),
    ("train.seed=4294967296", "[0, 4294967295]"),
    ("cluster.cpus_per_worker=0.00001", "0.0001"),
    ("cluster.gpus_per_worker=0.00001", "0.0001"),
    ("cluster.timeout_s=1000000000000", "1,000,000,000"),
    ("data.val_end=3000-01-01", "2262-04-11"),
    ("data.val_end=1000-01-01", "1677-09-21"),
])  # fmt: skip
def test_values_lightning_ray_or_pandas_would_refuse_are_refused_at_once(work, capsys, override, named):
    tmp_path, csv = work
    key = override.split("=")[0]
    refused(TRAIN, train_argv(tmp_path, csv, "--prepare-only", "--set", override), capsys, f"'{key}'", named)
    assert files_under(tmp_path / "storage") == set()


def test_the_largest_seed_is_accepted(work, capsys):
    tmp_path, csv = work
    TRAIN(train_argv(tmp_path, csv, "--print-config", "--set", "train.seed=4294967295"))
    assert yaml.safe_load(capsys.readouterr().out)["train"]["seed"] == 2**32 - 1


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  seed: 1\nmodel:\n  d_model: 64\ntrain:\n  lr: 0.1\n", "'train'", ("line 1", "line 5")),
    ("train:\n  seed: 1\n  lr: 0.1\n  seed: 2\n", "'seed'", ("line 2", "line 4")),
    ("data: {horizon: 4, horizon: 8}\n", "'horizon'", ("line 1 and line 1",)),
])  # fmt: skip
def test_duplicate_yaml_keys_are_refused_with_both_lines(work, capsys, text, key, lines):
    tmp_path, csv = work
    (tmp_path / "dup.yaml").write_text(text)
    refused(TRAIN, ["--config", str(tmp_path / "dup.yaml"), "--print-config"], capsys, "dup.yaml", key, "twice", *lines)


@pytest.mark.timeout(30)  # built, this value would hold 9**9 strings: hours and far more memory than the machine has
def test_a_yaml_alias_bomb_is_refused_without_building_it(work, capsys):
    tmp_path, _ = work
    names = "abcdefghi"
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\ntrain:\n  seed: *i\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 600
    argv = ["--config", str(tmp_path / "bomb.yaml"), "--print-config"]
    message = refused(TRAIN, argv, capsys, "bomb.yaml", "aliases")
    assert len(message) < 300


@pytest.mark.parametrize("override, size", [
    ("data.aggregation=" + "x" * 100_000, "100,000 characters"),
    ("model.quantiles=[" + ", ".join(["0.3"] * 50_000) + "]", "50,000 items"),
    ("train.seed=[" + ", ".join(["[1, 2, 3]"] * 20_000) + "]", "20,000 items"),
    ("run.name=" + "n" * 100_000, "run name"),
    ("data." + "k" * 100_000 + "=1", "characters"),
])  # fmt: skip
def test_a_huge_value_is_cut_in_the_message(work, capsys, override, size):
    tmp_path, csv = work
    argv = train_argv(tmp_path, csv, "--print-config", "--set", override, name=None)
    message = refused(TRAIN, argv, capsys, size, "...")
    assert len(message) < 700, message


# -- permissions, dates pandas cannot hold, hive-style folders, links ----------------------------------


def without_root_powers() -> list[str]:
    """A prefix that runs a command without root's right to read and write any file (as root), or none."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every file is readable")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def script(name: str, *argv: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, name, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=180,
    )


def one_error(done: subprocess.CompletedProcess, status: int = 2) -> str:
    """The one `error:` paragraph of a script that had to stop with ``status``, without a traceback."""
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("error: ") :]
    assert "\n\n" not in message.strip(), message
    return message


def test_a_data_file_this_user_may_not_read_is_named(work):
    tmp_path, csv = work
    csv.chmod(0)
    done = script("train.py", *train_argv(tmp_path, csv, "--prepare-only"), prefix=without_root_powers())
    message = one_error(done)
    assert str(csv) in message and "permission denied" in message
    assert files_under(tmp_path / "storage") == set()


def test_an_output_folder_this_user_may_not_write_is_named(infer_work):
    tmp_path, csv, checkpoint = infer_work
    (tmp_path / "out").chmod(0o555)
    output = tmp_path / "out" / "f.csv"
    done = script(
        "infer.py",
        "--checkpoint",
        checkpoint,
        "--data",
        str(csv),
        "--no-ray",
        "--output",
        str(output),
        prefix=without_root_powers(),
    )
    message = one_error(done)
    assert str(tmp_path / "out") in message and "permission denied" in message
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("stamp", ["2300-01-01 00:00:00", "1600-01-01 00:00:00"])
def test_timestamps_pandas_cannot_hold_are_refused_with_the_limits(work, capsys, synthetic_csv, stamp):
    tmp_path, _ = work
    times = pd.date_range("2024-01-01", periods=480, freq="30min").strftime("%Y-%m-%d %H:%M:%S").tolist()
    times[7] = stamp
    csv = synthetic_csv(rows=[(t, "100.0") for t in times], name="future.csv")
    refused(
        TRAIN,
        train_argv(tmp_path, csv, "--prepare-only"),
        capsys,
        "future.csv",
        "row 9",
        stamp,
        "1677-09-21",
        "2262-04-11",
    )
    assert files_under(tmp_path / "storage") == set()


def test_a_recalibration_span_beyond_100_years_is_refused(infer_work, capsys):
    tmp_path, csv, checkpoint = infer_work
    argv = [
        "--checkpoint",
        checkpoint,
        "--data",
        str(csv),
        "--no-ray",
        "--output",
        str(tmp_path / "out" / "f.csv"),
        "--recalibrate-days",
        "1e9",
    ]
    refused(INFER, argv, capsys, "--recalibrate-days", "36,500")
    assert files_under(tmp_path / "out") == set()


def _zones(tmp_path: Path, csv: Path, folder: str, column: str | None = None) -> Path:
    """A hive-style folder <folder>/part.csv holding ``csv``, with a column ``zone`` of ``column`` if given."""
    root = tmp_path / "zones"
    (root / folder).mkdir(parents=True)
    frame = pd.read_csv(csv)
    if column is not None:
        frame["zone"] = column
    frame.to_csv(root / folder / "part.csv", index=False)
    return root


def test_a_hive_folder_key_agreeing_with_the_files_or_standing_in_for_the_series_column_is_used(work, capsys):
    tmp_path, csv = work
    root = _zones(tmp_path, csv, "zone=z001")  # the folder names the series
    (root / "zone=z002").mkdir()  # the folder and the column agree
    pd.read_csv(csv).assign(zone="z002").to_csv(root / "zone=z002" / "part.csv", index=False)
    TRAIN(train_argv(tmp_path, root, "--prepare-only", "--set", "data.series_column=zone"))
    assert "series   2, 960 rows" in capsys.readouterr().out


@pytest.mark.parametrize("folder, column, series_column, named", [
    ("zone=z001", "z009", "zone", ["zone=z001", "'z009'", "disagree"]),
    ("value=3", None, None, ["value=3", "names column 'value'", "series column"]),
    ("timestamp=2024-01-01", None, None, ["timestamp=2024-01-01", "names column 'timestamp'"]),
])  # fmt: skip
def test_a_hive_folder_key_the_files_contradict_or_cannot_use_is_refused(
    work, capsys, folder, column, series_column, named
):
    tmp_path, csv = work
    root = _zones(tmp_path, csv, folder, column)
    if not column:  # the file lacks the column the folder names
        key = folder.split("=")[0]
        path = root / folder / "part.csv"
        pd.read_csv(path).drop(columns=key).to_csv(path, index=False)
    extra = ["--set", f"data.series_column={series_column}"] if series_column else []
    refused(TRAIN, train_argv(tmp_path, root, "--prepare-only", *extra), capsys, "part.csv", *named)
    assert files_under(tmp_path / "storage") == set()


LINKS = {  # (what the link is called below zones/, where it points, relative to zones/), named
    "loop_to_parent": (("a/up", ".."), "already reads or holds"),
    "loop_to_itself": (("self", "self"), "leads back to itself"),
    "second_way_in": (("again", "a"), "already reads or holds"),
    "dangling": (("gone.csv", "nowhere.csv"), "does not exist"),
}


@pytest.mark.parametrize("kind", LINKS)
def test_links_in_a_data_folder_are_followed_once_and_loops_or_dangling_ones_refused(work, capsys, kind):
    tmp_path, csv = work
    (tmp_path / "zones" / "a").mkdir(parents=True)
    (tmp_path / "zones" / "a" / "part.csv").write_bytes(csv.read_bytes())
    (name, target), named = LINKS[kind]
    (tmp_path / "zones" / name).symlink_to(target)
    argv = train_argv(tmp_path, tmp_path / "zones", "--prepare-only")
    refused(TRAIN, argv, capsys, str(tmp_path / "zones" / name), named)
    assert files_under(tmp_path / "storage") == set()


def test_a_link_to_a_folder_outside_is_followed(work, capsys):
    tmp_path, csv = work
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "part.csv").write_bytes(csv.read_bytes())
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "linked").symlink_to(tmp_path / "elsewhere")
    TRAIN(train_argv(tmp_path, tmp_path / "zones", "--prepare-only"))
    assert "series   1, 480 rows" in capsys.readouterr().out


# -- interrupts -------------------------------------------------------------------------------------------

WORK = """
import sys, time
from pathlib import Path
from lit_forecast import cli
cli.at_hard_stop(lambda: Path(sys.argv[1]).write_text("released"))
with cli.interrupts(lambda s: f"the work was interrupted ({cli.SIGNAL_WORDS[s]}); kept: all; again: python work.py"):
    try:
        print("READY", flush=True)
        time.sleep(120)
    finally:
        if "--slow-cleanup" in sys.argv:
            print("CLEANING", flush=True)
            time.sleep(120)
"""


def interrupted(cmd: list[str], *signals: int, when: str = "READY", then: str | None = None, watch: str = "stdout"):
    """Run ``cmd``; at the first line of ``watch`` holding ``when`` send the first signal, the others at ``then``.

    Returns (status, stdout, stderr); the watched stream's lines read before the end are at its start.
    """
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stream = getattr(proc, watch)
    try:
        seen = []
        for line in stream:
            seen.append(line)
            if when in line:
                proc.send_signal(signals[0])
                break
        for line in stream:
            seen.append(line)
            if then and then in line:
                for other in signals[1:]:
                    proc.send_signal(other)
                break
        stdout, stderr = proc.communicate(timeout=120)
        if watch == "stdout":
            return proc.returncode, "".join(seen) + stdout, stderr
        return proc.returncode, stdout, "".join(seen) + stderr
    finally:
        proc.kill()


@pytest.mark.parametrize("sent, status, word", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupt_ends_with_one_line_and_its_status(tmp_path, sent, status, word):
    code, _, err = interrupted([sys.executable, "-c", WORK, str(tmp_path / "released")], sent)
    assert code == status and "Traceback" not in err, err
    assert err == f"error: the work was interrupted ({word}); kept: all; again: python work.py\n"
    assert not (tmp_path / "released").exists()  # a normal stop runs the cleanups of the code itself


def test_a_second_ctrl_c_stops_at_once_after_the_hard_stop_cleanups(tmp_path):
    code, out, err = interrupted(
        [sys.executable, "-c", WORK, str(tmp_path / "released"), "--slow-cleanup"],
        signal.SIGINT,
        signal.SIGINT,
        then="CLEANING",
    )
    assert "CLEANING" in out and code == 130 and "Traceback" not in err, err
    assert (
        err == "error: stopped at once by a second signal: the work was interrupted (Ctrl-C); kept: all; again: "
        "python work.py\n"
    )
    assert (tmp_path / "released").read_text() == "released"


SWALLOWED = """
import time
from lit_forecast import cli
cli.NUDGE_AFTER_S = 1.0
with cli.interrupts(lambda s: f"the work was interrupted ({cli.SIGNAL_WORDS[s]}); kept: all; again: python work.py"):
    try:
        print("READY", flush=True)
        time.sleep(120)
    except KeyboardInterrupt:  # a library that takes the signal and carries on
        pass
    time.sleep(120)
"""


def test_a_signal_a_library_swallowed_still_ends_the_work_with_one_line_not_as_a_second_signal():
    code, _, err = interrupted([sys.executable, "-c", SWALLOWED], signal.SIGTERM)
    assert code == 143 and err == "error: the work was interrupted (SIGTERM); kept: all; again: python work.py\n", err


def test_a_sigterm_a_fork_hook_drops_during_ray_init_is_raised_once_ray_init_returns(capsys):
    """ray.init installs its own SIGTERM handler; a signal landing in a fork hook is printed and dropped there."""
    ray_hooks = pytest.importorskip("ray._private.utils")
    from lit_forecast import ray_cluster

    class ForkHook:  # an exception raised in __del__ goes where one raised in a fork hook goes: unraisable
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs here, between bytecodes

    def script_handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    before = signal.signal(signal.SIGTERM, script_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ray_cluster._keep_sigterm_handler():
                ray_hooks.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # what ray.init does
                hook = ForkHook()
                del hook
                reached_the_end_of_ray_init = True
        assert reached_the_end_of_ray_init and signal.getsignal(signal.SIGTERM) is script_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "Exception ignored" not in capsys.readouterr().err


def test_ctrl_c_while_forecasting_says_so_and_how_to_run_again(infer_work):
    tmp_path, csv, checkpoint = infer_work
    output = tmp_path / "out" / "f.csv"
    argv = ["infer.py", "--checkpoint", checkpoint, "--data", str(csv), "--no-ray", "--output", str(output)]
    code, _, err = interrupted([sys.executable, *argv], signal.SIGINT, when=" checkpoint ", watch="stderr")
    assert code == 130, err
    message = err[err.index("error: ") :]
    assert "Traceback" not in err and message.count("\n") == 1, err
    assert message.startswith("error: forecasting was interrupted (Ctrl-C): ")
    assert message.rstrip().endswith("Run again with: python infer.py " + " ".join(argv[1:]))


# -- legal nonsense: one warning line ---------------------------------------------------------------------


@pytest.mark.parametrize("train_end, val_end, warned", [
    ("2024-01-01T12:00", "2024-01-09", "windows per series"),  # a few hours: about one window (16 + 4 slots)
    ("2024-01-03", "2024-01-10", "less than half the validation period"),  # 2 days against 7
    ("2024-01-07", "2024-01-09", None),  # 6 days against 2: fine
])  # fmt: skip
def test_a_training_period_of_a_few_windows_or_far_shorter_than_validation_is_warned_about_once(
    work, capsys, train_end, val_end, warned
):
    tmp_path, csv = work
    TRAIN(
        train_argv(
            tmp_path, csv, "--prepare-only", "--set", f"data.train_end={train_end}", "--set", f"data.val_end={val_end}"
        )
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "training period" in line]
    assert len(lines) == (1 if warned else 0), err
    if warned:
        assert warned in lines[0] and "data.train_end" in lines[0]
